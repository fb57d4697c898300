//! Bad input: every error names the observer, the value and the fix, leaves the observer
//! unchanged, and nothing panics.

use ndarray::{ArrayD, IxDyn, arr1, arr2};
use qobserve::{ObserveError, ObserverSpec, QDType, QError, QParams, QScheme, UniformArgs, defaults};

fn every_computing_spec() -> Vec<ObserverSpec> {
    vec![
        ObserverSpec::min_max(),
        ObserverSpec::moving_average_min_max(),
        ObserverSpec::per_channel_min_max(),
        ObserverSpec::moving_average_per_channel_min_max(),
        ObserverSpec::histogram(),
        ObserverSpec::percentile(99.9),
        ObserverSpec::entropy(),
        ObserverSpec::mse(),
    ]
}

#[test]
fn qparams_before_observing_is_an_error_naming_the_observer() {
    for spec in every_computing_spec() {
        let obs = spec.build().unwrap();
        let err = obs.calculate_qparams().unwrap_err();
        assert!(
            matches!(err, ObserveError::NotObserved { observer, .. } if observer == spec.name()),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(spec.name()) && msg.contains("before any data was observed"), "{msg}");
    }
}

#[test]
fn empty_tensors_change_nothing() {
    for spec in every_computing_spec() {
        let mut obs = spec.build().unwrap();
        obs.observe(ArrayD::<f32>::zeros(IxDyn(&[0])).view()).unwrap();
        obs.observe(ArrayD::<f32>::zeros(IxDyn(&[3, 0, 2])).view()).unwrap();
        assert_eq!(obs.stats().counters.batches, 0, "{}", spec.name());
        assert!(obs.calculate_qparams().is_err(), "{}", spec.name());
    }
}

#[test]
fn nan_is_rejected_by_every_computing_observer_and_the_state_is_kept() {
    let good = arr2(&[[1.0f32, -2.0], [0.5, 3.0]]).into_dyn();
    let bad = arr2(&[[1.0f32, 7.0], [f32::NAN, 3.0]]).into_dyn();
    for spec in every_computing_spec() {
        let mut obs = spec.build().unwrap();
        obs.observe(good.view()).unwrap();
        let before = obs.state();
        let err = obs.observe(bad.view()).unwrap_err();
        match &err {
            ObserveError::NonFinite { observer, index, value, .. } => {
                assert_eq!(*observer, spec.name());
                assert_eq!(*index, 2, "flat index in logical order");
                assert!(value.is_nan());
            }
            other => panic!("{}: {other}", spec.name()),
        }
        assert!(err.to_string().contains("element 2"), "{err}");
        assert_eq!(obs.state(), before, "{}: state changed by a rejected batch", spec.name());
        let qp = obs.calculate_qparams().unwrap();
        assert!(valid(&qp), "{qp:?}");
    }
}

fn valid(qp: &QParams) -> bool {
    match qp {
        QParams::PerTensor { scale, .. } => scale.is_finite() && *scale > 0.0,
        QParams::PerChannel { scales, .. } => scales.iter().all(|s| s.is_finite() && *s > 0.0),
        QParams::PerChannelFloat { scales, zero_points, .. } => {
            scales.iter().all(|s| s.is_finite() && *s > 0.0) && zero_points.iter().all(|z| z.is_finite())
        }
    }
}

#[test]
fn infinities_are_errors_for_min_max_and_skipped_by_histograms() {
    let x = arr1(&[1.0f32, f32::INFINITY, -2.0, f32::NEG_INFINITY]).into_dyn();
    for spec in
        [ObserverSpec::min_max(), ObserverSpec::moving_average_min_max(), ObserverSpec::per_channel_min_max()]
    {
        let mut obs = spec.build().unwrap();
        let err = obs.observe(x.view()).unwrap_err();
        assert!(
            matches!(err, ObserveError::NonFinite { index: 1, value, .. } if value == f32::INFINITY),
            "{err}"
        );
        assert!(err.to_string().contains("HistogramObserver, which skips"), "{err}");
    }
    for spec in [
        ObserverSpec::histogram(),
        ObserverSpec::percentile(99.0),
        ObserverSpec::entropy(),
        ObserverSpec::mse(),
    ] {
        let mut obs = spec.build().unwrap();
        obs.observe(x.view()).unwrap();
        let stats = obs.stats();
        assert_eq!(stats.counters.skipped_infinite, 2, "{}", spec.name());
        assert_eq!(stats.counters.elements, 4);
        assert!(valid(&obs.calculate_qparams().unwrap()));
        // All-infinite input: skipped, and still "nothing observed".
        let mut fresh = spec.build().unwrap();
        fresh.observe(arr1(&[f32::INFINITY, f32::NEG_INFINITY]).into_dyn().view()).unwrap();
        let err = fresh.calculate_qparams().unwrap_err();
        assert!(err.to_string().contains("every value was ±Inf"), "{err}");
    }
}

