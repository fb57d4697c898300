//! Bad input is a clear error, never a panic: unsupported operators, truncated files, garbage,
//! inputs of the wrong rank. Small graphs are encoded here in protobuf wire format.

use ndarray::{ArrayD, IxDyn};
use qgraph::Value;
use qonnx::OnnxError;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, number << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn int_field(out: &mut Vec<u8>, number: u64, v: u64) {
    varint(out, number << 3);
    varint(out, v);
}

/// `ValueInfoProto` of a float tensor of the given shape.
fn value_info(name: &str, shape: &[u64]) -> Vec<u8> {
    let mut dims = Vec::new();
    for &d in shape {
        let mut dim = Vec::new();
        int_field(&mut dim, 1, d);
        field(&mut dims, 1, &dim);
    }
    let mut tensor = Vec::new();
    int_field(&mut tensor, 1, 1);
    field(&mut tensor, 2, &dims);
    let mut ty = Vec::new();
    field(&mut ty, 1, &tensor);
    let mut v = Vec::new();
    field(&mut v, 1, name.as_bytes());
    field(&mut v, 2, &ty);
    v
}

/// A model of one node `op_type` from `x` to `y`, opset 17.
fn one_node_model(op_type: &str, name: &str) -> Vec<u8> {
    one_node_model_with(op_type, name, &[])
}

/// An `AttributeProto` holding `ints`.
fn ints_attribute(name: &str, ints: &[u64]) -> Vec<u8> {
    let mut a = Vec::new();
    field(&mut a, 1, name.as_bytes());
    for &v in ints {
        int_field(&mut a, 8, v);
    }
    a
}

/// [`one_node_model`] with the given encoded attributes.
fn one_node_model_with(op_type: &str, name: &str, attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut node = Vec::new();
    for a in attributes {
        field(&mut node, 5, a);
    }
    field(&mut node, 1, b"x");
    field(&mut node, 2, b"y");
    field(&mut node, 3, name.as_bytes());
    field(&mut node, 4, op_type.as_bytes());
    let mut graph = Vec::new();
    field(&mut graph, 1, &node);
    field(&mut graph, 2, b"g");
    field(&mut graph, 11, &value_info("x", &[1, 2, 3, 3]));
    field(&mut graph, 12, &value_info("y", &[1, 2, 3, 3]));
    let mut opset = Vec::new();
    int_field(&mut opset, 2, 17);
    let mut model = Vec::new();
    int_field(&mut model, 1, 8);
    field(&mut model, 7, &graph);
    field(&mut model, 8, &opset);
    model
}

#[test]
fn a_supported_single_node_imports_and_runs() {
    let imported = qonnx::import_bytes(&one_node_model("Relu", "/act/Relu")).expect("import");
    assert_eq!(imported.inputs[0].shape, vec![Some(1), Some(2), Some(3), Some(3)]);
    assert!(imported.model.get("act").is_ok(), "{}", imported.model);
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 2, 3, 3]), (0..18).map(|v| v as f32 - 9.0).collect()).unwrap();
    let y = imported.model.forward(Value::from(x.clone())).unwrap().into_float("test").unwrap();
    assert_eq!(y, x.mapv(|v| v.max(0.0)));
}

#[test]
fn an_unsupported_operator_names_node_type_and_supported_list() {
    let err = qonnx::import_bytes(&one_node_model("Einsum", "/head/Einsum")).unwrap_err();
    assert!(matches!(err, OnnxError::UnsupportedOp { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/head/Einsum") && msg.contains("\"Einsum\""), "{msg}");
    assert!(msg.contains("Conv") && msg.contains("LSTM") && msg.contains("Resize"), "{msg}");
}

#[test]
fn truncated_files_are_errors() {
    let bytes = std::fs::read(format!("{DIR}/resnet18.onnx")).unwrap();
    for len in [0, 1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = qonnx::import_bytes(&bytes[..len]).expect_err("truncated");
        assert!(matches!(err, OnnxError::Malformed { .. }), "{len}: {err:?}");
    }
}

#[test]
fn garbage_is_an_error() {
    let mut state = 12345u64;
    for len in [1usize, 16, 1000, 100_000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(qonnx::import_bytes(&bytes).is_err(), "{len} random bytes imported");
    }
    let err = qonnx::import_file(format!("{DIR}/no-such-model.onnx")).unwrap_err();
    assert!(matches!(err, OnnxError::Io { .. }), "{err:?}");
}

#[test]
fn an_input_of_the_wrong_rank_is_an_error() {
    let imported = qonnx::import_file(format!("{DIR}/resnet18.onnx")).unwrap();
    let x = ArrayD::<f32>::zeros(IxDyn(&[3, 32, 32]));
    let err = imported.model.forward(Value::from(x)).expect_err("rank 3");
    assert!(!err.to_string().is_empty());
}

#[test]
fn attributes_of_the_wrong_length_are_errors() {
    // Found by the import_onnx fuzz target: an empty `dilations` on a 2-d max pool.
    let kernel = ints_attribute("kernel_shape", &[2, 2]);
    let model =
        one_node_model_with("MaxPool", "/pool/MaxPool", &[kernel.clone(), ints_attribute("dilations", &[])]);
    let err = qonnx::import_bytes(&model).expect_err("empty dilations");
    assert!(matches!(err, OnnxError::Node { .. }), "{err:?}");
    let model =
        one_node_model_with("MaxPool", "/pool/MaxPool", &[kernel.clone(), ints_attribute("strides", &[1])]);
    assert!(qonnx::import_bytes(&model).is_err(), "one stride for two axes");
    let model = one_node_model_with("MaxPool", "/pool/MaxPool", &[kernel, ints_attribute("pads", &[1, 1])]);
    assert!(qonnx::import_bytes(&model).is_err(), "two pads for two axes");
    let ok = one_node_model_with("MaxPool", "/pool/MaxPool", &[ints_attribute("kernel_shape", &[2, 2])]);
    let imported = qonnx::import_bytes(&ok).expect("a 2x2 max pool");
    assert!(imported.model.get("pool").is_ok());
}
