//! The QAT modules (conv, conv-bn, linear, `LinearBn1d`) against PyTorch 2.15
//! (`tools/golden/gen_qat_modules.py`): each case builds the
//! float layers, fuses them for QAT, prepares them with its qconfig, and runs three training steps
//! (batch norm frozen before the third), an eval forward and `convert`, as PyTorch's did.
//!
//! Compared with PyTorch autograd: outputs, input and parameter gradients, running statistics and
//! the fake quantizers' scales within 1e-6 of the largest magnitude (convolutions sum in another
//! order than oneDNN's); zero points, and the converted module's integer weights, output
//! parameters and outputs exactly, except where a float difference of that size moves a value
//! across a rounding boundary (counted, and bounded below).

use ndarray::{ArrayD, IxDyn};
use qfake::train::Backprop;
use qfake::{FakeQuantModule, QatConv, QatLinear, QatLinearBn, QatQConfig};
use qgraph::nn::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv1d, Conv2d, Conv3d, Linear, ReLU};
use qgraph::quantized::{QuantizedConv, QuantizedLinear};
use qgraph::workflow::Observed;
use qgraph::{Module, PerTensor, QuantTensor, Sequential, Value, train};
use qobserve::{ObservedRange, ObserverSpec, UniformArgs};
use qtest::Fixture;
use serde_json::Value as Json;

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "qat_modules")
}

/// `max |got - expected| <= tol * max |expected|` (and equal shapes).
fn assert_close(case: &str, what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>, tol: f32) {
    assert_close_at(case, what, got, expected, tol, f32::MIN_POSITIVE);
}

/// [`assert_close`] relative to at least `scale` (for a quantity that is zero but for rounding,
/// such as a conv bias's gradient in front of a training-mode batch norm, which removes the
/// mean: it is compared at the scale of the batch norm bias's gradient).
fn assert_close_at(case: &str, what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>, tol: f32, scale: f32) {
    assert_eq!(got.shape(), expected.shape(), "{case}: {what} shape");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(scale);
    let diff = got.iter().zip(expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= tol * scale,
        "{case}: {what} differs by {diff:e} (max |expected| {scale:e}, tolerance {tol:e})"
    );
}

fn qconfig(case: &str) -> QatQConfig {
    if case.ends_with("_4bit") {
        let args = UniformArgs::per_channel()
            .dtype(qcore::QDType::QInt8)
            .qscheme(qcore::QScheme::PerChannelSymmetric)
            .quant_range(-8, 7);
        qfake::get_default_qat_qconfig("x86").unwrap().with_weight(
            ObserverSpec::MovingAveragePerChannelMinMax { averaging_constant: 0.01, ch_axis: 0, args },
        )
    } else if case.ends_with("default_qat_qconfig") {
        qfake::default_qat_qconfig()
    } else {
        qfake::get_default_qat_qconfig("x86").unwrap()
    }
}

fn usize_of(v: &Json, key: &str, default: usize) -> usize {
    v.get(key).and_then(Json::as_u64).map_or(default, |n| n as usize)
}

