//! Per-layer calibrator choice (`qgraph::calibrator_choice`): on a model whose calibration data
//! holds one outlier, MinMax ranges stretch to it and lose the ordinary values, the choice
//! takes calibrators that clip or forget it at those points and the chosen model's output is far closer to
//! float than the MinMax model's; the measured SQNR is checked against an independent
//! computation, and bad arguments are errors.
//!
//! ```text
//! cargo test -p qgraph --test calibrator_choice
//! ```

use ndarray::{ArrayD, IxDyn};
use qgraph::calibrator_choice::{Calibrator, Kept, choose_calibrators};
use qgraph::fallback;
use qgraph::mappings::Mappings;
use qgraph::models::{deterministic_state_dict, random_f32s};
use qgraph::nn::{Linear, ReLU};
use qgraph::qconfig::get_default_qconfig;
use qgraph::qobserve::QParams;
use qgraph::workflow::Observed;
use qgraph::{
    DeQuantStub, GraphError, Module, QConfigMapping, QuantStub, Sequential, Value, calibrate, convert,
    load_state_dict, prepare,
};

/// `QuantStub, Linear(64, 32), ReLU, Linear(32, 10), DeQuantStub` with seeded weights.
fn model() -> Box<dyn Module> {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Linear::new(64, 32, true)),
        Box::new(ReLU::new()),
        Box::new(Linear::new(32, 10, true)),
        Box::new(DeQuantStub::new()),
    ]));
    let weights = deterministic_state_dict(model.as_ref()).unwrap();
    load_state_dict(&mut model, weights).unwrap();
    model
}

/// `count` seeded batches `[64, 64]` in `[-1, 1)`.
fn batches(count: usize, seed: u64) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let x = random_f32s(64 * 64, seed + i as u64);
            Value::from(ArrayD::from_shape_vec(IxDyn(&[64, 64]), x).unwrap())
        })
        .collect()
}

/// Calibration batches with one outlier (1000 in one element of the fourth of eight batches),
/// and clean test batches.
fn data() -> (Vec<Value>, Vec<Value>) {
    let mut calibration = batches(8, 100);
    let Value::Float(x) = &mut calibration[3] else { unreachable!() };
    x[[5, 7]] = 1000.0;
    (calibration, batches(4, 900))
}

/// The model quantized with `mapping` on `calibration`.
fn quantize(model: &dyn Module, mapping: &QConfigMapping, calibration: &[Value]) -> Box<dyn Module> {
    let mut m = model.clone_module();
    prepare(&mut m, mapping).unwrap();
    calibrate(m.as_ref(), calibration.iter().cloned(), |_, _| {}).unwrap();
    convert(&mut m).unwrap();
    m
}

