//! The numeric suite (`qgraph::ns`) on the digits model (`assets/digits`): `compare_weights`,
//! `compare_model_outputs`, `compare_model_stub`, and the per-layer report, which must find a
//! layer whose calibration was broken on purpose.
//!
//! ```text
//! cargo test -p qgraph --test ns
//! ```

#[path = "../examples/digits/mod.rs"]
#[allow(dead_code)]
mod digits;

use ndarray::{ArrayD, IxDyn};
use qgraph::fuse::fuse_modules;
use qgraph::ns::{self, Report};
use qgraph::qconfig::get_default_qconfig;
use qgraph::quantized::QuantizedConv;
use qgraph::workflow::Observed;
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, io, prepare};

/// The digits model at each stage: float (fused), prepared and calibrated, converted; and a few
/// test batches.
struct Models {
    fused: Box<dyn Module>,
    prepared: Box<dyn Module>,
    quantized: Box<dyn Module>,
    inputs: Vec<Value>,
}

/// Fuses, prepares (x86 default qconfig) and calibrates on the first 256 training images;
/// `tamper` may change the calibrated model before it is converted.
fn digits_models(tamper: impl FnOnce(&mut Box<dyn Module>)) -> Models {
    let data = digits::Digits::load().expect("digits load");
    let record = digits::TrainingRecord::load().expect("training record loads");
    let mut fused = digits::digits_net().expect("model builds");
    io::load_state_dict_file(&mut fused, digits::asset("digits_cnn.safetensors")).expect("weights load");
    fuse_modules(&mut fused, digits::FUSE).expect("fuses");
    let mut prepared = fused.clone();
    prepare(&mut prepared, &QConfigMapping::global(get_default_qconfig("x86").expect("x86")))
        .expect("prepares");
    let batches: Vec<ArrayD<f32>> = record.train()[..256].chunks(64).map(|b| data.images_at(b)).collect();
    calibrate(prepared.as_ref(), batches, |_, _| {}).expect("calibrates");
    tamper(&mut prepared);
    let mut quantized = prepared.clone();
    convert(&mut quantized).expect("converts");
    let inputs = record.test()[..128].chunks(64).map(|b| Value::from(data.images_at(b))).collect();
    Models { fused, prepared, quantized, inputs }
}

/// PyTorch's numeric suite on the same recipe (`tools/golden/gen_ns.py`).
fn pytorch() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ns/digits_ns.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

/// `[[key, ..., sqnr], ...]` of the fixture as (key, last number).
fn keyed(rows: &serde_json::Value) -> Vec<(String, f64)> {
    let rows = rows.as_array().expect("rows");
    rows.iter()
        .map(|r| {
            let r = r.as_array().expect("row");
            (r[0].as_str().expect("key").to_string(), r.last().and_then(|v| v.as_f64()).expect("sqnr"))
        })
        .collect()
}

fn sqnr_of(values: &[(Value, Value)]) -> f64 {
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (f, q) in values {
        let (f, q) = (f.to_float().expect("tensor"), q.to_float().expect("tensor"));
        for (&a, &b) in f.iter().zip(q.iter()) {
            signal += f64::from(a) * f64::from(a);
            noise += (f64::from(a) - f64::from(b)).powi(2);
        }
    }
    10.0 * (signal / noise).log10()
}

/// The keys and SQNRs of PyTorch's numeric suite on the same model and data. Weight SQNRs agree
/// to 1e-6 dB; output SQNRs to 0.05 dB: float convolutions sum in another order than PyTorch's,
/// so the calibrated ranges and output scales differ by a few ulps (features.0: 2 ulps) and a
/// few int8 outputs by one code (3 of 131072 in features.0).
#[test]
fn numeric_suite_matches_pytorch() {
    let torch = pytorch();
    let mut m = digits_models(|_| {});
    let weights =
        ns::compare_weights(&m.fused.state_dict(), &ns::quantized_state_dict(m.quantized.as_ref()).unwrap());
    let expected = keyed(&torch["compare_weights"]);
    assert_eq!(
        weights.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        expected.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );
    for ((key, pair), (_, want)) in weights.iter().zip(&expected) {
        let got = ns::compute_sqnr(&pair.float, &pair.quantized).unwrap();
        assert!((got - want).abs() < 1e-6, "{key}: {got} dB, PyTorch {want} dB");
    }

    let outputs = ns::compare_model_outputs(&mut m.fused, &mut m.quantized, &m.inputs).unwrap();
    let expected = keyed(&torch["compare_model_outputs"]);
    assert_eq!(
        outputs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        expected.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );
    for ((key, pair), (_, want)) in outputs.iter().zip(&expected) {
        let pairs: Vec<(Value, Value)> =
            pair.float.iter().cloned().zip(pair.quantized.iter().cloned()).collect();
        let got = sqnr_of(&pairs);
        eprintln!("{key}: {got:.6} dB, PyTorch {want:.6} dB");
        assert!((got - want).abs() < 0.05, "{key}: {got} dB, PyTorch {want} dB");
    }

    let stub =
        ns::compare_model_stub(m.fused.as_ref(), &mut m.quantized, &["ConvReLU2d", "Linear"], &m.inputs)
            .unwrap();
    let expected = keyed(&torch["compare_model_stub"]);
    assert_eq!(
        stub.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        expected.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );
    for ((key, pair), (_, want)) in stub.iter().zip(&expected) {
        // PyTorch's ShadowLogger keeps the first sample of each batch.
        let first = |v: &Value| Value::from(v.to_float().unwrap().index_axis(ndarray::Axis(0), 0).to_owned());
        let pairs: Vec<(Value, Value)> =
            pair.float.iter().zip(&pair.quantized).map(|(f, q)| (first(f), first(q))).collect();
        let got = sqnr_of(&pairs);
        eprintln!("{key}: {got:.6} dB, PyTorch {want:.6} dB");
        assert!((got - want).abs() < 0.05, "{key}: {got} dB, PyTorch {want} dB");
    }
}