#[test]
fn the_histogram_skips_infinities_like_pytorch() {
    // Same histogram as observing the finite values alone (PyTorch filters x[x.abs() != inf]).
    let with_inf = arr1(&[0.5f32, f32::INFINITY, -1.0, 2.0]).into_dyn();
    let finite = arr1(&[0.5f32, -1.0, 2.0]).into_dyn();
    let mut a = qobserve::HistogramObserver::new(2048, UniformArgs::per_tensor()).unwrap();
    let mut b = a.clone();
    qobserve::Observer::observe(&mut a, with_inf.view()).unwrap();
    qobserve::Observer::observe(&mut b, finite.view()).unwrap();
    assert_eq!(a.histogram(), b.histogram());
}

#[test]
fn ranges_too_wide_for_f32_are_errors_not_infinite_scales() {
    let x = arr1(&[-3e38f32, 3e38]).into_dyn();
    let mut mm = ObserverSpec::min_max().build().unwrap();
    mm.observe(x.view()).unwrap();
    let err = mm.calculate_qparams().unwrap_err();
    assert!(matches!(err, ObserveError::RangeUnusable { .. }), "{err}");
    assert!(err.to_string().contains("MinMaxObserver") && err.to_string().contains("3e38"), "{err}");
    let mut h = ObserverSpec::histogram().build().unwrap();
    let err = h.observe(x.view()).unwrap_err();
    assert!(matches!(err, ObserveError::RangeUnusable { .. }), "{err}");
    assert_eq!(h.stats().counters.batches, 0);
    // Growing into an overflowing range later is refused too, keeping the old histogram.
    h.observe(arr1(&[-3e38f32, 0.0]).into_dyn().view()).unwrap();
    assert!(h.observe(arr1(&[3e38f32]).into_dyn().view()).is_err());
    assert_eq!(h.stats().counters.batches, 1);
}

#[test]
fn ch_axis_out_of_range_and_channel_count_changes() {
    let mut obs = qobserve::PerChannelMinMaxObserver::new(3, UniformArgs::per_channel()).unwrap();
    let x = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4]));
    let err = qobserve::Observer::observe(&mut obs, x.view()).unwrap_err();
    assert!(matches!(err, ObserveError::AxisOutOfRange { ch_axis: 3, ndim: 3, .. }), "{err}");
    assert!(err.to_string().contains("use an axis in [-3, 3)"), "{err}");
    let scalar = ArrayD::<f32>::zeros(IxDyn(&[]));
    let mut obs0 = ObserverSpec::per_channel_min_max().build().unwrap();
    assert!(matches!(obs0.observe(scalar.view()).unwrap_err(), ObserveError::AxisOutOfRange { ndim: 0, .. }));

    let mut obs = qobserve::PerChannelMinMaxObserver::new(-1, UniformArgs::per_channel()).unwrap();
    qobserve::Observer::observe(&mut obs, x.view()).unwrap();
    let qp = qobserve::Observer::calculate_qparams(&obs).unwrap();
    assert!(matches!(qp, QParams::PerChannel { axis: 2, ref scales, .. } if scales.len() == 4), "{qp:?}");
    let err =
        qobserve::Observer::observe(&mut obs, ArrayD::<f32>::zeros(IxDyn(&[2, 3, 5])).view()).unwrap_err();
    assert!(matches!(err, ObserveError::ChannelCountMismatch { expected: 4, got: 5, axis: 2, .. }), "{err}");
}