/// The float `Sequential` of a case, with its parameters.
fn float_model(f: &Fixture, c: &Json) -> Box<dyn Module> {
    let case = qtest::name(c);
    let kw = &c["kwargs"];
    let dims = c["dims"].as_u64().unwrap() as usize;
    let bias = kw["bias"].as_bool().unwrap();
    let weight = f.tensor::<f32>(case, "weight");
    let bias_tensor = bias.then(|| f.tensor::<f32>(case, "bias"));
    let mut parts: Vec<Box<dyn Module>> = Vec::new();
    let batch_norm = |dims: usize, features: usize| -> BatchNorm {
        let mut bn: BatchNorm = match dims {
            1 => BatchNorm1d::new(features),
            2 => BatchNorm2d::new(features),
            _ => BatchNorm3d::new(features),
        };
        let t = |name| f.tensor::<f32>(case, name);
        bn.set_params(t("bn.running_mean"), t("bn.running_var"), Some((t("bn.weight"), t("bn.bias"))))
            .unwrap();
        bn
    };
    if c["kind"] == "linear" {
        let out_features = usize_of(kw, "out_features", 0);
        let mut linear = Linear::new(usize_of(kw, "in_features", 0), out_features, bias);
        linear.set_weight_bias(weight, bias_tensor).unwrap();
        parts.push(Box::new(linear));
        if !c["bn"].is_null() {
            parts.push(Box::new(batch_norm(dims, out_features)));
        }
    } else {
        let (cin, cout, k) =
            (usize_of(kw, "in_channels", 0), usize_of(kw, "out_channels", 0), usize_of(kw, "kernel_size", 1));
        let (s, p, g) = (usize_of(kw, "stride", 1), usize_of(kw, "padding", 0), usize_of(kw, "groups", 1));
        let mut conv = match dims {
            1 => Conv1d::new(cin, cout, [k]).stride([s]).padding([p]).groups(g).bias(bias).build(),
            2 => Conv2d::new(cin, cout, [k, k]).stride([s, s]).padding([p, p]).groups(g).bias(bias).build(),
            _ => Conv3d::new(cin, cout, [k, k, k])
                .stride([s, s, s])
                .padding([p, p, p])
                .groups(g)
                .bias(bias)
                .build(),
        }
        .unwrap();
        conv.set_weight_bias(weight, bias_tensor).unwrap();
        parts.push(Box::new(conv));
        if !c["bn"].is_null() {
            parts.push(Box::new(batch_norm(dims, cout)));
        }
    }
    if c["relu"].as_bool().unwrap() {
        parts.push(Box::new(ReLU::new()));
    }
    let mut model: Box<dyn Module> = Box::new(Sequential::new(parts));
    train(&mut model, true);
    model
}

/// A running range: per-tensor or per-channel minimums and maximums.
type Range = (Vec<f32>, Vec<f32>);

/// Scale, zero point and running range of a fake quantizer.
fn fake_quant_state(fq: &FakeQuantModule) -> (ArrayD<f32>, ArrayD<i32>, Option<Range>) {
    let state = fq.lock().state();
    let n = state.scale.len();
    let range = state.observer.build().unwrap().stats().range.map(|r| match r {
        ObservedRange::PerTensor { min, max } => (vec![min], vec![max]),
        ObservedRange::PerChannel { min, max, .. } => (min, max),
    });
    (
        ArrayD::from_shape_vec(IxDyn(&[n]), state.scale).unwrap(),
        ArrayD::from_shape_vec(IxDyn(&[n]), state.zero_point.iter().map(|&z| z as i32).collect()).unwrap(),
        range,
    )
}

fn check_fake_quant(f: &Fixture, case: &str, prefix: &str, step: &str, fq: &FakeQuantModule) {
    let (scale, zero_point, range) = fake_quant_state(fq);
    let what = |field: &str| format!("{prefix}.{field}.{step}");
    assert_close(case, &what("scale"), &scale, &f.tensor(case, &what("scale")), 1e-6);
    assert_eq!(zero_point, f.ints(case, &what("zero_point")), "{case}: {}", what("zero_point"));
    let (min, max) = range.expect("observed");
    let as_array = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).unwrap();
    let expected_min = f.tensor::<f32>(case, &what("min_val"));
    assert_close(
        case,
        &what("min_val"),
        &as_array(min).into_shape_with_order(expected_min.raw_dim()).unwrap(),
        &expected_min,
        1e-6,
    );
    let expected_max = f.tensor::<f32>(case, &what("max_val"));
    assert_close(
        case,
        &what("max_val"),
        &as_array(max).into_shape_with_order(expected_max.raw_dim()).unwrap(),
        &expected_max,
        1e-6,
    );
}

