//! Float sigmoid and tanh (`float_math/...`) on 1024 and 65536 floats, one thread, on the tier
//! `Isa::detect()` picks (`QKERNELS_ISA` caps it), against the C-library loops they replaced
//! (`1 / (1 + expf(-x))` and `tanhf`, element by element).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkernels::{Isa, float};
use qtest::random_f32s;

const SIZES: [usize; 2] = [1024, 65536];

fn bench(c: &mut Criterion) {
    let isa = Isa::detect();
    // One thread: the global pool is built with one (a benchmark binary runs nothing else).
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().expect("one-thread global pool");
    let mut group = c.benchmark_group("float_math");
    bench_sizes(&mut group, isa);
    group.finish();
}

fn bench_sizes(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, isa: Isa) {
    for n in SIZES {
        // Gate-like values: mostly in [-8, 8].
        let x: Vec<f32> = random_f32s(n, 7).into_iter().map(|v| v * 8.0).collect();
        let mut out = vec![0.0f32; n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new(format!("sigmoid/{}", isa.name()), n), |b| {
            b.iter(|| float::sigmoid(black_box(&x), &mut out, isa).expect("sigmoid"))
        });
        group.bench_function(BenchmarkId::new("sigmoid/libm_loop", n), |b| {
            b.iter(|| {
                for (o, &v) in out.iter_mut().zip(black_box(&x)) {
                    *o = 1.0 / (1.0 + (-v).exp());
                }
            })
        });
        group.bench_function(BenchmarkId::new(format!("tanh/{}", isa.name()), n), |b| {
            b.iter(|| float::tanh(black_box(&x), &mut out, isa).expect("tanh"))
        });
        group.bench_function(BenchmarkId::new("tanh/libm_loop", n), |b| {
            b.iter(|| {
                for (o, &v) in out.iter_mut().zip(black_box(&x)) {
                    *o = v.tanh();
                }
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
