//! The model zoo against torchvision 0.29's quantizable models: `state_dict` names and shapes,
//! printouts (float and fused), `fuse_model` groups, and the errors for wrong inputs and
//! weights. The fixture `tests/fixtures/zoo_structure.json` holds, per `<model>_<num_classes>`,
//! `keys` ([name, shape] in state_dict order, no `num_batches_tracked`), `printed` (`str(model)`)
//! and for 1000 classes `fuse_groups` (the calls `fuse_model()` makes to `fuse_modules`, as full
//! paths) and `fused_printed`. It was written by this snippet (torch 2.15, torchvision 0.29):
//!
//! ```python
//! import json, torch.ao.quantization as tq
//! from torchvision.models import quantization as qm
//! out, orig = {}, tq.fuse_modules
//! for name, fn in [("resnet18", qm.resnet18), ("resnet50", qm.resnet50), ("mobilenet_v2", qm.mobilenet_v2)]:
//!     for nc in [1000, 10]:
//!         m = fn(weights=None, quantize=False, num_classes=nc).eval()
//!         e = {"keys": [[k, list(v.shape)] for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")],
//!              "printed": str(m)}
//!         if nc == 1000:
//!             paths, groups = {id(x): p for p, x in m.named_modules()}, []
//!             def rec(model, modules, *a, **k):
//!                 base = paths[id(model)]
//!                 for g in (modules if isinstance(modules[0], list) else [modules]):
//!                     groups.append([(base + "." if base else "") + s for s in g])
//!                 return orig(model, modules, *a, **k)
//!             tq.fuse_modules = rec; m.fuse_model(); tq.fuse_modules = orig
//!             e["fuse_groups"], e["fused_printed"] = groups, str(m)
//!         out[f"{name}_{nc}"] = e
//! json.dump(out, open("crates/qgraph/tests/fixtures/zoo_structure.json", "w"), indent=0)
//! ```

use std::collections::{BTreeMap, HashMap};

use ndarray::{ArrayD, IxDyn};
use qgraph::models::{self, Architecture, Model};
use qgraph::{GraphError, Module, Value, eval, load_state_dict};
use serde_json::Value as Json;

fn structure() -> &'static Json {
    static CELL: std::sync::OnceLock<Json> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/zoo_structure.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
    })
}

fn lines_diff(ours: &str, theirs: &str) -> String {
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        if a != b {
            return format!("first difference at line {}:\n  ours:  {a}\n  torch: {b}", i + 1);
        }
    }
    format!("lengths differ: {} vs {} lines", ours.lines().count(), theirs.lines().count())
}

#[test]
fn state_dict_keys_and_shapes_are_torchvisions() {
    for arch in Architecture::ALL {
        for classes in [1000, 10] {
            let model = arch.build(classes).unwrap();
            let ours: Vec<(String, Vec<usize>)> =
                model.state_dict().into_iter().map(|(k, x)| (k, x.shape().to_vec())).collect();
            let theirs: Vec<(String, Vec<usize>)> = structure()[format!("{arch}_{classes}")]["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let shape =
                        e[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                    (e[0].as_str().unwrap().to_string(), shape)
                })
                .collect();
            assert_eq!(ours.len(), theirs.len(), "{arch} {classes}: number of entries");
            for (a, b) in ours.iter().zip(&theirs) {
                assert_eq!(a, b, "{arch} {classes}");
            }
        }
    }
}

#[test]
fn printouts_are_torchvisions() {
    for arch in Architecture::ALL {
        for classes in [1000, 10] {
            let mut model = arch.build(classes).unwrap();
            eval(&mut model);
            let ours = model.to_string();
            let theirs = structure()[format!("{arch}_{classes}")]["printed"].as_str().unwrap().to_string();
            assert!(ours == theirs, "{arch} {classes}: {}", lines_diff(&ours, &theirs));
        }
    }
}

#[test]
fn fuse_model_makes_torchvisions_groups_and_printout() {
    for arch in Architecture::ALL {
        let mut model = arch.build(1000).unwrap();
        eval(&mut model);
        let groups = models::fuse_model(&mut model).unwrap();
        let theirs: Vec<Vec<String>> =
            serde_json::from_value(structure()[format!("{arch}_1000")]["fuse_groups"].clone()).unwrap();
        assert_eq!(groups, theirs, "{arch}");
        let ours = model.to_string();
        let theirs = structure()[format!("{arch}_1000")]["fused_printed"].as_str().unwrap().to_string();
        assert!(ours == theirs, "{arch} fused: {}", lines_diff(&ours, &theirs));
    }
}