#[test]
fn incompatible_options_are_refused_like_pytorch() {
    let bad = UniformArgs::per_tensor().qscheme(QScheme::PerTensorSymmetric).reduce_range(true);
    let bad_pc = UniformArgs::per_channel().qscheme(QScheme::PerChannelSymmetric).reduce_range(true);
    let specs = [
        ObserverSpec::MinMax { args: bad },
        ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args: bad },
        ObserverSpec::PerChannelMinMax { ch_axis: 0, args: bad_pc },
        ObserverSpec::Histogram { bins: 2048, upsample_rate: 16, args: bad },
        ObserverSpec::Mse { bins: 2048, args: bad },
    ];
    for spec in specs {
        let err = spec.build().unwrap_err();
        assert!(matches!(err, ObserveError::IncompatibleOptions { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(spec.name()) && msg.contains("reduce_range=true") && msg.contains("quint8"),
            "{msg}"
        );
    }
    // Per-tensor observers refuse per-channel schemes and the reverse.
    let err = ObserverSpec::MinMax { args: UniformArgs::per_channel() }.build().unwrap_err();
    assert!(err.to_string().contains("qscheme=torch.per_channel_affine"), "{err}");
    let err =
        ObserverSpec::PerChannelMinMax { ch_axis: 0, args: UniformArgs::per_tensor() }.build().unwrap_err();
    assert!(matches!(err, ObserveError::IncompatibleOptions { .. }), "{err}");
    // Dynamic moving averages need averaging_constant 1; per-channel and histogram cannot be dynamic.
    let dynamic = UniformArgs::per_tensor().dynamic(true);
    assert!(ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args: dynamic }.build().is_err());
    assert!(ObserverSpec::MovingAverageMinMax { averaging_constant: 1.0, args: dynamic }.build().is_ok());
    assert!(ObserverSpec::Histogram { bins: 2048, upsample_rate: 16, args: dynamic }.build().is_err());
    let dynamic_pc = UniformArgs::per_channel().dynamic(true);
    assert!(ObserverSpec::PerChannelMinMax { ch_axis: 0, args: dynamic_pc }.build().is_err());
}

#[test]
fn invalid_arguments_name_the_argument_and_value() {
    let cases: Vec<(ObserverSpec, &str)> = vec![
        (ObserverSpec::MinMax { args: UniformArgs::per_tensor().eps(0.0) }, "eps"),
        (ObserverSpec::MinMax { args: UniformArgs::per_tensor().eps(f32::NAN) }, "eps"),
        (
            ObserverSpec::MovingAverageMinMax { averaging_constant: 0.0, args: UniformArgs::per_tensor() },
            "averaging_constant",
        ),
        (
            ObserverSpec::MovingAverageMinMax { averaging_constant: 1.5, args: UniformArgs::per_tensor() },
            "averaging_constant",
        ),
        (ObserverSpec::Histogram { bins: 0, upsample_rate: 16, args: UniformArgs::per_tensor() }, "bins"),
        (
            ObserverSpec::Histogram { bins: 2048, upsample_rate: 0, args: UniformArgs::per_tensor() },
            "upsample_rate",
        ),
        (ObserverSpec::percentile(0.0), "percentile"),
        (ObserverSpec::percentile(100.5), "percentile"),
        (
            ObserverSpec::FixedQParams {
                scale: 0.1,
                zero_point: 300,
                dtype: QDType::QUInt8,
                qscheme: QScheme::PerTensorAffine,
                quant_min: 0,
                quant_max: 255,
            },
            "zero_point",
        ),
    ];
    for (spec, name) in cases {
        let err = spec.build().unwrap_err();
        assert!(matches!(err, ObserveError::InvalidArgument { name: n, .. } if n == name), "{name}: {err}");
        assert!(err.to_string().contains(spec.name()), "{err}");
    }
    // Ranges go through qcore's rules (#[from] QError).
    let err =
        ObserverSpec::MinMax { args: UniformArgs::per_tensor().quant_range(1, 10) }.build().unwrap_err();
    assert!(matches!(err, ObserveError::Core(QError::InvalidQuantRange { .. })), "{err}");
    assert!(err.to_string().contains("must include 0"), "{err}");
    let err = ObserverSpec::fixed_qparams(-1.0, 0).build().unwrap_err();
    assert!(matches!(err, ObserveError::Core(QError::InvalidScale { .. })), "{err}");
}

