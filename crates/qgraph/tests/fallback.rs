//! Accuracy-driven float fallback (`qgraph::fallback`): the digits model with 4-bit weights
//! reaches test accuracy within 0.5 points of float with the fewest float layers (checked
//! against every smaller float set), the chosen model is what PyTorch's stub placement gives,
//! a seeded MobileNetV2 with per-tensor weights reaches an output SQNR that needs float layers,
//! and unreachable targets and empty calibration sets are errors.
//!
//! ```text
//! cargo test -p qgraph --test fallback
//! ```

#[path = "../examples/digits/mod.rs"]
#[allow(dead_code)]
mod digits;

use ndarray::{ArrayD, IxDyn};
use qgraph::fallback::{self, Fallback, Row, Step, Target};
use qgraph::fuse::fuse_modules;
use qgraph::models::{self, deterministic_state_dict, random_f32s};
use qgraph::qconfig::{QConfig, default_qconfig, get_default_qconfig};
use qgraph::qobserve::{ObserverSpec, QDType, QScheme, UniformArgs};
use qgraph::{
    GraphError, GraphResult, Module, QConfigMapping, Value, calibrate, convert, eval, io, load_state_dict,
    prepare,
};

/// x86's default qconfig with 4-bit weights: per-channel symmetric qint8 restricted to -8..7.
fn four_bit_qconfig() -> QConfig {
    let mut qconfig = get_default_qconfig("x86").expect("x86");
    let args = UniformArgs::per_channel()
        .dtype(QDType::QInt8)
        .qscheme(QScheme::PerChannelSymmetric)
        .quant_range(-8, 7);
    qconfig.weight = ObserverSpec::PerChannelMinMax { ch_axis: 0, args };
    qconfig
}

/// The fused digits model, calibration batches (the first 512 training images) and the 360
/// test images with their labels.
struct DigitsCase {
    fused: Box<dyn Module>,
    calibration: Vec<Value>,
    test_images: ArrayD<f32>,
    test_labels: Vec<usize>,
}

impl DigitsCase {
    fn load() -> Self {
        let data = digits::Digits::load().expect("digits load");
        let record = digits::TrainingRecord::load().expect("record loads");
        let mut fused = digits::digits_net().expect("model builds");
        io::load_state_dict_file(&mut fused, digits::asset("digits_cnn.safetensors")).expect("weights load");
        fuse_modules(&mut fused, digits::FUSE).expect("fuses");
        let calibration = record.train()[..512].chunks(64).map(|b| Value::from(data.images_at(b))).collect();
        let test_images = data.images_at(record.test());
        let test_labels = record.test().iter().map(|&i| data.labels[i]).collect();
        Self { fused, calibration, test_images, test_labels }
    }

    /// Test accuracy in percent.
    fn accuracy(&self, model: &dyn Module) -> GraphResult<f64> {
        let predicted = digits::predict(model, &self.test_images)?;
        Ok(100.0 * digits::matches(&predicted, &self.test_labels) as f64 / self.test_labels.len() as f64)
    }

    /// The model with `layers` float, built the PyTorch way from the float model: stubs around
    /// each float layer, qconfig None on it, prepare, calibrate, convert.
    fn isolated(&self, mapping: &QConfigMapping, layers: &[String]) -> Box<dyn Module> {
        let (mut model, mapping) = fallback::isolate(self.fused.as_ref(), mapping, layers).expect("isolates");
        prepare(&mut model, &mapping).expect("prepares");
        calibrate(model.as_ref(), self.calibration.iter().cloned(), |_, _| {}).expect("calibrates");
        convert(&mut model).expect("converts");
        model
    }
}

/// The curve's float sets are nested prefixes of the ranking (most damaging first) with strictly
/// more layers per row, one per row; the last row is the first that meets the target (the greedy
/// pass stops there), and the final choice is no larger and meets the target.
fn check_curve(found: &Fallback) {
    let curve = found.curve();
    assert_eq!(curve[0].step, Step::Quantized);
    let ranking: Vec<&str> = found.ranking.iter().map(|r| r.layer.as_str()).collect();
    for (k, row) in curve.iter().enumerate() {
        assert_eq!(row.float_layers, ranking[..k], "row {k} is not the first {k} ranked layers");
    }
    let (last, before) = curve.split_last().expect("rows");
    assert!(last.meets && before.iter().all(|r| !r.meets), "{curve:?}");
    assert!(found.layers.len() <= last.float_layers.len());
    assert!(found.target.is_met(found.float_metric, found.metric));
}

