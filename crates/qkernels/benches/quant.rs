//! Benchmarks of the layout-converting quantize and dequantize (`quant/...`: NCHW f32 to
//! channels-last quint8 and back) and of quantized batch norm (`norm/...`, channels-last), at 1
//! and 2 threads, on the tier `Isa::active()` picks (`QKERNELS_ISA` caps it).
//!
//! All are memory-bound and report `Throughput::Bytes(read + written)`: 5 bytes per element for
//! quantize / dequantize, 2 for batch norm.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkernels::Isa;
use qkernels::elementwise::PerTensor;
use qkernels::norm::{self, BatchNormParams};
use qkernels::quant;
use qtest::{random_bytes, random_f32s};

const THREADS: [usize; 2] = [1, 2];
const SHAPES: [(&str, [usize; 4]); 2] = [("1x3x224x224", [1, 3, 224, 224]), ("1x64x56x56", [1, 64, 56, 56])];

fn bench_quant(c: &mut Criterion) {
    let isa = Isa::active();
    let q = PerTensor::new(0.0187, 114);
    let mut group = c.benchmark_group("quant");
    for (name, shape) in SHAPES {
        let n: usize = shape.iter().product();
        let x: Vec<f32> = random_f32s(n, 1).into_iter().map(|v| v * 2.0).collect();
        let qx = random_bytes(n, 2);
        let mut out_q = vec![0u8; n];
        let mut out_f = vec![0f32; n];
        group.throughput(Throughput::Bytes(5 * n as u64));
        for threads in THREADS {
            let pool = qtest::thread_pool(threads);
            let t = format!("t{threads}");
            group.bench_function(BenchmarkId::new(format!("quantize_{name}"), &t), |b| {
                pool.install(|| {
                    b.iter(|| {
                        quant::quantize_to_channels_last(black_box(&x), &shape, q, &mut out_q, isa)
                            .expect("quantize")
                    })
                })
            });
            group.bench_function(BenchmarkId::new(format!("dequantize_{name}"), &t), |b| {
                pool.install(|| {
                    b.iter(|| {
                        quant::dequantize_from_channels_last(black_box(&qx), &shape, q, &mut out_f, isa)
                            .expect("dequantize")
                    })
                })
            });
        }
    }
    group.finish();
}

fn bench_norm(c: &mut Criterion) {
    let isa = Isa::active();
    let mut group = c.benchmark_group("norm");
    for (name, shape) in [("1x64x56x56", [1usize, 64, 56, 56]), ("1x100x28x28", [1, 100, 28, 28])] {
        let ch = shape[1];
        let n: usize = shape.iter().product();
        let f = |seed| random_f32s(ch, seed);
        let (w, b, m) = (f(3), f(4), f(5));
        let v: Vec<f32> = f(6).into_iter().map(|x| x.abs() + 0.1).collect();
        let params = BatchNormParams { weight: &w, bias: &b, mean: &m, var: &v, eps: 1e-5 };
        let x = random_bytes(n, 7);
        let mut out = vec![0u8; n];
        let (iq, oq) = (PerTensor::new(0.03, 120), PerTensor::new(0.05, 100));
        group.throughput(Throughput::Bytes(2 * n as u64));
        for threads in THREADS {
            let pool = qtest::thread_pool(threads);
            group.bench_function(
                BenchmarkId::new(format!("batch_norm2d_{name}"), format!("t{threads}")),
                |bch| {
                    pool.install(|| {
                        bch.iter(|| {
                            norm::batch_norm2d(black_box(&x), &shape, iq, &params, &mut out, oq, isa)
                                .expect("bn")
                        })
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_quant, bench_norm);
criterion_main!(benches);
