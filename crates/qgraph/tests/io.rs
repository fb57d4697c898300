//! Save / load: float and quantized models round-trip to bit-identical outputs; bad files are
//! errors, never panics.

use qgraph::io::{self, FORMAT_VERSION};
use qgraph::qconfig::get_default_qconfig;
use qgraph::{GraphError, Module, QConfigMapping, Value, eval, prepare};

mod common;
use common::{random, resnet_model, small_resnet, small_resnet_int8};

fn outputs(model: &dyn Module) -> ndarray::ArrayD<f32> {
    model.forward(Value::from(random(&[2, 3, 16, 16], 99))).unwrap().into_float_lossy().unwrap()
}

fn assert_round_trip(model: &dyn Module) {
    let bytes = io::to_bytes(model).unwrap();
    let loaded = io::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.to_string(), model.to_string());
    let (a, b) = (outputs(model), outputs(loaded.as_ref()));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "outputs differ after loading");
    // Saving the loaded model gives the same file.
    assert_eq!(io::to_bytes(loaded.as_ref()).unwrap(), bytes);
}

#[test]
fn float_model_round_trips_bit_identically() {
    assert_round_trip(small_resnet().as_ref());
}

#[test]
fn quantized_model_round_trips_bit_identically_through_a_file() {
    let model = small_resnet_int8();
    let path = std::env::temp_dir().join(format!("qgraph-io-{}.safetensors", std::process::id()));
    io::save(model.as_ref(), &path).unwrap();
    let loaded = io::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(outputs(model.as_ref()), outputs(loaded.as_ref()));
    assert_round_trip(model.as_ref());
}

#[test]
fn int8_file_is_about_a_quarter_of_the_float_file() {
    let float = io::to_bytes(small_resnet().as_ref()).unwrap().len() as f64;
    let int8 = io::to_bytes(small_resnet_int8().as_ref()).unwrap().len() as f64;
    // A tiny model: the header and per-channel scales weigh more than in a real one.
    assert!(int8 < 0.6 * float, "int8 {int8} bytes vs float {float}");
}

#[test]
fn float_file_is_a_state_dict() {
    let model = small_resnet();
    let entries = io::state_dict_from_bytes(&io::to_bytes(model.as_ref()).unwrap()).unwrap();
    let mut other = resnet_model().unwrap();
    qgraph::load_state_dict(&mut other, entries).unwrap();
    eval(&mut other);
    assert_eq!(outputs(model.as_ref()), outputs(other.as_ref()));
}

#[test]
fn prepared_models_round_trip_with_their_observers() {
    let mut model = small_resnet();
    prepare(&mut model, &QConfigMapping::global(get_default_qconfig("x86").unwrap())).unwrap();
    outputs(model.as_ref());
    let loaded = io::from_bytes(&io::to_bytes(model.as_ref()).unwrap()).unwrap();
    assert_eq!(loaded.to_string(), model.to_string());
    // Both observe one more batch: their outputs and their saved statistics stay equal.
    assert_eq!(outputs(model.as_ref()), outputs(loaded.as_ref()));
    assert_eq!(io::to_bytes(loaded.as_ref()).unwrap(), io::to_bytes(model.as_ref()).unwrap());
}

/// What is wrong with a file that does not load: the reason of a file error, or the typed error
/// under a load error.
fn error_of(bytes: &[u8]) -> String {
    match io::from_bytes(bytes) {
        Err(GraphError::File { reason, .. }) => reason,
        Err(GraphError::Load { file, source }) => {
            assert_eq!(file, "<bytes>");
            source.to_string()
        }
        Err(other) => panic!("expected a file or load error, got {other}"),
        Ok(_) => panic!("loaded a bad file"),
    }
}

/// A model file's metadata JSON (the `qgraph` entry).
fn header_of(bytes: &[u8]) -> serde_json::Value {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_str(header["__metadata__"]["qgraph"].as_str().unwrap()).unwrap()
}