fn array(values: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).expect("1-D")
}

#[test]
fn sqnr_is_the_hand_computed_ratio() {
    // ‖x‖² = 1 + 4 + 4 = 9, ‖x − y‖² = 0.01 + 0 + 0.04 = 0.05: 10 log10(180).
    let x = array(&[1.0, -2.0, 2.0]);
    let y = array(&[1.1, -2.0, 1.8]);
    let expected = 10.0 * (9.0f64 / (0.1f64 * 0.1 + 0.2 * 0.2)).log10();
    let got = ns::compute_sqnr(&x, &y).expect("same shapes");
    assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    assert_eq!(ns::compute_sqnr(&x, &x).expect("same shapes"), f64::INFINITY);
    let err = ns::compute_sqnr(&x, &array(&[1.0])).expect_err("shapes differ");
    assert!(err.to_string().contains("[3]") && err.to_string().contains("[1]"), "{err}");
}

#[test]
fn find_match_follows_pytorch() {
    let float = ["features.0.0.weight", "features.0.0.bias", "fc.weight", "fc.bias"];
    assert_eq!(ns::find_match(&float, "features.0.weight", "weight"), Some("features.0.0.weight"));
    assert_eq!(ns::find_match(&float, "fc.weight", "weight"), Some("fc.weight"));
    assert_eq!(
        ns::find_match(&float, "fc._packed_params._packed_params", "_packed_params"),
        Some("fc.weight")
    );
    assert_eq!(ns::find_match(&float, "features.3.weight", "weight"), None);
    assert_eq!(ns::find_match(&float, "fc.scale", "weight"), None);
}

#[test]
fn compare_weights_pairs_each_layer_with_its_dequantized_weight() {
    let m = digits_models(|_| {});
    let q_dict = ns::quantized_state_dict(m.quantized.as_ref()).expect("quantized weights");
    let keys: Vec<&str> = q_dict.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["features.0.weight", "features.3.weight", "features.7.weight", "fc._packed_params._packed_params"]
    );
    let compared = ns::compare_weights(&m.fused.state_dict(), &q_dict);
    assert_eq!(compared.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), keys);

    // The float side is the fused (BN-folded) conv weight; the quantized side is exactly the
    // module's weight, dequantized.
    let conv = m
        .quantized
        .get("features.0")
        .expect("path")
        .downcast_ref::<QuantizedConv>()
        .expect("a quantized conv");
    let (_, pair) = &compared[0];
    assert_eq!(pair.quantized, conv.weight_qparams().dequantize());
    let float_weight =
        m.fused.state_dict().into_iter().find(|(k, _)| k == "features.0.0.weight").expect("key").1.clone();
    assert_eq!(pair.float, float_weight);
    // Per-channel symmetric qint8: each weight within half a step of its float value.
    let scales = conv.weight_qparams().scales();
    for (c, (f, q)) in pair.float.outer_iter().zip(pair.quantized.outer_iter()).enumerate() {
        for (a, b) in f.iter().zip(q.iter()) {
            assert!((a - b).abs() <= (scales[c] / 2.0) as f32 * 1.0001, "channel {c}: {a} vs {b}");
        }
    }
    let sqnr = ns::compute_sqnr(&pair.float, &pair.quantized).expect("same shape");
    assert!(sqnr > 30.0 && sqnr.is_finite(), "8-bit per-channel weights: {sqnr} dB");
}