#[test]
fn architecture_is_recognised_through_the_workflow() {
    for arch in Architecture::ALL {
        let mut model = arch.build(10).unwrap();
        assert_eq!(Architecture::of(model.as_ref()), Some(arch));
        eval(&mut model);
        models::fuse_model(&mut model).unwrap();
        assert_eq!(Architecture::of(model.as_ref()), Some(arch));
        assert_eq!(Architecture::from_name(arch.name()).unwrap(), arch);
    }
    let mut other: Box<dyn Module> = Box::new(qgraph::nn::ReLU::new());
    let err = models::fuse_model(&mut other).unwrap_err();
    assert!(err.to_string().contains("not a zoo model"), "{err}");
    assert!(models::resnet18(0).is_err());
}

#[test]
fn fuse_model_in_training_mode_is_an_error() {
    let mut model = models::mobilenet_v2(10).unwrap();
    assert!(models::fuse_model(&mut model).is_err());
}

#[test]
fn wrong_input_shapes_are_refused_with_the_expected_shape() {
    let model = Model::new(Architecture::ResNet18, 10).unwrap();
    for shape in [&[3, 32, 32][..], &[1, 1, 32, 32], &[1, 4, 32, 32], &[1, 3, 0, 32], &[1, 3, 32, 32, 1]] {
        let err = model.forward(ArrayD::zeros(IxDyn(shape))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("[N, 3, H, W]") && text.contains("resnet18"), "{shape:?}: {text}");
    }
    let err = models::check_input(Architecture::MobileNetV2, &[3, 224, 224]).unwrap_err();
    assert!(err.to_string().contains("rank 3"), "{err}");
    let err = models::check_input(Architecture::MobileNetV2, &[1, 1, 224, 224]).unwrap_err();
    assert!(err.to_string().contains("1 channels"), "{err}");
    models::check_input(Architecture::ResNet50, &[2, 3, 7, 9]).unwrap();
    // The module tree alone fails in its first convolution, naming it.
    let mut raw = models::resnet18(10).unwrap();
    eval(&mut raw);
    let err = raw.forward(Value::from(ArrayD::<f32>::zeros(IxDyn(&[1, 4, 16, 16])))).unwrap_err();
    assert!(err.to_string().contains("conv1"), "{err}");
}

/// The policy: `Model::forward` refuses non-finite inputs; the bare module tree follows PyTorch
/// (the float model propagates NaN).
#[test]
fn nan_input_is_refused_by_model_and_propagates_in_the_float_tree() {
    let mut model = Model::new(Architecture::MobileNetV2, 10).unwrap();
    let state = models::deterministic_state_dict(model.module()).unwrap();
    load_state_dict(model.module_mut(), state).unwrap();
    let mut x =
        ArrayD::<f32>::from_shape_vec(IxDyn(&[1, 3, 32, 32]), models::random_f32s(3 * 32 * 32, 5)).unwrap();
    let good = model.forward(x.clone()).unwrap();
    assert_eq!(good.shape(), &[1, 10]);
    assert!(good.iter().all(|v| v.is_finite()));
    x[[0, 1, 3, 4]] = f32::NAN;
    let err = model.forward(x.clone()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("NaN at [0, 1, 3, 4]") && text.contains("1 non-finite"), "{text}");
    x[[0, 1, 3, 4]] = f32::INFINITY;
    assert!(model.forward(x.clone()).is_err());
    // The bare tree runs (PyTorch's behaviour, no check): the NaN goes through the first
    // convolution and batch norm. (PyTorch's ReLU keeps NaN, so its output is all NaN; the float
    // ReLU kernel here maps NaN to 0, so only that far is asserted.)
    x[[0, 1, 3, 4]] = f32::NAN;
    let first = model.module().get("features.0").unwrap();
    let quant = model.module().get("quant").unwrap().forward(Value::from(x.clone())).unwrap();
    let conv_bn = first.get("1").unwrap().forward(first.get("0").unwrap().forward(quant).unwrap()).unwrap();
    assert_eq!(
        conv_bn.to_float().unwrap().iter().filter(|v| v.is_nan()).count(),
        2 * 32,
        "the two 3x3 stride-2 windows holding the NaN, 32 channels"
    );
    assert!(model.module().forward(Value::from(x)).is_ok());
}

/// A safetensors state dict of `entries` with optional exporter metadata.
fn safetensors_bytes(entries: &[(String, Vec<usize>, Vec<f32>)], model_name: Option<&str>) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> =
        entries.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .zip(&bytes)
        .map(|((k, s, _), b)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    let meta = model_name.map(|m| {
        HashMap::from([(
            "record".to_string(),
            format!("{{\"model\": \"{m}\", \"input\": [1, 3, 224, 224]}}"),
        )])
    });
    safetensors::tensor::serialize(views, meta).unwrap()
}

fn state_entries(state: &BTreeMap<String, ArrayD<f32>>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    state.iter().map(|(k, x)| (k.clone(), x.shape().to_vec(), x.iter().copied().collect())).collect()
}

