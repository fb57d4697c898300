//! Small torchvision models and a CRNN exported by `tools/golden/gen_onnx.py`: imported, run in
//! float against PyTorch and ONNX Runtime, taken through fuse_auto, prepare, calibrate and
//! convert, compared layer by layer with PyTorch's eager int8 quantization of the same model
//! (PyTorch's observed ranges in our observers, each module fed PyTorch's previous outputs, as
//! `crates/qgraph/tests/agreement.rs` does for the zoo), and saved and loaded back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ndarray::ArrayD;
use qgraph::qconfig::QConfig;
use qgraph::qobserve::{ObserverSpec, QDType};
use qgraph::workflow::{Observed, ObserverModule};
use qgraph::{
    DynamicDType, DynamicQConfigSpec, Module, PerTensor, QConfigMapping, QuantTensor, Value, calibrate,
    convert_with, debug, fuse::fuse_auto, prepare_with, quantize_dynamic,
};
use qtest::Fixture;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Fixture {
    Fixture::load(DIR, name)
}

fn params<'a>(fx: &'a Fixture, case: &str) -> &'a serde_json::Value {
    fx.cases.iter().find(|c| qtest::name(c) == case).unwrap_or_else(|| panic!("case {case}"))
}

fn import(name: &str) -> qonnx::Imported {
    qonnx::import_file(format!("{DIR}/{name}.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Largest difference relative to the largest magnitude of `reference`.
fn relative(ours: &ArrayD<f32>, reference: &ArrayD<f32>) -> f32 {
    assert_eq!(ours.shape(), reference.shape());
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
}

fn float_agrees(name: &str) {
    let fx = fixture(name);
    let imported = import(name);
    assert_eq!(imported.inputs.len(), 1);
    assert_eq!(imported.outputs.len(), 1);
    let x = fx.tensor::<f32>("float", "input");
    let y = imported.model.forward(Value::from(x)).expect("forward").into_float_lossy().expect("a tensor");
    let vs_torch = relative(&y, &fx.tensor::<f32>("float", "torch"));
    let vs_ort = relative(&y, &fx.tensor::<f32>("float", "ort"));
    eprintln!("{name}: float output vs PyTorch {vs_torch:e}, vs ONNX Runtime {vs_ort:e}");
    assert!(vs_torch <= 1e-5, "{name}: {vs_torch} from PyTorch");
    assert!(vs_ort <= 1e-5, "{name}: {vs_ort} from ONNX Runtime");
}

#[test]
fn resnet18_float_equals_pytorch_and_onnxruntime() {
    float_agrees("resnet18");
}

#[test]
fn mobilenet_v2_float_equals_pytorch_and_onnxruntime() {
    float_agrees("mobilenet_v2");
}

#[test]
fn mobilenet_v3_float_equals_pytorch_and_onnxruntime() {
    float_agrees("mobilenet_v3_large");
}

#[test]
fn crnn_float_equals_pytorch_and_onnxruntime() {
    float_agrees("crnn");
}

#[test]
fn names_follow_pytorch() {
    let model = import("resnet18").model;
    let names: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(model.get("layer1.0.add_relu").is_ok());
    let v3 = import("mobilenet_v3_large").model;
    assert_eq!(v3.get("features.4.block.2.fc1").expect("SE fc1").type_name(), "Conv2d");
    assert_eq!(v3.get("features.4.block.2.mul").expect("SE mul").type_name(), "FloatFunctional");
    assert_eq!(v3.get("classifier.0").expect("classifier").type_name(), "Linear");
    // The exporter writes one LSTM node per layer; they are PyTorch's one two-layer module.
    let crnn = import("crnn").model;
    let rnn = crnn.get("rnn").expect("rnn");
    assert_eq!(rnn.to_string(), "LSTM(16, 16, num_layers=2, bidirectional=True)");
    let names: Vec<String> = crnn.state_dict().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n == "rnn.weight_hh_l1_reverse"), "{names:?}");
    assert!(names.iter().any(|n| n == "cnn.2.0.weight"), "{names:?}");
}

/// The generator's qconfig (MinMax activations with reduce_range, per-channel weights) on what
/// PyTorch's model quantizes.
fn qconfig_mapping(name: &str) -> QConfigMapping {
    let qconfig = QConfig {
        activation: ObserverSpec::min_max().with_args(|a| a.dtype(QDType::QUInt8).reduce_range(true)),
        weight: qgraph::qobserve::defaults::default_per_channel_weight_observer(),
    };
    let mapping = QConfigMapping::global(qconfig);
    if name == "crnn" {
        // PyTorch's CRNN quantizes quant and cnn statically, the LSTM and fc dynamically.
        mapping.set_name("fc_quant", None).set_name("fc", None)
    } else {
        mapping
    }
}

fn prepared(name: &str) -> Box<dyn Module> {
    let mut model = import(name).model;
    let fused = fuse_auto(&mut model).expect("fuse_auto");
    assert!(!fused.is_empty(), "{name}: nothing fused");
    prepare_with(&mut model, &qconfig_mapping(name), &qonnx::mappings()).expect("prepare");
    model
}

fn observer_at<'m>(model: &'m dyn Module, path: &str) -> &'m ObserverModule {
    let module = model.get(path).unwrap_or_else(|e| panic!("{e}"));
    module
        .downcast_ref::<Observed>()
        .unwrap_or_else(|| panic!("{path} not observed"))
        .observer()
        .unwrap_or_else(|| panic!("{path} has no observer"))
}

