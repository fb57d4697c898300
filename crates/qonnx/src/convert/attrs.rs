//! Reading node attributes and the errors that name a node.

use crate::error::OnnxError;
use crate::proto::{Attribute, NodeProto};

pub(super) type Res<T> = Result<T, OnnxError>;

pub(super) fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n Attribute> {
    node.attributes.iter().find(|a| a.name == name)
}

pub(super) fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

pub(super) fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}

/// An f32 attribute as the f64 with the same shortest decimal (`0.001`, not
/// `0.0010000000474974513`), as PyTorch's Python float was before export.
pub(super) fn attr_f64(node: &NodeProto, name: &str, default: f32) -> f64 {
    attr_f(node, name, default).to_string().parse().expect("an f32 prints as a number")
}

pub(super) fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

pub(super) fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
}

pub(super) fn node_err(node: &NodeProto, reason: impl Into<String>, fix: impl Into<String>) -> OnnxError {
    OnnxError::Node {
        node: node.name.clone(),
        op_type: node.op_type.clone(),
        reason: reason.into(),
        fix: fix.into(),
    }
}

pub(super) fn sizes(node: &NodeProto, what: &str, v: &[i64]) -> Res<Vec<usize>> {
    v.iter()
        .map(|&x| {
            usize::try_from(x).ok().filter(|&x| x <= qgraph::nn::MAX_SIZE).ok_or_else(|| {
                node_err(node, format!("{what} {v:?} has an entry out of range"), "check the model")
            })
        })
        .collect()
}

/// Symmetric padding from ONNX's `[begin..., end...]`.
pub(super) fn symmetric(node: &NodeProto, pads: Option<Vec<i64>>, dims: usize) -> Res<Vec<usize>> {
    let pads = pads.unwrap_or_else(|| vec![0; 2 * dims]);
    if pads.len() != 2 * dims {
        return Err(node_err(
            node,
            format!("pads {pads:?} for {dims} spatial dimensions"),
            "check the model",
        ));
    }
    if pads[..dims] != pads[dims..] {
        return Err(node_err(
            node,
            format!("asymmetric pads {pads:?}"),
            "PyTorch layers pad both sides alike; add an explicit Pad before the layer",
        ));
    }
    sizes(node, "pads", &pads[..dims])
}

pub(super) fn no_auto_pad(node: &NodeProto) -> Res<()> {
    match attr_s(node, "auto_pad").as_deref() {
        None | Some("NOTSET") => Ok(()),
        Some("VALID") if attr_ints(node, "pads").is_none() => Ok(()),
        Some(other) => Err(node_err(
            node,
            format!("auto_pad={other}"),
            "export with explicit pads (as torch.onnx.export does)",
        )),
    }
}
