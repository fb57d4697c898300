//! Dynamic linear (`qkernels::dynamic`) at 1 and 2 threads: `dynamic/<dtype>_M<m>_K<k>_N<n>/t<threads>`, for
//! qint8 weights (`linear_dynamic`: per-call min / max, quantize, int8 GEMM, f32 output; per-tensor
//! weights, `reduce_range = true` as the nnqd modules run it) and fp16 weights (`linear_fp16`),
//! with a bias. Throughput is ops = 2 x MACs. The same shapes are timed in PyTorch by
//! `tools/bench/torch_dynamic_linear.py`.
//!
//! `QKERNELS_ISA` caps the tier.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkernels::dynamic::{DynamicScratch, PackedF16Weights, linear_dynamic, linear_fp16};
use qkernels::gemm::{PackedWeights, WeightQParams};
use qtest::{random_bytes, random_f32s};

const MS: [usize; 3] = [1, 16, 128];
const KNS: [usize; 2] = [256, 1024];

fn bench_dynamic(c: &mut Criterion) {
    let mut group = c.benchmark_group("dynamic");
    group.sample_size(20);
    for threads in [1, 2] {
        let pool = qtest::thread_pool(threads);
        bench_threads(&mut group, &pool, threads);
    }
    group.finish();
}

/// Every shape and weight dtype in `pool` (`threads` threads).
fn bench_threads(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pool: &rayon::ThreadPool,
    threads: usize,
) {
    let id = format!("t{threads}");
    for kn in KNS {
        let (k, n) = (kn, kn);
        let w8: Vec<i8> = random_bytes(n * k, 2).into_iter().map(|x| x as i8).collect();
        let wf = random_f32s(n * k, 3);
        let bias = random_f32s(n, 4);
        let packed8 = PackedWeights::new(&w8, n, k, &WeightQParams::per_tensor(0.002), Some(&bias)).unwrap();
        let packed16 = PackedF16Weights::new(&wf, n, k, Some(&bias)).unwrap();
        for m in MS {
            let x = random_f32s(m * k, 1);
            let mut out = vec![0f32; m * n];
            let mut scratch = DynamicScratch::default();
            group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            group.bench_function(BenchmarkId::new(format!("qint8_M{m}_K{k}_N{n}"), &id), |b| {
                pool.install(|| {
                    b.iter(|| {
                        linear_dynamic(black_box(&x), m, &packed8, true, false, &mut out, &mut scratch)
                            .unwrap()
                    })
                })
            });
            group.bench_function(BenchmarkId::new(format!("fp16_M{m}_K{k}_N{n}"), &id), |b| {
                pool.install(|| b.iter(|| linear_fp16(black_box(&x), m, &packed16, false, &mut out).unwrap()))
            });
        }
    }
}

criterion_group!(benches, bench_dynamic);
criterion_main!(benches);
