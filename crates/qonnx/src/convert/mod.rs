//! ONNX nodes to [`Item`]s: one qgraph module (or `FloatFunctional` op) per operator, constant
//! folding of everything known at import time, and stubs where values change between int8 and
//! float.

mod attrs;
mod constants;
mod elementwise;
mod layers;
mod layout;
mod recurrent;

use std::collections::HashMap;

use ndarray::ArrayD;
use qgraph::nn::{
    AdaptiveAvgPool2d, ELU, Flatten, Hardsigmoid, Hardswish, LeakyReLU, ReLU, RnnOptions, Sigmoid, Tanh,
};
use qgraph::{DeQuantStub, Module, QuantStub};

use self::attrs::*;
use crate::error::OnnxError;
use crate::items::{Item, Kind, Layout, Role, Val};
use crate::proto::NodeProto;
use crate::scope;
use crate::tensor::Tensor;

/// The operators the importer maps (besides constant folding of the shape operators).
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Elu",
    "Expand",
    "Flatten",
    "GRU",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LSTM",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// The import state: values by name, the items made so far, and who reads what.
pub(crate) struct Converter<'a> {
    pub vals: HashMap<String, Val>,
    pub items: Vec<Item>,
    nodes: &'a [NodeProto],
    /// For each value name, the indices of the nodes reading it.
    readers: HashMap<&'a str, Vec<usize>>,
    /// For each value name, the index of the node writing it.
    producers: HashMap<&'a str, usize>,
    /// Nodes folded into an earlier one (their output is that one's): node index -> value id.
    absorbed: HashMap<usize, String>,
    /// The opset of the default domain.
    opset: i64,
    /// A `QuantStub` already made for a float value (value id -> quantized value id).
    quantized: HashMap<String, String>,
    /// Graph output names (read even when no node reads them).
    outputs: Vec<String>,
    fresh: usize,
    /// Recurrent layers made so far, by the index of their item: stacked onto when the next
    /// recurrent node reads only their output.
    recurrent: HashMap<usize, Stack>,
    /// Ranks the exporter recorded (`value_info`, outputs), by value name.
    ranks: HashMap<String, usize>,
}

/// A recurrent module being built: one ONNX node per layer.
struct Stack {
    lstm: bool,
    options: RnnOptions,
    tensors: Vec<(String, ArrayD<f32>)>,
    /// The node of its last layer.
    last_node: usize,
    /// Its output (the tuple element read by the next layer).
    output: String,
}

impl<'a> Converter<'a> {
    pub(crate) fn new(
        nodes: &'a [NodeProto],
        opset: i64,
        outputs: Vec<String>,
        ranks: HashMap<String, usize>,
    ) -> Self {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut producers: HashMap<&str, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for input in &n.inputs {
                readers.entry(input.as_str()).or_default().push(i);
            }
            for output in &n.outputs {
                producers.entry(output.as_str()).or_insert(i);
            }
        }
        Self {
            vals: HashMap::new(),
            items: Vec::new(),
            nodes,
            readers,
            producers,
            absorbed: HashMap::new(),
            opset,
            quantized: HashMap::new(),
            outputs,
            fresh: 0,
            recurrent: HashMap::new(),
            ranks,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.fresh += 1;
        format!("{hint}#{}", self.fresh)
    }