#[test]
fn weights_round_trip_through_a_file() {
    let mut model = models::mobilenet_v2(10).unwrap();
    let state = models::deterministic_state_dict(model.as_ref()).unwrap();
    let mut entries = state_entries(&state);
    // PyTorch's files carry num_batches_tracked (int64); it is ignored.
    entries.push(("features.0.1.num_batches_tracked".into(), vec![], vec![0.0]));
    let bytes = safetensors_bytes(&entries, Some("mobilenet_v2"));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("zoo_mobilenet_v2_10.safetensors");
    std::fs::write(&path, bytes).unwrap();
    models::load_weights(&mut model, &path).unwrap();
    for (key, x) in model.state_dict() {
        assert_eq!(x, &state[&key], "{key}");
    }
}

#[test]
fn weights_of_another_architecture_are_refused_clearly() {
    // resnet50's names (tiny tensors: the names alone tell) into resnet18, with the exporter's metadata.
    let r50 = models::resnet50(1000).unwrap();
    let entries: Vec<(String, Vec<usize>, Vec<f32>)> =
        r50.state_dict().into_iter().map(|(k, _)| (k, vec![1], vec![0.0])).collect();
    let mut model = models::resnet18(1000).unwrap();
    let before: Vec<ArrayD<f32>> = model.state_dict().into_iter().map(|(_, x)| x.clone()).collect();
    let err = models::load_weights_from_bytes(&mut model, &safetensors_bytes(&entries, Some("resnet50")))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GraphError::Mismatch { .. }), "{err:?}");
    assert!(text.contains("another architecture (resnet50, per its metadata), not resnet18"), "{text}");
    assert!(text.contains("165 unexpected: layer1.0.bn3.bias"), "{text}");
    assert!(
        text.contains("mis-shaped") && text.contains("conv1.weight (file [1], model [64, 3, 7, 7])"),
        "{text}"
    );
    // Without metadata the counts still say so.
    let err = models::load_weights_from_bytes(&mut model, &safetensors_bytes(&entries, None)).unwrap_err();
    assert!(
        err.to_string().contains("look like weights of another architecture or configuration than resnet18"),
        "{err}"
    );
    // Nothing changed.
    let after: Vec<ArrayD<f32>> = model.state_dict().into_iter().map(|(_, x)| x.clone()).collect();
    assert_eq!(before, after);
}

#[test]
fn weights_for_another_number_of_classes_name_the_classifier() {
    let small = models::mobilenet_v2(10).unwrap();
    let state = models::deterministic_state_dict(small.as_ref()).unwrap();
    let bytes = safetensors_bytes(&state_entries(&state), Some("mobilenet_v2"));
    let mut model = models::mobilenet_v2(1000).unwrap();
    let text = models::load_weights_from_bytes(&mut model, &bytes).unwrap_err().to_string();
    assert!(
        text.contains("do not fit mobilenet_v2")
            && text.contains("2 mis-shaped: classifier.1.weight (file [10, 1280], model [1000, 1280])"),
        "{text}"
    );
}

#[test]
fn truncated_and_missing_files_are_errors() {
    let model = models::resnet18(10).unwrap();
    let entries: Vec<(String, Vec<usize>, Vec<f32>)> = model
        .state_dict()
        .into_iter()
        .take(3)
        .map(|(k, x)| (k, x.shape().to_vec(), vec![0.5; x.len()]))
        .collect();
    let bytes = safetensors_bytes(&entries, Some("resnet18"));
    let mut model = models::resnet18(10).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 20, 4, 0] {
        let err = models::load_weights_from_bytes(&mut model, &bytes[..cut]).unwrap_err();
        assert!(err.to_string().contains("not a safetensors file"), "cut {cut}: {err}");
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("zoo_truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = models::load_weights(&mut model, &path).unwrap_err();
    assert!(matches!(err, GraphError::File { .. }) && err.to_string().contains("zoo_truncated"), "{err}");
    let err = models::load_weights(&mut model, "/nonexistent/zoo.safetensors").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/zoo.safetensors"), "{err}");
    // The valid file with three tensors: everything else is missing.
    let err = models::load_weights_from_bytes(&mut model, &bytes).unwrap_err();
    assert!(err.to_string().contains("missing: bn1.running_mean"), "{err}");
}

#[test]
fn deterministic_weights_match_the_generator() {
    // tools/golden/gen_models.py: entry 0 of resnet18 is conv1.weight = random_f32s(9408, 1) / sqrt(147).
    let model = models::resnet18(1000).unwrap();
    let state = models::deterministic_state_dict(model.as_ref()).unwrap();
    let r = models::random_f32s(9408, 1);
    let s = (1.0 / 147f64.sqrt()) as f32;
    assert_eq!(
        state["conv1.weight"].iter().copied().collect::<Vec<_>>(),
        r.iter().map(|v| v * s).collect::<Vec<_>>()
    );
    assert_eq!(models::random_f32s(3, 1000), qtest::random_f32s(3, 1000));
    assert_eq!(models::random_f32s(1000, 77), qtest::random_f32s(1000, 77));
}