/// No chosen layer can be dropped: for each, a row shows the choice without it missing the target.
fn check_minimal(found: &Fallback) {
    use std::collections::BTreeSet;
    for layer in &found.layers {
        let without: BTreeSet<&String> = found.layers.iter().filter(|l| *l != layer).collect();
        let shown =
            found.rows.iter().any(|r| !r.meets && r.float_layers.iter().collect::<BTreeSet<_>>() == without);
        assert!(shown, "dropping {layer} from the choice was not shown to miss the target");
    }
}

#[test]
fn digits_4bit_within_half_a_point_with_the_fewest_float_layers() {
    let case = DigitsCase::load();
    let mapping = QConfigMapping::global(four_bit_qconfig());
    let target = Target::MetricWithin { points: 0.5, higher_is_better: true };
    let found =
        fallback::search(case.fused.as_ref(), &mapping, &case.calibration, |m| case.accuracy(m), target)
            .expect("the target is reachable");
    println!("{found}");
    check_curve(&found);
    check_minimal(&found);

    // The all-quantized 4-bit model misses the target, so at least one layer is float.
    let float = case.accuracy(case.fused.as_ref()).unwrap();
    assert_eq!(found.float_metric, float);
    assert!(!found.rows[0].meets, "4-bit PTQ already meets the target: {:?}", found.rows[0]);
    assert!(!found.layers.is_empty());
    assert_eq!(found.ranking.len(), 4, "{:?}", found.ranking); // features.0, .3, .7 and fc

    // The chosen model is the PyTorch-style one (stubs, qconfig None, prepare, calibrate,
    // convert from the float model), bit for bit.
    let isolated = case.isolated(&mapping, &found.layers);
    let x = Value::from(case.test_images.clone());
    let (a, b) = (found.model.forward(x.clone()).unwrap(), isolated.forward(x).unwrap());
    assert_eq!(a.into_float_lossy().unwrap(), b.into_float_lossy().unwrap());
    for layer in &found.layers {
        let float = isolated.get(&format!("{layer}.1")).expect("the float layer");
        assert!(!float.type_name().starts_with("Quantized"), "{layer}: {}", float.type_name());
        assert_eq!(isolated.get(&format!("{layer}.0")).unwrap().type_name(), "DeQuantize");
        assert_eq!(isolated.get(&format!("{layer}.2")).unwrap().type_name(), "Quantize");
    }
    assert!((case.accuracy(isolated.as_ref()).unwrap() - found.metric).abs() < 1e-12);

    // Fewest: every smaller set of candidate layers misses the target (built independently).
    let names: Vec<String> = found.ranking.iter().map(|r| r.layer.clone()).collect();
    for mask in 0u32..(1 << names.len()) {
        let subset: Vec<String> =
            names.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| n.clone()).collect();
        if subset.len() >= found.layers.len() {
            continue;
        }
        let accuracy = case.accuracy(case.isolated(&mapping, &subset).as_ref()).unwrap();
        assert!(!target.is_met(float, accuracy), "{subset:?} already meets the target: {accuracy}");
    }

    // Serializes (rows round-trip).
    let json: serde_json::Value = serde_json::from_str(&found.to_json().unwrap()).unwrap();
    let rows: Vec<Row> = serde_json::from_value(json["rows"].clone()).unwrap();
    assert_eq!(rows, found.rows);
    assert_eq!(json["layers"].as_array().unwrap().len(), found.layers.len());
}

