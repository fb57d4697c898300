//! Observation throughput on a 1x64x112x112 activation (ResNet's first block output): bytes of
//! input read per second, for the min/max observers and the histogram observer's update.
//!
//! Ids follow tools/bench/README.md: `observe/<case>/t1` (observation is single-threaded).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array, ArrayD, IxDyn};
use qobserve::{Observer, ObserverSpec};

const SHAPE: [usize; 4] = [1, 64, 112, 112];

/// Deterministic, roughly normal activations (sum of uniforms from a SplitMix64 stream).
fn activation() -> ArrayD<f32> {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    Array::from_shape_fn(IxDyn(&SHAPE), |_| (next() + next() + next() + next() - 2.0) * 1.7)
}

fn bench(c: &mut Criterion) {
    let x = activation();
    let bytes = (x.len() * std::mem::size_of::<f32>()) as u64;
    let mut group = c.benchmark_group("observe");
    group.throughput(Throughput::Bytes(bytes));
    let cases: [(&str, ObserverSpec); 5] = [
        ("minmax_1x64x112x112", ObserverSpec::min_max()),
        ("moving_average_minmax_1x64x112x112", ObserverSpec::moving_average_min_max()),
        (
            "per_channel_minmax_axis1_1x64x112x112",
            ObserverSpec::PerChannelMinMax { ch_axis: 1, args: qobserve::UniformArgs::per_channel() },
        ),
        ("histogram_1x64x112x112", ObserverSpec::histogram()),
        ("entropy_1x64x112x112", ObserverSpec::entropy()),
    ];
    for (name, spec) in cases {
        let mut obs: Box<dyn Observer> = spec.build().expect("valid spec");
        // The first batch sets the range; later batches of the same data take the steady-state
        // path (histogram: histc on the unchanged range, then add).
        obs.observe(x.view()).expect("finite data");
        group
            .bench_function(format!("{name}/t1"), |b| b.iter(|| obs.observe(x.view()).expect("finite data")));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