/// Replaces a model file's metadata: entry `key` with `value`.
fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"] = serde_json::json!({ key: value });
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&bytes[8 + n..]);
    out
}

/// Replaces a model file's `qgraph` metadata by `edit` applied to it.
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut header = header_of(bytes);
    edit(&mut header);
    with_metadata(bytes, "qgraph", &header.to_string())
}

#[test]
fn truncated_corrupt_and_foreign_files_are_errors() {
    let bytes = io::to_bytes(small_resnet_int8().as_ref()).unwrap();
    assert!(error_of(&bytes[..bytes.len() / 2]).contains("not a safetensors file"));
    assert!(error_of(&bytes[..4]).contains("not a safetensors file"));
    assert!(error_of(b"").contains("not a safetensors file"));
    let mut flipped = bytes.clone();
    flipped[20] ^= 0xff;
    io::from_bytes(&flipped).unwrap_err();
    assert!(
        error_of(&with_header(&bytes, |h| h["format_version"] = 99.into())).contains("format version 99")
    );
    assert!(error_of(&with_metadata(&bytes, "other", "{}")).contains("not a qgraph model file"));
    assert!(error_of(&with_metadata(&bytes, "qgraph", "{")).contains("not valid JSON"));
    assert!(error_of(&with_header(&bytes, |h| h["model"] = 3.into())).contains("module tree is not valid"));
    let unknown = with_header(&bytes, |h| h["model"] = serde_json::json!({"type": "Conv9d"}));
    assert!(error_of(&unknown).contains("unknown module type \"Conv9d\""), "{}", error_of(&unknown));
    let err = io::from_bytes(&unknown).unwrap_err();
    assert!(
        matches!(err.root_cause(), GraphError::UnknownModuleType { name, .. } if name == "Conv9d"),
        "{err:?}"
    );
}

#[test]
fn a_tree_naming_missing_tensors_is_an_error() {
    let bytes = io::to_bytes(small_resnet().as_ref()).unwrap();
    let renamed = header_of(&bytes).to_string().replace("\"weight\"", "\"weights\"");
    let reason = error_of(&with_metadata(&bytes, "qgraph", &renamed));
    assert!(reason.contains("is listed but not in the file"), "{reason}");
}

#[test]
fn the_format_version_is_recorded() {
    let bytes = io::to_bytes(small_resnet().as_ref()).unwrap();
    assert_eq!(header_of(&bytes)["format_version"], FORMAT_VERSION);
}

#[test]
fn recorded_inputs_round_trip_and_leave_the_model_unchanged() {
    let model = small_resnet();
    let inputs = [io::TensorInfo { name: "image".into(), shape: vec![None, Some(3), Some(16), Some(16)] }];
    let bytes = io::to_bytes_with_inputs(model.as_ref(), &inputs).unwrap();
    assert_eq!(io::inputs_from_bytes(&bytes).unwrap(), inputs);
    let loaded = io::from_bytes(&bytes).unwrap();
    assert_eq!(outputs(model.as_ref()), outputs(loaded.as_ref()));
    // Without inputs the file is the plain one, and records none.
    let plain = io::to_bytes_with_inputs(model.as_ref(), &[]).unwrap();
    assert_eq!(plain, io::to_bytes(model.as_ref()).unwrap());
    assert!(io::inputs_from_bytes(&plain).unwrap().is_empty());
    // From a file, reading the header only.
    let path = std::env::temp_dir().join(format!("qgraph-io-inputs-{}.safetensors", std::process::id()));
    io::save_with_inputs(model.as_ref(), &inputs, &path).unwrap();
    let read = io::load_inputs(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(read.unwrap(), inputs);
}

#[test]
fn recorded_inputs_of_a_bad_file_are_an_error() {
    assert!(io::inputs_from_bytes(b"not a model").is_err());
    let missing = std::env::temp_dir().join("qgraph-io-no-such-file.safetensors");
    let err = io::load_inputs(&missing).unwrap_err().to_string();
    assert!(err.contains("qgraph-io-no-such-file"), "{err}");
}