    /// The input `k` of `node`, `None` if omitted.
    fn input(&self, node: &NodeProto, k: usize) -> Res<Option<&Val>> {
        match node.inputs.get(k).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => self
                .vals
                .get(name)
                .map(Some)
                .ok_or_else(|| OnnxError::Undefined { value: name.to_string(), node: node.name.clone() }),
        }
    }

    fn constant(&self, node: &NodeProto, k: usize, what: &str) -> Res<Option<Tensor>> {
        match self.input(node, k)? {
            None => Ok(None),
            Some(Val::Const(t)) => Ok(Some(t.clone())),
            Some(Val::Dims(d)) => d.to_tensor().map(Some).ok_or_else(|| {
                node_err(node, format!("{what} depends on the input's shape"), "export with static sizes")
            }),
            Some(_) => Err(node_err(
                node,
                format!("{what} (input {k}) is computed by the graph, not a constant"),
                "export with constant weights and sizes (do_constant_folding=True)",
            )),
        }
    }

    fn ints_input(&self, node: &NodeProto, k: usize, what: &str) -> Res<Option<Vec<i64>>> {
        match self.constant(node, k, what)? {
            None => Ok(None),
            Some(Tensor::I64(a)) => Ok(Some(a.iter().copied().collect())),
            Some(_) => Err(node_err(node, format!("{what} is not an integer tensor"), "check the model")),
        }
    }

    /// The graph value read as input `k`: its id, rank and layout; quantized (through a stub) if
    /// `quant` and it is a float region's value.
    fn value(&mut self, node: &NodeProto, k: usize) -> Res<(String, Option<usize>, Layout, bool)> {
        match self.input(node, k)? {
            Some(Val::Node { id, rank, layout, float }) => Ok((id.clone(), *rank, *layout, *float)),
            Some(_) => Err(node_err(
                node,
                format!("input {k} is a constant where the importer expects a computed value"),
                "fold constant subgraphs before import",
            )),
            None => Err(node_err(node, format!("input {k} is missing"), "check the model")),
        }
    }

    /// A plain (not recurrent-layout) value for an operator that runs int8 after conversion.
    fn quant_value(&mut self, node: &NodeProto, k: usize, consumer: usize) -> Res<(String, Option<usize>)> {
        let (id, rank, layout, float) = self.value(node, k)?;
        if layout != Layout::Plain {
            return Err(node_err(
                node,
                "reads a recurrent layer's output in ONNX's [seq, dirs, batch, hidden] layout",
                "use the output as torch.onnx.export writes it (Transpose + Reshape, or Squeeze)",
            ));
        }
        if !float {
            return Ok((id, rank));
        }
        if let Some(q) = self.quantized.get(&id) {
            return Ok((q.clone(), rank));
        }
        let out = self.fresh("quant");
        let scope = self.scope_of(node);
        self.items.push(Item {
            scope,
            base: "quant".into(),
            role: Role::Stub { next_to: consumer },
            kind: Kind::Module(Box::new(QuantStub::new())),
            inputs: vec![id.clone()],
            output: out.clone(),
            node: node.name.clone(),
        });
        self.quantized.insert(id, out.clone());
        Ok((out, rank))
    }

    fn scope_of(&self, node: &NodeProto) -> Vec<String> {
        scope::of_node(node)
    }

    fn set(&mut self, name: &str, mut val: Val) {
        if let Val::Node { rank: rank @ None, .. } = &mut val {
            *rank = self.ranks.get(name).copied();
        }
        self.vals.insert(name.to_string(), val);
    }

    fn out(node: &NodeProto) -> &str {
        node.outputs.first().map(String::as_str).unwrap_or("")
    }

    /// Adds an item computing `kind` from `inputs` for `node`'s output `k`.
    fn push(
        &mut self,
        node: &NodeProto,
        base: &str,
        kind: Kind,
        inputs: Vec<String>,
        rank: Option<usize>,
    ) -> String {
        let output = node.outputs.first().cloned().unwrap_or_else(|| self.fresh(base));
        let scope = self.scope_of(node);
        self.items.push(Item {
            scope,
            base: base.to_string(),
            role: Role::Op,
            kind,
            inputs,
            output: output.clone(),
            node: node.name.clone(),
        });
        self.set(&output, Val::Node { id: output.clone(), rank, layout: Layout::Plain, float: false });
        output
    }

    /// A one-input int8-capable module on input 0.
    fn unary(&mut self, node: &NodeProto, base: &str, module: impl Module) -> Res<()> {
        let consumer = self.items.len() + 1;
        let (x, rank) = self.quant_value(node, 0, consumer)?;
        self.push(node, base, Kind::Module(Box::new(module)), vec![x], rank);
        Ok(())
    }

    /// The single node reading `value`, if exactly one does and it is not a graph output.
    fn sole_reader(&self, value: &str) -> Option<usize> {
        if self.outputs.iter().any(|o| o == value) {
            return None;
        }
        match self.readers.get(value).map(Vec::as_slice) {
            Some(&[j]) => Some(j),
            _ => None,
        }
    }

    pub(crate) fn convert(&mut self, index: usize) -> Res<()> {
        let node = &self.nodes[index];
        if let Some(id) = self.absorbed.get(&index).cloned() {
            let v = self.vals.get(&id).cloned().expect("absorbed into a defined value");
            self.set(Self::out(node), v);
            return Ok(());
        }
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(self.unsupported(node));
        }
        if self.try_fold(node)? {
            return Ok(());
        }
        match node.op_type.as_str() {
            "Conv" => self.conv(node),
            "ConvTranspose" => self.conv_transpose(node),
            "BatchNormalization" => self.batch_norm(node),
            "Relu" => self.unary(node, "relu", ReLU::new()),
            "Clip" => self.clip(node),
            "LeakyRelu" => self.unary(node, "leaky_relu", LeakyReLU::new(attr_f64(node, "alpha", 0.01))),
            "HardSwish" => self.unary(node, "hardswish", Hardswish::new()),
            "HardSigmoid" => {
                let (a, b) = (attr_f(node, "alpha", 0.2), attr_f(node, "beta", 0.5));
                if (a - 1.0 / 6.0).abs() > 1e-6 || (b - 0.5).abs() > 1e-6 {
                    return Err(node_err(
                        node,
                        format!("alpha={a}, beta={b}"),
                        "only PyTorch's Hardsigmoid (alpha=1/6, beta=0.5) maps to a module",
                    ));
                }
                self.unary(node, "hardsigmoid", Hardsigmoid::new())
            }
            "Sigmoid" => self.unary(node, "sigmoid", Sigmoid::new()),
            "Tanh" => self.unary(node, "tanh", Tanh::new()),
            "Elu" => self.unary(node, "elu", ELU::new(attr_f64(node, "alpha", 1.0))),
            "Add" | "Sub" | "Mul" | "Div" => self.arithmetic(index),
            "Concat" => self.concat(node),
            "MaxPool" => self.max_pool(node),
            "AveragePool" => self.avg_pool(node),
            "GlobalAveragePool" => self.unary(node, "avgpool", AdaptiveAvgPool2d::new([1, 1])),
            "ReduceMean" => self.reduce_mean(node),
            "Flatten" => {
                if attr_i(node, "axis", 1) != 1 {
                    return Err(node_err(
                        node,
                        "axis other than 1",
                        "flatten from dimension 1 (torch.flatten(x, 1))",
                    ));
                }
                let consumer = self.items.len() + 1;
                let (x, _) = self.quant_value(node, 0, consumer)?;
                self.push(node, "flatten", Kind::Module(Box::new(Flatten::new(1, -1))), vec![x], Some(2));
                Ok(())
            }
            "Reshape" => self.reshape(node),
            "Transpose" => self.transpose(node),
            "Squeeze" | "Unsqueeze" => self.squeeze(node),
            "Slice" => self.slice(node),
            "Split" => self.split(node),
            "Gather" => self.gather(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(index),
            "LSTM" | "GRU" => self.recurrent(node),
            "Softmax" | "LogSoftmax" => self.softmax(node),
            "Resize" => self.resize(node),
            "Pad" => self.pad(node),
            "Identity" | "Dropout" | "Cast" | "CastLike" => {
                if node.op_type.starts_with("Cast")
                    && let Some(Val::Node { .. }) = self.input(node, 0)?
                {
                    let to = attr_i(node, "to", 1);
                    if node.op_type == "Cast" && to != 1 {
                        return Err(node_err(
                            node,
                            format!("cast of a computed value to type {to}"),
                            "only casts to float are supported",
                        ));
                    }
                }
                let v = self
                    .input(node, 0)?
                    .cloned()
                    .ok_or_else(|| node_err(node, "no input", "check the model"))?;
                self.set(Self::out(node), v);
                Ok(())
            }
            _ => Err(self.unsupported(node)),
        }
    }

    fn unsupported(&self, node: &NodeProto) -> OnnxError {
        OnnxError::UnsupportedOp {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            domain: node.domain.clone(),
            supported: SUPPORTED.join(", "),
        }
    }

    /// A layout module on input 0, keeping the input's float / int8 region.
    fn layout_op(
        &mut self,
        node: &NodeProto,
        base: &str,
        module: Box<dyn Module>,
        rank: Option<usize>,
    ) -> Res<()> {
        let (id, _, layout, float) = self.value(node, 0)?;
        if layout != Layout::Plain {
            return Err(node_err(
                node,
                "reads a recurrent layer's output in ONNX's layout",
                "use the output as torch.onnx.export writes it (Transpose + Reshape, or Squeeze)",
            ));
        }
        let out = self.push(node, base, Kind::Module(module), vec![id], rank);
        self.set(&out, Val::Node { id: out.clone(), rank, layout: Layout::Plain, float });
        Ok(())
    }

    /// A float-only module on input 0: a `DeQuantStub` before it unless its input is float.
    fn float_op(
        &mut self,
        node: &NodeProto,
        base: &str,
        module: Box<dyn Module>,
        rank: Option<usize>,
    ) -> Res<String> {
        let (id, _, layout, float) = self.value(node, 0)?;
        if layout != Layout::Plain {
            return Err(node_err(
                node,
                "reads a recurrent layer's output in ONNX's layout",
                "use the output as torch.onnx.export writes it",
            ));
        }
        let input = if float {
            id
        } else {
            let out = self.fresh("dequant");
            let consumer = self.items.len() + 1;
            self.items.push(Item {
                scope: self.scope_of(node),
                base: "dequant".into(),
                role: Role::Stub { next_to: consumer },
                kind: Kind::Module(Box::new(DeQuantStub::new())),
                inputs: vec![id],
                output: out.clone(),
                node: node.name.clone(),
            });
            out
        };
        let out = self.push(node, base, Kind::Module(module), vec![input], rank);
        self.set(&out, Val::Node { id: out.clone(), rank, layout: Layout::Plain, float: true });
        Ok(out)
    }
}