#[test]
fn non_computing_observers_accept_anything_and_refuse_qparams() {
    let x = arr1(&[f32::NAN, f32::INFINITY, 1.0]).into_dyn();
    for spec in [
        ObserverSpec::placeholder(),
        ObserverSpec::noop(),
        ObserverSpec::recording(),
        defaults::default_dynamic_quant_observer(),
    ] {
        let mut obs = spec.build().unwrap();
        obs.observe(x.view()).unwrap();
        let err = obs.calculate_qparams().unwrap_err();
        assert!(matches!(err, ObserveError::NoQParams { .. }), "{err}");
        assert!(err.to_string().contains(spec.name()), "{err}");
    }
    let mut fixed = defaults::default_fixed_qparams_range_neg1to1_observer().build().unwrap();
    fixed.observe(x.view()).unwrap();
    assert_eq!(
        fixed.calculate_qparams().unwrap(),
        QParams::PerTensor { scale: 2.0 / 256.0, zero_point: 128 }
    );
    let fixed = defaults::default_fixed_qparams_range_0to1_observer().build().unwrap();
    assert_eq!(fixed.calculate_qparams().unwrap(), QParams::PerTensor { scale: 1.0 / 256.0, zero_point: 0 });
}

#[test]
fn merging_incompatible_states_is_an_error() {
    let mut a = ObserverSpec::min_max().build().unwrap();
    let b = defaults::default_observer().build().unwrap();
    let err = a.merge(&b.state()).unwrap_err();
    assert!(matches!(err, ObserveError::MergeUnsupported { .. }), "{err}");
    // Moving averages cannot be merged once both sides have data.
    let x = arr1(&[1.0f32, 2.0]).into_dyn();
    let mut m1 = ObserverSpec::moving_average_min_max().build().unwrap();
    let mut m2 = ObserverSpec::moving_average_min_max().build().unwrap();
    m2.observe(x.view()).unwrap();
    m1.merge(&m2.state()).unwrap(); // into an empty one: a load
    let err = m1.merge(&m2.state()).unwrap_err();
    assert!(err.to_string().contains("depends on the order of the batches"), "{err}");
    // A state with the wrong statistics for the observer.
    let mut h = ObserverSpec::histogram().build().unwrap();
    let mut forged = h.state();
    forged.statistics = qobserve::Statistics::MinMax(Some((0.0, 1.0)));
    assert!(matches!(h.load_state(&forged).unwrap_err(), ObserveError::InvalidState { .. }));
    // A corrupted histogram.
    let mut hh = ObserverSpec::histogram().build().unwrap();
    hh.observe(x.view()).unwrap();
    let mut broken = hh.state();
    if let qobserve::Statistics::Histogram(Some(d)) = &mut broken.statistics {
        d.counts.pop();
    }
    let err = h.load_state(&broken).unwrap_err();
    assert!(err.to_string().contains("2048"), "{err}");
}

#[test]
fn from_spec_refuses_the_description_of_another_observer() {
    let errors = [
        qobserve::MinMaxObserver::from_spec(&ObserverSpec::moving_average_min_max()).unwrap_err(),
        qobserve::PerChannelMinMaxObserver::from_spec(&ObserverSpec::min_max()).unwrap_err(),
        qobserve::HistogramObserver::from_spec(&ObserverSpec::mse()).unwrap_err(),
        qobserve::EntropyCalibrator::from_spec(&ObserverSpec::histogram()).unwrap_err(),
        qobserve::PlaceholderObserver::from_spec(&ObserverSpec::noop()).unwrap_err(),
    ];
    let given = ["MovingAverageMinMax {", "MinMax {", "Mse {", "Histogram {", "Noop {"];
    for (err, given) in errors.iter().zip(given) {
        let ObserveError::InvalidArgument { name: "spec", value, .. } = err else { panic!("{err:?}") };
        assert!(value.starts_with(given), "{value}");
        assert!(err.to_string().contains("ObserverSpec::build"), "{err}");
    }
}