#[test]
fn compare_model_outputs_logs_the_matching_modules() {
    let mut m = digits_models(|_| {});
    let before = m.quantized.to_string();
    let compared = ns::compare_model_outputs(&mut m.fused, &mut m.quantized, &m.inputs).expect("both run");
    let keys: Vec<&str> = compared.iter().map(|(k, _)| k.as_str()).collect();
    // As PyTorch's prepare, no logger on DeQuantStub: `dequant` has no entry.
    assert_eq!(keys, ["quant.stats", "features.0.stats", "features.3.stats", "features.7.stats", "fc.stats"]);
    assert_eq!(m.quantized.to_string(), before, "the loggers are removed");

    // One entry per input batch; the float side is what the float model's module outputs.
    let fc = &compared[4].1;
    assert_eq!((fc.float.len(), fc.quantized.len()), (2, 2));
    let float_out = m.fused.forward(m.inputs[1].clone()).expect("runs").into_float("test").expect("float");
    assert_eq!(fc.float[1], Value::from(float_out));
    // The quantized side is the quantized module's own output: the model's output is its dequantization.
    let q_out = m.quantized.forward(m.inputs[1].clone()).expect("runs").into_float("test").expect("float");
    assert!(fc.quantized[1].is_quant());
    assert_eq!(fc.quantized[1].to_float().expect("dequantizes"), q_out);
    let sqnr = ns::compute_sqnr(&fc.float[1].to_float().unwrap(), &q_out).expect("same shape");
    assert!(sqnr > 15.0, "fc output {sqnr} dB");
}

#[test]
fn compare_model_stub_feeds_both_modules_the_same_input() {
    let mut m = digits_models(|_| {});
    let before = m.quantized.to_string();
    let stub =
        ns::compare_model_stub(m.fused.as_ref(), &mut m.quantized, &["ConvReLU2d", "Linear"], &m.inputs)
            .expect("runs");
    assert_eq!(m.quantized.to_string(), before, "the shadows are removed");
    let keys: Vec<&str> = stub.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["features.0.stats", "features.3.stats", "features.7.stats", "fc.stats"]);

    // The fc shadow: the float Linear run on the dequantized input of the quantized Linear.
    let input = m.inputs[0].clone();
    let mut log_model = m.quantized.clone();
    let log = qgraph::debug::log_outputs(&mut log_model, |p, _| p == "flatten").expect("attaches");
    log_model.forward(input).expect("runs");
    let fc_input = log.take().remove(0).1.to_float().expect("dequantizes");
    let expected = m.fused.get("fc").expect("fc").forward(Value::from(fc_input)).expect("runs");
    let fc = &stub[3].1;
    assert_eq!(fc.float[0], expected);
    let sqnr = ns::compute_sqnr(&expected.to_float().unwrap(), &fc.quantized[0].to_float().unwrap()).unwrap();
    assert!(sqnr > 20.0, "fc alone: {sqnr} dB");

    let err = ns::compare_model_stub(m.fused.as_ref(), &mut m.quantized, &["LSTM"], &m.inputs)
        .expect_err("nothing");
    assert!(err.to_string().contains("module_swap_list"), "{err}");
    assert_eq!(m.quantized.to_string(), before);
}

/// Sets the observer of `path` in a calibrated model to have seen outputs 100 times its largest.
fn outlier(model: &mut Box<dyn Module>, path: &str) {
    let observed = model.get(path).expect("path").downcast_ref::<Observed>().expect("an observed module");
    let observer = observed.observer().expect("an observer");
    let max = match observer.stats().range {
        Some(qgraph::qobserve::ObservedRange::PerTensor { max, .. }) => max,
        other => panic!("a per-tensor range, got {other:?}"),
    };
    // A whole batch of outliers, so that the histogram observer cannot discard them.
    let x = ArrayD::from_elem(IxDyn(&[64, 32, 8, 8]), 100.0 * max);
    observer.observe(&Value::from(x)).expect("observes");
}