#[test]
fn an_outlier_in_calibration_makes_clipping_calibrators_win() {
    let float = model();
    let (calibration, test) = data();
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    let choice = choose_calibrators(
        float.as_ref(),
        &mapping,
        &Mappings::default(),
        &Calibrator::ALL,
        &calibration,
        &test,
    )
    .unwrap();
    let paths: Vec<&str> = choice.points.iter().map(|p| p.path.as_str()).collect();
    // The stub and the two Linear layers (the ReLU runs on its input's parameters, as in
    // PyTorch's eager mode: `nn.ReLU` has no observer of its own).
    assert_eq!(paths, ["0", "1", "3"], "{choice}");
    let text = choice.to_string();
    assert!(text.contains("*") && text.contains("Percentile(99.99)"), "{text}");

    // At the QuantStub the outlier stretches MinMax's range about 500 times: the ordinary
    // values round to a handful of codes. The percentile calibrator clips it.
    let stub = &choice.points[0];
    let db = |name: Calibrator| stub.sqnr[Calibrator::ALL.iter().position(|c| *c == name).unwrap()].unwrap();
    assert!(db(Calibrator::MinMax) < 10.0, "{choice}");
    assert!(db(Calibrator::Percentile(99.99)) > db(Calibrator::MinMax) + 20.0, "{choice}");
    for point in &choice.points {
        assert_ne!(Calibrator::ALL[point.chosen], Calibrator::MinMax, "{choice}");
        let best = point.sqnr.iter().map(|s| s.unwrap()).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(point.sqnr[point.chosen], Some(best), "{choice}");
    }

    // The measure, recomputed here for MinMax at the QuantStub: its parameters from the
    // calibration inputs, then the test inputs fake-quantized at quint8's full range.
    let args = Calibrator::replaceable(&get_default_qconfig("x86").unwrap().activation).unwrap();
    let mut observer = Calibrator::MinMax.spec(args).build().unwrap();
    for x in &calibration {
        observer.observe(x.to_float().unwrap().view()).unwrap();
    }
    let QParams::PerTensor { scale, zero_point } = observer.calculate_qparams().unwrap() else { panic!() };
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for x in &test {
        for &v in x.to_float().unwrap().iter() {
            let q = qcore::fake_quant::fake_quantize_per_tensor(v, scale as f32, zero_point, 0, 255).value;
            signal += f64::from(v).powi(2);
            noise += (f64::from(v) - f64::from(q)).powi(2);
        }
    }
    assert!((10.0 * (signal / noise).log10() - db(Calibrator::MinMax)).abs() < 1e-9, "{choice}");

    // The returned mapping prepares each point with the kept observer.
    let mut prepared = float.clone_module();
    prepare(&mut prepared, &choice.mapping).unwrap();
    for (i, point) in choice.points.iter().enumerate() {
        let observed = prepared.get(&point.path).unwrap().downcast_ref::<Observed>().unwrap();
        assert_eq!(observed.qconfig().activation, choice.kept_at(i).spec(args), "{}", point.path);
    }

    // The model outputs the choice measured, recomputed: MinMax everywhere, the per-point mix,
    // and what was kept, the best of all.
    let mut metric = fallback::output_sqnr(float.as_ref(), &test).unwrap();
    let mut uniform = |calibrator: Calibrator| {
        let mut qconfig = get_default_qconfig("x86").unwrap();
        qconfig.activation = calibrator.spec(args);
        metric(quantize(float.as_ref(), &QConfigMapping::global(qconfig), &calibration).as_ref()).unwrap()
    };
    let before = uniform(Calibrator::MinMax);
    assert!((before - choice.uniform_sqnr[0]).abs() < 1e-9, "{before}\n{choice}");
    let mut metric = fallback::output_sqnr(float.as_ref(), &test).unwrap();
    let after = metric(quantize(float.as_ref(), &choice.mapping, &calibration).as_ref()).unwrap();
    let best = choice.uniform_sqnr.iter().copied().fold(choice.per_point_sqnr, f64::max);
    assert!((after - best).abs() < 1e-9, "kept {after:.2} dB\n{choice}");
    assert!(after > before + 20.0, "MinMax {before:.2} dB, kept {after:.2} dB\n{choice}");
    // Here no single calibrator suits every point: the mix beats each of them.
    assert_eq!(choice.kept, Kept::PerPoint, "{choice}");
}

#[test]
fn without_an_outlier_the_choice_is_close_to_minmax_and_the_counts_add_up() {
    let float = model();
    let clean = batches(4, 100);
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    let candidates = [Calibrator::MinMax, Calibrator::Histogram];
    let choice =
        choose_calibrators(float.as_ref(), &mapping, &Mappings::default(), &candidates, &clean, &clean)
            .unwrap();
    assert_eq!(choice.counts().iter().sum::<usize>(), choice.points.len());
    for point in &choice.points {
        let [a, b] = [point.sqnr[0].unwrap(), point.sqnr[1].unwrap()];
        // Both are reasonable ranges for uniform data: within a few dB of each other.
        assert!(a > 25.0 && b > 25.0 && (a - b).abs() < 6.0, "{choice}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let float = model();
    let data = batches(1, 1);
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    let m = Mappings::default();
    let err = choose_calibrators(float.as_ref(), &mapping, &m, &[], &data, &data).unwrap_err();
    assert!(err.to_string().contains("candidates"), "{err}");
    let err = choose_calibrators(float.as_ref(), &mapping, &m, &Calibrator::ALL, &[], &data).unwrap_err();
    assert!(err.to_string().contains("calibration"), "{err}");
    let err = choose_calibrators(float.as_ref(), &mapping, &m, &Calibrator::ALL, &data, &[]).unwrap_err();
    assert!(matches!(err, GraphError::InvalidArgument { what: "inputs", .. }), "{err}");
}

#[test]
fn only_per_tensor_range_observers_are_replaced() {
    use qgraph::qobserve::{ObserverSpec, defaults};
    let x86 = get_default_qconfig("x86").unwrap().activation;
    let args = Calibrator::replaceable(&x86).expect("the histogram observer");
    assert!(args.reduce_range, "the qconfig's arguments are kept");
    for calibrator in Calibrator::ALL {
        assert_eq!(Calibrator::replaceable(&calibrator.spec(args)), Some(args), "{}", calibrator.name());
    }
    for fixed in [
        defaults::default_per_channel_weight_observer(),
        defaults::default_fixed_qparams_range_0to1_observer(),
        defaults::default_dynamic_quant_observer(),
        ObserverSpec::placeholder(),
    ] {
        assert_eq!(Calibrator::replaceable(&fixed), None, "{fixed:?}");
    }
}