/// The prepared module at `0` and its QAT module.
fn parts(model: &dyn Module) -> (&Observed, &dyn Module) {
    let observed = model.get("0").unwrap().downcast_ref::<Observed>().expect("prepared");
    (observed, observed.inner())
}

fn weight_fake_quant(inner: &dyn Module) -> &FakeQuantModule {
    inner.get("weight_fake_quant").unwrap().downcast_ref().expect("a fake quantizer")
}

#[test]
fn qat_modules_train_and_convert_as_pytorch() {
    let f = fixture();
    let backprop = Backprop::default();
    for c in &f.cases {
        let case = qtest::name(c);
        let mut model = float_model(&f, c);
        let groups: Vec<String> = (0..model.children().len()).map(|i| i.to_string()).collect();
        if groups.len() > 1 {
            let group: Vec<&str> = groups.iter().map(String::as_str).collect();
            qgraph::fuse::fuse_modules_qat(&mut model, &[&group]).unwrap();
        }
        let qat = qconfig(case);
        qfake::prepare_qat(&mut model, &qat).unwrap();
        assert_eq!(
            parts(model.as_ref()).1.type_name(),
            c["module"].as_str().unwrap().rsplit('.').next().unwrap(),
            "{case}"
        );
        for step in ["1", "2", "3"] {
            if step == "3" && !c["freeze_bn_before_step"].is_null() {
                qfake::freeze_bn_stats(&mut model);
                // PyTorch's function skips LinearBn1d: the module's own method freezes it.
                let slot = qgraph::slot_mut(&mut model, "0").unwrap();
                let observed = slot.downcast_mut::<Observed>().expect("prepared");
                if let Some(linear_bn) = observed.inner_mut().downcast_mut::<QatLinearBn>() {
                    assert!(!linear_bn.is_bn_frozen(), "{case}: freeze_bn_stats leaves LinearBn1d alone");
                    linear_bn.freeze_bn_stats();
                }
            }
            let field = |name: &str| format!("{name}.{step}");
            let x = f.tensor::<f32>(case, &field("x"));
            let (y, tape) = backprop.forward(model.as_mut(), Value::Float(x)).unwrap();
            assert_close(case, &field("y"), &y.to_float().unwrap(), &f.tensor(case, &field("y")), 1e-6);
            let g = f.tensor::<f32>(case, &field("g"));
            let (dx, grads) = backprop.backward(model.as_ref(), tape, Value::Float(g)).unwrap();
            assert_close(
                case,
                &field("dx"),
                &dx.into_float("test").unwrap(),
                &f.tensor(case, &field("dx")),
                1e-6,
            );
            for (ours, theirs) in [
                ("0.weight", "dweight"),
                ("0.bias", "dbias"),
                ("0.bn.weight", "dbn.weight"),
                ("0.bn.bias", "dbn.bias"),
            ] {
                if f.has(case, &field(theirs)) {
                    let got = grads.get(ours).unwrap_or_else(|| panic!("{case}: no gradient for {ours}"));
                    let floor = if theirs == "dbias" && f.has(case, &field("dbn.bias")) {
                        f.tensor::<f32>(case, &field("dbn.bias")).iter().fold(0f32, |m, v| m.max(v.abs()))
                    } else {
                        f32::MIN_POSITIVE
                    };
                    assert_close_at(case, &field(theirs), got, &f.tensor(case, &field(theirs)), 1e-6, floor);
                } else {
                    assert!(!grads.contains_key(ours), "{case}: unexpected gradient {ours}");
                }
            }
            let (_, inner) = parts(model.as_ref());
            let bn = match inner.downcast_ref::<QatConv>() {
                Some(conv) => conv.bn(),
                None => inner.downcast_ref::<QatLinearBn>().map(|m| m.bn().unwrap()),
            };
            if let Some(bn) = bn {
                assert_close(
                    case,
                    &field("bn.running_mean"),
                    bn.running_mean(),
                    &f.tensor(case, &field("bn.running_mean")),
                    1e-6,
                );
                assert_close(
                    case,
                    &field("bn.running_var"),
                    bn.running_var(),
                    &f.tensor(case, &field("bn.running_var")),
                    1e-6,
                );
            }
            check_fake_quant(&f, case, "wfq", step, weight_fake_quant(inner));
            let act = model
                .get("0")
                .unwrap()
                .get(Observed::POST)
                .unwrap()
                .downcast_ref::<FakeQuantModule>()
                .expect("fake quant");
            check_fake_quant(&f, case, "act", step, act);
        }
        qgraph::eval(&mut model);
        let y = model.forward(Value::Float(f.tensor(case, "x.3"))).unwrap().into_float("test").unwrap();
        assert_close(case, "y.eval", &y, &f.tensor(case, "y.eval"), 1e-6);

        qfake::convert(&mut model, qat.kinds).unwrap();
        let converted = model.get("0").unwrap();
        assert_eq!(
            converted.type_name(),
            format!("Quantized{}", c["quantized"].as_str().unwrap().rsplit('.').next().unwrap()),
            "{case}"
        );
        let (weight_int, weight_q, bias, out_scale, out_zp) = match converted.downcast_ref::<QuantizedConv>()
        {
            Some(q) => (
                q.weight_int().clone(),
                q.weight_qparams().clone(),
                q.bias().cloned(),
                q.scale(),
                q.zero_point(),
            ),
            None => {
                let q = converted.downcast_ref::<QuantizedLinear>().expect("a quantized conv or linear");
                (
                    q.weight_int().clone(),
                    q.weight_qparams().clone(),
                    q.bias().cloned(),
                    q.scale(),
                    q.zero_point(),
                )
            }
        };
        let expected_scale = f.tensor::<f64>(case, "q.scale")[0];
        assert!(
            (out_scale - expected_scale).abs() <= 1e-6 * expected_scale,
            "{case}: output scale {out_scale} vs {expected_scale}"
        );
        assert_eq!(out_zp, f.tensor::<i64>(case, "q.zero_point")[0], "{case}: output zero point");
        let scales = f.tensor::<f64>(case, "q.weight_scales");
        for (a, b) in weight_q.scales().iter().zip(scales.iter()) {
            assert!((a - b).abs() <= 1e-6 * b, "{case}: weight scale {a} vs {b}");
        }
        assert_eq!(
            weight_q.zero_points(),
            f.tensor::<i64>(case, "q.weight_zero_points").as_slice().unwrap(),
            "{case}"
        );
        let expected_int = f.ints(case, "q.weight");
        let off: usize = weight_int.iter().zip(&expected_int).filter(|(a, b)| i32::from(**a) != **b).count();
        let worst =
            weight_int.iter().zip(&expected_int).map(|(a, b)| (i32::from(*a) - b).abs()).max().unwrap_or(0);
        assert!(
            worst <= 1 && off * 100 <= expected_int.len(),
            "{case}: {off} of {} weights differ (worst {worst})",
            expected_int.len()
        );
        if let Some(bias) = bias {
            assert_close(case, "q.bias", &bias, &f.tensor(case, "q.bias"), 1e-6);
        }
        let in_q = PerTensor::new(c["in_scale"].as_f64().unwrap(), c["in_zero_point"].as_i64().unwrap());
        let input = QuantTensor::from_int_repr(&f.tensor::<u8>(case, "q.input"), in_q).unwrap();
        let out = converted.forward(Value::Quant(input)).unwrap().into_quant("test").unwrap();
        let got = out.int_repr().mapv(i32::from);
        let expected = f.ints(case, "q.output");
        let off = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).max().unwrap_or(0);
        assert!(
            worst <= 1 && off * 100 <= expected.len(),
            "{case}: {off} of {} outputs differ (worst {worst})",
            expected.len()
        );
        let _ = QatLinear::SAVED_TYPE;
    }
}
