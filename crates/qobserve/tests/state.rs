//! Descriptions and states: serde round trips, save/resume, and merging calibration shards.

mod common;

use common::Rng;
use ndarray::{Array, ArrayD, IxDyn};
use qobserve::{ObserverSpec, ObserverState, QDType, QParams, QScheme, UniformArgs, defaults};

fn data(seed: u64, shape: &[usize], scale: f64) -> ArrayD<f32> {
    let mut rng = Rng::new(seed);
    Array::from_shape_fn(IxDyn(shape), |_| (rng.normal() * scale) as f32)
}

fn all_specs() -> Vec<ObserverSpec> {
    vec![
        ObserverSpec::min_max(),
        ObserverSpec::moving_average_min_max(),
        ObserverSpec::per_channel_min_max(),
        ObserverSpec::moving_average_per_channel_min_max(),
        ObserverSpec::histogram(),
        ObserverSpec::placeholder(),
        ObserverSpec::fixed_qparams(0.05, 3),
        ObserverSpec::noop(),
        ObserverSpec::recording(),
        ObserverSpec::percentile(99.99),
        ObserverSpec::entropy(),
        ObserverSpec::mse(),
        defaults::default_observer(),
        defaults::default_weight_observer(),
        defaults::default_per_channel_weight_observer(),
        defaults::default_histogram_observer(),
        defaults::weight_observer_range_neg_127_to_127(),
        defaults::per_channel_weight_observer_range_neg_127_to_127(),
        defaults::default_dynamic_quant_observer(),
        defaults::default_float_qparams_observer(),
        defaults::default_float_qparams_observer_4bit(),
        defaults::default_fixed_qparams_range_neg1to1_observer(),
        defaults::default_fixed_qparams_range_0to1_observer(),
        defaults::default_placeholder_observer(),
        defaults::default_debug_observer(),
        defaults::x86_activation_observer(),
    ]
}

#[test]
fn specs_round_trip_through_json_and_build() {
    for spec in all_specs() {
        let json = serde_json::to_string(&spec).unwrap();
        let back: ObserverSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec, "{json}");
        let obs = back.build().unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(obs.spec(), spec);
        assert_eq!(obs.name(), spec.name());
    }
}

#[test]
fn named_defaults_have_pytorchs_arguments() {
    let ObserverSpec::MinMax { args } = defaults::weight_observer_range_neg_127_to_127() else { panic!() };
    assert_eq!(
        args,
        UniformArgs::per_tensor()
            .dtype(QDType::QInt8)
            .qscheme(QScheme::PerTensorSymmetric)
            .quant_range(-127, 127)
            .eps(2f32.powi(-12))
    );
    let ObserverSpec::Histogram { bins: 2048, upsample_rate: 16, args } =
        defaults::default_histogram_observer()
    else {
        panic!()
    };
    assert_eq!((args.quant_min, args.quant_max, args.dtype), (Some(0), Some(127), QDType::QUInt8));
    let ObserverSpec::PerChannelMinMax { ch_axis: 0, args } = defaults::default_per_channel_weight_observer()
    else {
        panic!()
    };
    assert_eq!(
        (args.dtype, args.qscheme, args.eps),
        (QDType::QInt8, QScheme::PerChannelSymmetric, f32::EPSILON)
    );
    let ObserverSpec::MovingAverageMinMax { averaging_constant, .. } = ObserverSpec::moving_average_min_max()
    else {
        panic!()
    };
    assert_eq!(averaging_constant, 0.01);
    // `with_args` on top of a description, as PyTorch's `.with_args(...)` chains.
    let spec = ObserverSpec::histogram().with_args(|a| a.reduce_range(true));
    assert_eq!(spec, defaults::x86_activation_observer());
}

#[test]
fn saving_and_resuming_gives_the_same_parameters() {
    let batches: Vec<ArrayD<f32>> = (0..4).map(|k| data(k, &[4, 8, 6], 1.0 + k as f64)).collect();
    for spec in all_specs() {
        let mut straight = spec.build().unwrap();
        let mut first = spec.build().unwrap();
        for b in &batches {
            straight.observe(b.view()).unwrap();
        }
        for b in &batches[..2] {
            first.observe(b.view()).unwrap();
        }
        let json = serde_json::to_string(&first.state()).unwrap();
        let state: ObserverState = serde_json::from_str(&json).unwrap();
        assert_eq!(state, first.state(), "{}: JSON changed the state", spec.name());
        let mut resumed = state.build().unwrap();
        for b in &batches[2..] {
            resumed.observe(b.view()).unwrap();
        }
        assert_eq!(resumed.state(), straight.state(), "{}", spec.name());
        assert_eq!(resumed.calculate_qparams(), straight.calculate_qparams(), "{}", spec.name());
        assert_eq!(resumed.stats(), straight.stats());
    }
}