/// `count` seeded images `[2, 3, 64, 64]` in [-1, 1), starting at `seed`.
fn images(count: u64, seed: u64) -> Vec<Value> {
    (0..count)
        .map(|i| {
            Value::from(
                ArrayD::from_shape_vec(IxDyn(&[2, 3, 64, 64]), random_f32s(2 * 3 * 64 * 64, seed + i))
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn mobilenet_v2_per_tensor_reaches_43_9_db_output_sqnr() {
    let mut fused = models::mobilenet_v2(10).unwrap();
    eval(&mut fused);
    let state = deterministic_state_dict(fused.as_ref()).unwrap();
    load_state_dict(&mut fused, state).unwrap();
    models::fuse_model(&mut fused).unwrap();
    let metric = fallback::output_sqnr(fused.as_ref(), &images(2, 100)).unwrap();
    let mapping = QConfigMapping::global(default_qconfig());
    let found = fallback::search(fused.as_ref(), &mapping, &images(4, 1), metric, Target::OutputSqnr(43.9))
        .expect("43.9 dB is reachable");
    println!("{found}");
    check_curve(&found);
    assert!(!found.rows[0].meets, "per-tensor int8 already has 43.9 dB: {:?}", found.rows[0]);
    assert!(!found.layers.is_empty() && found.layers.len() < found.ranking.len());
    check_minimal(&found);
    // Greedy stops at three layers; pruning leaves two, and trading those two for one other
    // layer still meets the target.
    let greedy = found.curve().last().unwrap().float_layers.len();
    assert!(found.layers.len() < greedy, "{found}");
    assert!(
        found.rows.iter().any(|r| r.step == Step::Swap && r.meets && r.float_layers == found.layers),
        "{found}"
    );
    // The measured SQNR of the chosen model, recomputed.
    let mut again = fallback::output_sqnr(fused.as_ref(), &images(2, 100)).unwrap();
    assert_eq!(again(found.model.as_ref()).unwrap(), found.metric);
}

#[test]
fn unreachable_target_is_an_error_saying_so() {
    let case = DigitsCase::load();
    let mapping = QConfigMapping::global(four_bit_qconfig());
    // With every layer float the input is still quantized by the QuantStub: far from 200 dB.
    let metric = fallback::output_sqnr(case.fused.as_ref(), &case.calibration[..1]).unwrap();
    let err = fallback::search(
        case.fused.as_ref(),
        &mapping,
        &case.calibration[..2],
        metric,
        Target::OutputSqnr(200.0),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GraphError::Workflow { step: "fallback::search", .. }), "{err:?}");
    assert!(text.contains("unreachable") && text.contains("200 dB") && text.contains("4 layers"), "{text}");
    // The greedy pass went all the way to every layer float.
    assert!(text.contains("the best was"), "{text}");
}

#[test]
fn empty_calibration_is_an_error() {
    let case = DigitsCase::load();
    let mapping = QConfigMapping::global(four_bit_qconfig());
    let target = Target::MetricWithin { points: 0.5, higher_is_better: true };
    let err = fallback::search(case.fused.as_ref(), &mapping, &[], |m| case.accuracy(m), target).unwrap_err();
    assert!(matches!(err, GraphError::InvalidArgument { what: "calibration", .. }), "{err:?}");
    assert!(err.to_string().contains("at least one calibration batch"), "{err}");
    let err = fallback::output_sqnr(case.fused.as_ref(), &[]).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("at least one input batch"), "{err}");
}

#[test]
fn targets() {
    let within = Target::MetricWithin { points: 0.5, higher_is_better: true };
    assert!(within.is_met(97.0, 96.5) && !within.is_met(97.0, 96.4));
    let loss = Target::MetricWithin { points: 0.1, higher_is_better: false };
    assert!(loss.is_met(1.0, 1.1) && !loss.is_met(1.0, 1.2));
    assert!(
        Target::OutputSqnr(30.0).is_met(f64::INFINITY, 30.0) && !Target::OutputSqnr(30.0).is_met(0.0, 29.9)
    );
}

#[test]
fn rows_with_an_infinite_metric_read_back_from_json() {
    let row = Row {
        step: Step::Greedy,
        float_layers: vec!["fc".into()],
        changed: Some("+fc".into()),
        metric: f64::INFINITY,
        meets: true,
        latency_ms: 0.5,
    };
    let json = serde_json::to_string(&row).unwrap();
    assert!(json.contains(r#""metric":null"#), "{json}");
    let back: Row = serde_json::from_str(&json).unwrap();
    assert!(back.metric.is_nan());
    assert_eq!(Row { metric: f64::INFINITY, ..back }, row);
}