#[test]
fn report_finds_the_broken_layer() {
    let good = digits_models(|_| {});
    let healthy =
        ns::report(good.fused.as_ref(), good.quantized.as_ref(), &good.inputs, Some(good.prepared.as_ref()))
            .expect("report");
    eprintln!("{healthy}");
    let names: Vec<&str> = healthy.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["quant", "features.0", "features.3", "features.7", "fc"]);
    let conv = healthy.layer("features.3").expect("row");
    assert!(conv.weight_sqnr.is_some_and(|v| v > 30.0), "{conv:?}");
    assert!(conv.observer.as_deref().is_some_and(|o| o.starts_with("HistogramObserver")), "{conv:?}");
    assert!(conv.qconfig.as_deref().is_some_and(|q| q.contains("reduce_range")), "{conv:?}");
    let range = conv.range.as_ref().expect("quantized output");
    assert_eq!(range.dtype, "quint8");
    assert!(range.unused_codes >= 40.0, "reduce_range leaves the top half unused: {range:?}");
    assert!(healthy.layer("quant").is_some_and(|l| l.range.is_some() && l.weight_sqnr.is_none()));

    let broken = digits_models(|m| outlier(m, "features.3"));
    let report = ns::report(
        broken.fused.as_ref(),
        broken.quantized.as_ref(),
        &broken.inputs,
        Some(broken.prepared.as_ref()),
    )
    .expect("report");
    eprintln!("{report}");
    assert_eq!(report.worst.as_deref(), Some("features.3"), "{report}");
    let (before, after) =
        (conv.forced_sqnr.unwrap(), report.layer("features.3").unwrap().forced_sqnr.unwrap());
    assert!(before - after > 20.0, "teacher-forced SQNR {before:.2} dB -> {after:.2} dB");
    // The next layer is fed the badly rounded output too, but its own error stays small.
    let next = report.layer("features.7").unwrap();
    assert!(next.forced_sqnr.unwrap() < 5.0 && next.own_sqnr.unwrap() > after, "{next:?}");
    // Weights are untouched; the earlier layers are unchanged.
    assert_eq!(report.layer("features.3").unwrap().weight_sqnr, conv.weight_sqnr);
    assert_eq!(
        report.layer("features.0").unwrap().forced_sqnr,
        healthy.layer("features.0").unwrap().forced_sqnr
    );
    assert!(report.to_string().contains("worst layer: features.3"));
}

#[test]
fn report_round_trips_through_json() {
    let m = digits_models(|_| {});
    let mut report = ns::report(m.fused.as_ref(), m.quantized.as_ref(), &m.inputs, None).expect("report");
    assert!(report.layers.iter().all(|l| l.observer.is_none() && l.qconfig.is_none()));
    // The quant stub is given the float input itself, so forcing changes nothing for it.
    let quant = report.layer("quant").unwrap();
    assert_eq!(quant.input_sqnr, Some(f64::INFINITY));
    assert_eq!(quant.forced_sqnr, quant.output_sqnr);
    assert_eq!(quant.own_sqnr, quant.forced_sqnr);
    report.layers[0].output_sqnr = Some(f64::NEG_INFINITY);
    let json = report.to_json().expect("serializes");
    assert!(json.contains("\"inf\"") && json.contains("\"-inf\""), "{json}");
    assert_eq!(Report::from_json(&json).expect("parses"), report);
    let err = Report::from_json("{\"layers\": 3}").expect_err("not a report");
    assert!(err.to_string().contains("Report::to_json"), "{err}");
}

/// Checks that `svg` is a balanced tree of tags and returns the opening tags' names.
fn balanced_tags(svg: &str) -> Vec<String> {
    let (mut stack, mut opened) = (Vec::<String>::new(), Vec::new());
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("every tag closes") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "closing </{name}> out of order");
        } else {
            let name = tag.split_whitespace().next().expect("a name").trim_end_matches('/').to_string();
            opened.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    assert!(stack.is_empty(), "unclosed tags {stack:?}");
    opened
}

#[test]
fn report_svg_is_well_formed_with_one_bar_and_point_per_layer() {
    let m = digits_models(|_| {});
    let report = ns::report(m.fused.as_ref(), m.quantized.as_ref(), &m.inputs, None).expect("report");
    let svg = report.to_svg();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    let tags = balanced_tags(&svg);
    assert_eq!(tags[0], "svg");
    assert_eq!(tags.iter().filter(|t| *t == "svg").count(), 1);
    assert_eq!(svg.matches("<rect class=\"bar\"").count(), report.layers.len());
    assert_eq!(svg.matches("<circle class=\"point\"").count(), report.layers.len());
    for layer in &report.layers {
        assert!(svg.contains(&format!(">{}</text>", layer.name)), "label of {}", layer.name);
    }
}

#[test]
fn report_rejects_no_inputs_and_an_unfused_float_model() {
    let m = digits_models(|_| {});
    let err = ns::report(m.fused.as_ref(), m.quantized.as_ref(), &[], None).expect_err("no inputs");
    assert!(err.to_string().contains("at least one input"), "{err}");

    let mut unfused = digits::digits_net().expect("model builds");
    io::load_state_dict_file(&mut unfused, digits::asset("digits_cnn.safetensors")).expect("weights load");
    let err = ns::report(unfused.as_ref(), m.quantized.as_ref(), &m.inputs, None).expect_err("not fused");
    let text = err.to_string();
    assert!(
        text.contains("`features.0` is QuantizedConvReLU2d")
            && text.contains("is Conv2d")
            && text.contains("fuse_modules"),
        "{text}"
    );
}
