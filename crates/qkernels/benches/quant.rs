//! Benchmarks of the layout-converting quantize and dequantize (`quant/...`): NCHW f32 to
//! channels-last quint8 and back, at 1 and 2 threads, on the tier `Isa::active()` picks
//! (`QKERNELS_ISA` caps it). Throughput is `Bytes(read + written)`: 5 bytes per element.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkernels::Isa;
use qkernels::elementwise::PerTensor;
use qkernels::quant;
use qtest::{random_bytes, random_f32s};

const THREADS: [usize; 2] = [1, 2];
const SHAPES: [(&str, [usize; 4]); 2] = [("1x3x224x224", [1, 3, 224, 224]), ("1x64x56x56", [1, 64, 56, 56])];

fn bench(c: &mut Criterion) {
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
            group.bench_function(
                BenchmarkId::new(format!("quantize_to_channels_last/{name}"), format!("t{threads}")),
                |b| {
                    pool.install(|| {
                        b.iter(|| {
                            quant::quantize_to_channels_last(black_box(&x), &shape, q, &mut out_q, isa)
                                .expect("quantize")
                        })
                    })
                },
            );
            group.bench_function(
                BenchmarkId::new(format!("dequantize_from_channels_last/{name}"), format!("t{threads}")),
                |b| {
                    pool.install(|| {
                        b.iter(|| {
                            quant::dequantize_from_channels_last(black_box(&qx), &shape, q, &mut out_f, isa)
                                .expect("dequantize")
                        })
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