/// Teacher-forced per-layer equality with PyTorch's eager int8 model.
fn layers_agree(name: &str) {
    let fx = fixture(name);
    let mut model = prepared(name);
    let paths = params(&fx, "observer")["paths"].as_array().expect("paths");
    for path in paths.iter().map(|p| p.as_str().expect("path")) {
        let range = fx.tensor::<f32>("observer", &format!("{path}.range"));
        if range.iter().all(|v| v.is_finite()) {
            observer_at(model.as_ref(), path).observe(&Value::Float(range)).expect("observe");
        }
    }
    convert_with(&mut model, &qonnx::mappings()).expect("convert");
    let order: Vec<String> = params(&fx, "output")["order"]
        .as_array()
        .expect("order")
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let mut torch = HashMap::new();
    for path in &order {
        let q = PerTensor::new(
            fx.tensor::<f64>("output", &format!("{path}.scale"))[[0]],
            fx.tensor::<i64>("output", &format!("{path}.zero_point"))[[0]],
        );
        let value = QuantTensor::from_int_repr(&fx.tensor::<u8>("output", path), q).expect("fixture value");
        torch.insert(path.clone(), Value::Quant(value));
    }
    let force: debug::Forcing = Arc::new(move |path: &str| torch.get(path).cloned());
    let leaf = |path: &str, m: &dyn Module| {
        (m.children().is_empty() && !path.ends_with("activation_post_process"))
            || m.type_name() == "QFunctional"
    };
    let log = debug::log_outputs_forced(&mut model, leaf, force).expect("loggers");
    model.forward(Value::from(fx.tensor::<f32>("float", "input"))).expect("forced forward");
    let outputs: BTreeMap<String, Value> = log.take().into_iter().collect();
    let mut differing = Vec::new();
    for path in &order {
        let Some(Value::Quant(q)) = outputs.get(path) else {
            panic!("{name}: no quantized output for {path}")
        };
        let expected = fx.tensor::<u8>("output", path);
        let scale = fx.tensor::<f64>("output", &format!("{path}.scale"))[[0]];
        assert!((q.qparams().scale - scale).abs() <= 1e-6 * scale, "{name}: {path} scale");
        assert_eq!(q.qparams().zero_point, fx.tensor::<i64>("output", &format!("{path}.zero_point"))[[0]]);
        let ours = q.int_repr();
        assert_eq!(ours.shape(), expected.shape(), "{name}: {path} shape");
        let diff = ours.iter().zip(&expected).filter(|(a, b)| a != b).count();
        if diff > 0 {
            differing.push(format!("{path}: {diff} of {}", ours.len()));
        }
    }
    eprintln!("{name}: {} layers compared, {} differ", order.len(), differing.len());
    assert!(order.len() >= 5, "{name}: only {} layers", order.len());
    assert!(differing.is_empty(), "{name}: fed PyTorch's inputs and ranges, layers differ: {differing:?}");
}

#[test]
fn resnet18_int8_layers_equal_pytorch() {
    layers_agree("resnet18");
}

#[test]
fn mobilenet_v3_int8_layers_equal_pytorch() {
    layers_agree("mobilenet_v3_large");
}

#[test]
fn crnn_int8_layers_equal_pytorch() {
    layers_agree("crnn");
}

/// The whole workflow on our own calibration, then save and load with qonnx's loaders.
fn workflow_roundtrip(name: &str) {
    let fx = fixture(name);
    let x = fx.tensor::<f32>("float", "input");
    let mut model = prepared(name);
    let shape = x.shape().to_vec();
    let batches = (0..2u64).map(|s| {
        ArrayD::from_shape_vec(ndarray::IxDyn(&shape), qtest::random_f32s(shape.iter().product(), 500 + s))
            .unwrap()
    });
    calibrate(model.as_ref(), batches, |_, _| {}).expect("calibrate");
    convert_with(&mut model, &qonnx::mappings()).expect("convert");
    if name == "crnn" {
        let swapped =
            quantize_dynamic(&mut model, DynamicQConfigSpec::Default, DynamicDType::QInt8).expect("dynamic");
        assert_eq!(swapped, 2, "the two-layer LSTM and fc");
    }
    let y =
        model.forward(Value::from(x.clone())).expect("int8 forward").into_float_lossy().expect("a tensor");
    let float = fx.tensor::<f32>("float", "torch");
    let err = relative(&y, &float);
    eprintln!("{name}: int8 output vs float {err:.3} (relative to max |y|)");
    assert!(err < 0.5, "{name}: int8 output far from float ({err})");
    let bytes = qgraph::io::to_bytes(model.as_ref()).expect("save");
    let back = qgraph::io::from_bytes_with(&bytes, &qonnx::loaders()).expect("load");
    let z = back.forward(Value::from(x)).expect("forward after load").into_float_lossy().expect("a tensor");
    assert_eq!(y, z, "{name}: loaded model differs");
}

#[test]
fn resnet18_workflow_and_save_load() {
    workflow_roundtrip("resnet18");
}

#[test]
fn mobilenet_v2_workflow_and_save_load() {
    workflow_roundtrip("mobilenet_v2");
}

#[test]
fn mobilenet_v3_workflow_and_save_load() {
    workflow_roundtrip("mobilenet_v3_large");
}

#[test]
fn crnn_workflow_and_save_load() {
    workflow_roundtrip("crnn");
}