#[test]
fn merging_min_max_shards_equals_observing_everything() {
    for spec in [
        ObserverSpec::min_max(),
        ObserverSpec::per_channel_min_max(),
        defaults::default_per_channel_weight_observer(),
    ] {
        let batches: Vec<ArrayD<f32>> =
            (0..6).map(|k| data(10 + k, &[3, 5, 4], 0.5 * (k + 1) as f64)).collect();
        let mut all = spec.build().unwrap();
        let mut a = spec.build().unwrap();
        let mut b = spec.build().unwrap();
        for (k, x) in batches.iter().enumerate() {
            all.observe(x.view()).unwrap();
            if k % 2 == 0 { a.observe(x.view()).unwrap() } else { b.observe(x.view()).unwrap() }
        }
        a.merge(&b.state()).unwrap();
        assert_eq!(a.calculate_qparams(), all.calculate_qparams(), "{}", spec.name());
        assert_eq!(a.stats(), all.stats());
    }
}

#[test]
fn merging_histogram_shards_is_close_to_observing_everything() {
    for spec in [
        ObserverSpec::histogram(),
        ObserverSpec::percentile(99.9),
        ObserverSpec::entropy(),
        ObserverSpec::mse(),
    ] {
        let batches: Vec<ArrayD<f32>> = (0..4).map(|k| data(20 + k, &[4096], 1.0 + 0.3 * k as f64)).collect();
        let mut all = spec.build().unwrap();
        let mut a = spec.build().unwrap();
        let mut b = spec.build().unwrap();
        for (k, x) in batches.iter().enumerate() {
            all.observe(x.view()).unwrap();
            if k < 2 { a.observe(x.view()).unwrap() } else { b.observe(x.view()).unwrap() }
        }
        a.merge(&b.state()).unwrap();
        assert_eq!(a.stats().counters, all.stats().counters);
        assert_eq!(a.stats().range, all.stats().range, "{}: same union range", spec.name());
        let (
            QParams::PerTensor { scale: s1, zero_point: z1 },
            QParams::PerTensor { scale: s2, zero_point: z2 },
        ) = (a.calculate_qparams().unwrap(), all.calculate_qparams().unwrap())
        else {
            panic!()
        };
        assert!((s1 - s2).abs() / s2 < 0.02, "{}: merged scale {s1} vs sequential {s2}", spec.name());
        assert!((z1 - z2).abs() <= 2, "{}: zero points {z1} vs {z2}", spec.name());
    }
}

#[test]
fn merging_a_shard_into_an_empty_observer_copies_it() {
    let x = data(1, &[64], 2.0);
    for spec in all_specs() {
        let mut full = spec.build().unwrap();
        full.observe(x.view()).unwrap();
        let mut empty = spec.build().unwrap();
        empty.merge(&full.state()).unwrap();
        assert_eq!(empty.state(), full.state(), "{}", spec.name());
    }
}

#[test]
fn recording_keeps_nan_and_infinities_through_json() {
    let mut rec = ObserverSpec::recording().build().unwrap();
    let x = ndarray::arr2(&[[f32::NAN, f32::INFINITY], [-0.0, 1.5]]).into_dyn();
    rec.observe(x.view()).unwrap();
    let json = serde_json::to_string(&rec.state()).unwrap();
    let back: ObserverState = serde_json::from_str(&json).unwrap();
    let restored = qobserve::RecordingObserver::from_spec(&back.spec).map(|mut r| {
        qobserve::Observer::load_state(&mut r, &back).unwrap();
        r
    });
    let r = restored.unwrap();
    let t = &r.tensor_values()[0];
    assert_eq!(t.shape(), &[2, 2]);
    assert!(t[[0, 0]].is_nan() && t[[0, 1]] == f32::INFINITY && t[[1, 0]].to_bits() == (-0.0f32).to_bits());
}

#[test]
fn reset_forgets_everything() {
    for spec in all_specs() {
        let mut obs = spec.build().unwrap();
        let fresh = obs.state();
        obs.observe(data(3, &[2, 3], 1.0).view()).unwrap();
        obs.reset();
        assert_eq!(obs.state(), fresh, "{}", spec.name());
    }
}

#[test]
fn per_channel_results_do_not_depend_on_memory_layout() {
    // NCHW along axis 1 (runs of 400 values) versus the same data channels-last along axis 3
    // (runs of 1 value) versus a non-contiguous view: identical statistics and parameters.
    let x = data(77, &[2, 6, 20, 20], 3.0);
    let nhwc = x.view().permuted_axes(IxDyn(&[0, 2, 3, 1])).as_standard_layout().into_owned();
    let strided = x.view().permuted_axes(IxDyn(&[1, 0, 2, 3]));
    for args in [
        UniformArgs::per_channel(),
        UniformArgs::per_channel().dtype(QDType::QInt8).qscheme(QScheme::PerChannelSymmetric),
    ] {
        let run = |axis: i64, view: ndarray::ArrayViewD<'_, f32>| {
            let mut obs = ObserverSpec::PerChannelMinMax { ch_axis: axis, args }.build().unwrap();
            obs.observe(view).unwrap();
            match obs.calculate_qparams().unwrap() {
                QParams::PerChannel { scales, zero_points, .. } => (scales, zero_points),
                other => panic!("{other:?}"),
            }
        };
        let a = run(1, x.view());
        assert_eq!(a, run(3, nhwc.view()));
        assert_eq!(a, run(-1, nhwc.view()));
        assert_eq!(a, run(0, strided.view()));
    }
}
