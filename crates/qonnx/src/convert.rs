//! ONNX nodes to [`Item`]s: one qgraph module (or `FloatFunctional` op) per operator, constant
//! folding of everything known at import time, and stubs where values change between int8 and
//! float.

use std::collections::HashMap;

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv, ConvOptions, ELU, Flatten,
    GRU, Hardsigmoid, Hardswish, Hardtanh, LSTM, LeakyReLU, Linear, MaxPool1d, MaxPool2d, ReLU, ReLU6,
    RnnOptions, Sigmoid, Softmax, Tanh, Upsample, UpsampleMode,
};
use qgraph::qkernels::conv::PaddingMode;
use qgraph::{DeQuantStub, Functional, Module, QuantStub};

use crate::error::OnnxError;
use crate::fold::{self, Dim, Dims};
use crate::items::{Item, Kind, Layout, Role, Val};
use crate::modules::{
    ConvTranspose2d, ConvTransposeOptions, Gather, LogSoftmax, Pad, Reshape, Slice, Squeeze, Transpose,
    Unsqueeze,
};
use crate::proto::{Attribute, NodeProto};
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

type Res<T> = Result<T, OnnxError>;

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n Attribute> {
    node.attributes.iter().find(|a| a.name == name)
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}

/// An f32 attribute as the f64 with the same shortest decimal (`0.001`, not
/// `0.0010000000474974513`), as PyTorch's Python float was before export.
fn attr_f64(node: &NodeProto, name: &str, default: f32) -> f64 {
    attr_f(node, name, default).to_string().parse().expect("an f32 prints as a number")
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
}

fn node_err(node: &NodeProto, reason: impl Into<String>, fix: impl Into<String>) -> OnnxError {
    OnnxError::Node {
        node: node.name.clone(),
        op_type: node.op_type.clone(),
        reason: reason.into(),
        fix: fix.into(),
    }
}

fn sizes(node: &NodeProto, what: &str, v: &[i64]) -> Res<Vec<usize>> {
    v.iter()
        .map(|&x| {
            usize::try_from(x).ok().filter(|&x| x <= qgraph::nn::MAX_SIZE).ok_or_else(|| {
                node_err(node, format!("{what} {v:?} has an entry out of range"), "check the model")
            })
        })
        .collect()
}

/// Symmetric padding from ONNX's `[begin..., end...]`.
fn symmetric(node: &NodeProto, pads: Option<Vec<i64>>, dims: usize) -> Res<Vec<usize>> {
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

fn no_auto_pad(node: &NodeProto) -> Res<()> {
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

impl<'a> Converter<'a> {
    pub(crate) fn new(
        nodes: &'a [NodeProto],
        opset: i64,
        outputs: Vec<String>,
        ranks: HashMap<String, usize>,
    ) -> Self {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for input in &n.inputs {
                readers.entry(input.as_str()).or_default().push(i);
            }
        }
        Self {
            vals: HashMap::new(),
            items: Vec::new(),
            nodes,
            readers,
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

    /// The recurrent stack `node` continues, if its input is, through the layout ops exporters
    /// write between layers, the output of the stack's last layer and read by nothing else, and
    /// the layers agree (kind, hidden size, directions, scope).
    fn stack_below(
        &mut self,
        node: &NodeProto,
        lstm: bool,
        options: &RnnOptions,
    ) -> Option<(usize, &mut Stack)> {
        let mut value = node.inputs.first()?.as_str();
        let mut reader = node;
        let producer = |v: &str| self.nodes.iter().position(|n| n.outputs.iter().any(|o| o == v));
        let found = loop {
            // Besides the chain, only shape queries may read the value.
            let readers = self.readers.get(value)?;
            let chain = readers.iter().filter(|&&r| std::ptr::eq(&self.nodes[r], reader)).count();
            let shapes = readers.iter().filter(|&&r| self.nodes[r].op_type == "Shape").count();
            if chain != 1 || chain + shapes != readers.len() || self.outputs.iter().any(|o| o == value) {
                return None;
            }
            let p = producer(value)?;
            match self.nodes[p].op_type.as_str() {
                "LSTM" | "GRU" => break p,
                "Transpose" | "Reshape" | "Squeeze" => {
                    reader = &self.nodes[p];
                    value = reader.inputs.first()?.as_str();
                }
                _ => return None,
            }
        };
        let scope = self.scope_of(node);
        let (&item, stack) = self.recurrent.iter_mut().find(|(_, s)| s.last_node == found)?;
        let same = stack.lstm == lstm
            && stack.options.hidden_size == options.hidden_size
            && stack.options.bidirectional == options.bidirectional
            && options.input_size == options.hidden_size * options.num_directions()
            && self.items[item].scope == scope;
        same.then_some((item, stack))
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
                if node.op_type.starts_with("Cast") {
                    if let Some(Val::Node { .. }) = self.input(node, 0)? {
                        let to = attr_i(node, "to", 1);
                        if node.op_type == "Cast" && to != 1 {
                            return Err(node_err(
                                node,
                                format!("cast of a computed value to type {to}"),
                                "only casts to float are supported",
                            ));
                        }
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

    /// Folds `node` if its inputs are known at import time; true if it did.
    fn try_fold(&mut self, node: &NodeProto) -> Res<bool> {
        let op = node.op_type.as_str();
        if op == "Constant" {
            let a = node.attributes.first().ok_or_else(|| node_err(node, "no value", "check the model"))?;
            let t = match a.name.as_str() {
                "value" => a.t.as_ref().map(|t| crate::tensor::decode(t, None)).transpose()?,
                "value_float" => a.f.map(|f| Tensor::F32(ArrayD::from_elem(IxDyn(&[]), f))),
                "value_floats" => Some(Tensor::F32(
                    ArrayD::from_shape_vec(IxDyn(&[a.floats.len()]), a.floats.clone()).expect("len"),
                )),
                "value_int" => a.i.map(|i| Tensor::I64(ArrayD::from_elem(IxDyn(&[]), i))),
                "value_ints" => Some(Tensor::I64(
                    ArrayD::from_shape_vec(IxDyn(&[a.ints.len()]), a.ints.clone()).expect("len"),
                )),
                _ => None,
            };
            let t = t.ok_or_else(|| {
                node_err(node, format!("attribute {:?}", a.name), "use a tensor, float(s) or int(s) constant")
            })?;
            self.set(Self::out(node), Val::Const(t));
            return Ok(true);
        }
        if op == "Shape" {
            let (id, rank, layout, _) = self.value(node, 0).or_else(|e| match self.input(node, 0) {
                Ok(Some(Val::Const(t))) => Ok((String::new(), Some(t.shape().len()), Layout::Plain, false)),
                _ => Err(e),
            })?;
            let dims = if id.is_empty() {
                let Some(Val::Const(t)) = self.input(node, 0)? else { unreachable!("matched above") };
                t.shape().iter().map(|&d| Dim::Known(d as i64)).collect()
            } else {
                let of = |axis| Dim::Of { value: id.clone(), axis };
                match layout {
                    Layout::Plain => {
                        let rank = rank.ok_or_else(|| {
                            node_err(node, "the rank of its input is unknown", "export with static shapes")
                        })?;
                        (0..rank).map(of).collect()
                    }
                    Layout::RnnY { dirs, hidden } => {
                        vec![of(0), Dim::Known(dirs as i64), of(1), Dim::Known(hidden as i64)]
                    }
                    Layout::RnnYT { dirs, hidden } => {
                        vec![of(0), of(1), Dim::Known(dirs as i64), Dim::Known(hidden as i64)]
                    }
                }
            };
            let dims = Dims { dims, scalar: false };
            let (start, end) = (attr_i(node, "start", 0), attr(node, "end").and_then(|a| a.i));
            let n = dims.dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
            let (s, e) = (clamp(start), clamp(end.unwrap_or(n)));
            let dims = Dims { dims: dims.dims[s..e.max(s)].to_vec(), scalar: false };
            self.set(Self::out(node), Val::Dims(dims));
            return Ok(true);
        }
        // The remaining folds need every present input known.
        let mut known = Vec::new();
        for k in 0..node.inputs.len() {
            match self.input(node, k)? {
                Some(Val::Const(t)) => known.push(Some(Val::Const(t.clone()))),
                Some(Val::Dims(d)) => known.push(Some(Val::Dims(d.clone()))),
                Some(Val::Zeros) => {
                    // Zeros stay zeros through the layout ops (a recurrent layer's initial
                    // states are sliced per layer from one zero tensor).
                    const KEEP: &[&str] = &[
                        "Expand",
                        "Identity",
                        "Cast",
                        "CastLike",
                        "Slice",
                        "Gather",
                        "Squeeze",
                        "Unsqueeze",
                        "Reshape",
                        "Transpose",
                    ];
                    if k == 0 && KEEP.contains(&op) {
                        self.set(Self::out(node), Val::Zeros);
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Some(Val::Node { .. }) => return Ok(false),
                None => known.push(None),
            }
        }
        if known.is_empty() && op != "ConstantOfShape" {
            return Ok(false);
        }
        let as_tensor = |v: &Option<Val>| match v {
            Some(Val::Const(t)) => Some(t.clone()),
            Some(Val::Dims(d)) => d.to_tensor(),
            _ => None,
        };
        let as_dims = |v: &Option<Val>| match v {
            Some(Val::Dims(d)) => Some(d.clone()),
            Some(Val::Const(t)) => Dims::from_tensor(t),
            _ => None,
        };
        let fail = || node_err(node, "its constant inputs cannot be folded", "check the model's shapes");
        let result: Val = match op {
            "Identity" | "Cast" | "CastLike" | "Dropout" => match &known[0] {
                Some(Val::Const(t)) if op == "Cast" && attr_i(node, "to", 1) == 1 => {
                    Val::Const(Tensor::F32(t.to_f32()))
                }
                Some(Val::Const(Tensor::F32(a)))
                    if op == "Cast" && [6, 7].contains(&attr_i(node, "to", 1)) =>
                {
                    Val::Const(Tensor::I64(a.mapv(|v| v as i64)))
                }
                Some(v) => v.clone(),
                None => return Err(fail()),
            },
            "Gather" => {
                let idx = as_tensor(&known[1]).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                let axis = attr_i(node, "axis", 0);
                if let Some(d) = as_dims(&known[0]).filter(|d| !d.scalar && axis == 0) {
                    let n = d.dims.len() as i64;
                    let pick: Option<Vec<Dim>> = idx
                        .iter()
                        .map(|&i| {
                            let j = if i < 0 { i + n } else { i };
                            (0..n).contains(&j).then(|| d.dims[j as usize].clone())
                        })
                        .collect();
                    Val::Dims(Dims { dims: pick.ok_or_else(fail)?, scalar: idx.ndim() == 0 })
                } else {
                    let t = as_tensor(&known[0]).ok_or_else(fail)?;
                    let g = Gather { axis, indices: idx.iter().copied().collect(), scalar: idx.ndim() == 0 };
                    if idx.ndim() > 1 {
                        return Err(fail());
                    }
                    Val::Const(match t {
                        Tensor::F32(a) => {
                            Tensor::F32(crate::modules::gather_const(&g, a).map_err(|_| fail())?)
                        }
                        Tensor::I64(a) => {
                            Tensor::I64(crate::modules::gather_const(&g, a).map_err(|_| fail())?)
                        }
                    })
                }
            }
            "Unsqueeze" | "Squeeze" => {
                let axes = match attr_ints(node, "axes") {
                    Some(a) => a,
                    None => known
                        .get(1)
                        .and_then(as_tensor)
                        .and_then(|t| t.as_i64().map(|a| a.iter().copied().collect()))
                        .unwrap_or_default(),
                };
                match as_dims(&known[0]) {
                    Some(d) if op == "Unsqueeze" && d.scalar && axes == [0] => {
                        Val::Dims(Dims { dims: d.dims, scalar: false })
                    }
                    Some(d)
                        if op == "Squeeze"
                            && !d.scalar
                            && d.dims.len() == 1
                            && (axes.is_empty() || axes == [0] || axes == [-1]) =>
                    {
                        Val::Dims(Dims { dims: d.dims, scalar: true })
                    }
                    _ => {
                        let t = as_tensor(&known[0]).ok_or_else(fail)?;
                        let run = |t: Tensor| -> Option<Tensor> {
                            Some(match t {
                                Tensor::F32(a) => {
                                    Tensor::F32(crate::modules::squeeze_const(op, &axes, a).ok()?)
                                }
                                Tensor::I64(a) => {
                                    Tensor::I64(crate::modules::squeeze_const(op, &axes, a).ok()?)
                                }
                            })
                        };
                        Val::Const(run(t).ok_or_else(fail)?)
                    }
                }
            }
            "Concat" => {
                let axis = attr_i(node, "axis", 0);
                let all_dims: Option<Vec<Dims>> = known.iter().map(as_dims).collect();
                match all_dims {
                    Some(ds) if axis == 0 || axis == -1 => {
                        Val::Dims(Dims { dims: ds.into_iter().flat_map(|d| d.dims).collect(), scalar: false })
                    }
                    _ => {
                        let ts: Option<Vec<Tensor>> = known.iter().map(as_tensor).collect();
                        let ts = ts.ok_or_else(fail)?;
                        Val::Const(fold::concat(&ts.iter().collect::<Vec<_>>(), axis).ok_or_else(fail)?)
                    }
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (as_tensor(&known[0]), known.get(1).and_then(as_tensor));
                match (a, b) {
                    (Some(a), Some(b)) => Val::Const(fold::binary(op, &a, &b).ok_or_else(fail)?),
                    _ => {
                        return Err(node_err(
                            node,
                            "arithmetic on the input's shape",
                            "export with static sizes",
                        ));
                    }
                }
            }
            "Expand" | "ConstantOfShape" => {
                let (value, shape) = if op == "Expand" {
                    (as_tensor(&known[0]), known.get(1).and_then(as_dims))
                } else {
                    let v = attr(node, "value")
                        .and_then(|a| a.t.as_ref())
                        .map(|t| crate::tensor::decode(t, None))
                        .transpose()?;
                    (
                        Some(v.unwrap_or(Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 0.0)))),
                        known.first().and_then(as_dims),
                    )
                };
                let value = value.ok_or_else(fail)?;
                let shape = shape.ok_or_else(fail)?;
                let zero = value.values_f64().iter().all(|&v| v == 0.0);
                match shape.to_tensor().and_then(|s| s.as_i64().cloned()) {
                    Some(s) => {
                        let flat: Vec<i64> = s.iter().copied().collect();
                        let value = if op == "ConstantOfShape" {
                            match value {
                                Tensor::F32(a) => {
                                    Tensor::F32(a.into_shape_with_order(IxDyn(&[])).map_err(|_| fail())?)
                                }
                                Tensor::I64(a) => {
                                    Tensor::I64(a.into_shape_with_order(IxDyn(&[])).map_err(|_| fail())?)
                                }
                            }
                        } else {
                            value
                        };
                        Val::Const(fold::expand(&value, &flat).ok_or_else(fail)?)
                    }
                    None if zero => Val::Zeros,
                    None => {
                        return Err(node_err(
                            node,
                            "a non-zero constant expanded to the input's shape",
                            "export with static sizes",
                        ));
                    }
                }
            }
            "Slice" => {
                let t = as_dims(&known[0]);
                let starts =
                    known.get(1).and_then(as_tensor).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                let ends =
                    known.get(2).and_then(as_tensor).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                match t {
                    Some(d) if !d.scalar && starts.len() == 1 && ends.len() == 1 => {
                        let n = d.dims.len() as i64;
                        let clamp =
                            |v: i64| (if v < 0 { v.saturating_add(n) } else { v }).clamp(0, n) as usize;
                        let (s, e) = (clamp(starts[[0]]), clamp(ends[[0]]));
                        Val::Dims(Dims { dims: d.dims[s..e.max(s)].to_vec(), scalar: false })
                    }
                    _ => {
                        let t = as_tensor(&known[0]).ok_or_else(fail)?;
                        let n = starts.len();
                        let axes = known.get(3).and_then(as_tensor).and_then(|t| t.as_i64().cloned());
                        let steps = known.get(4).and_then(as_tensor).and_then(|t| t.as_i64().cloned());
                        let s = Slice {
                            starts: starts.iter().copied().collect(),
                            ends: ends.iter().copied().collect(),
                            axes: axes
                                .map(|a| a.iter().copied().collect())
                                .unwrap_or_else(|| (0..n as i64).collect()),
                            steps: steps.map(|a| a.iter().copied().collect()).unwrap_or_else(|| vec![1; n]),
                        };
                        Val::Const(match t {
                            Tensor::F32(a) => {
                                Tensor::F32(crate::modules::slice_const(&s, a).map_err(|_| fail())?)
                            }
                            Tensor::I64(a) => {
                                Tensor::I64(crate::modules::slice_const(&s, a).map_err(|_| fail())?)
                            }
                        })
                    }
                }
            }
            "Reshape" => {
                let t = as_tensor(&known[0]).ok_or_else(fail)?;
                let shape =
                    known.get(1).and_then(as_tensor).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                let r = Reshape { shape: shape.iter().copied().collect() };
                Val::Const(match t {
                    Tensor::F32(a) => Tensor::F32(crate::modules::reshape_const(&r, a).map_err(|_| fail())?),
                    Tensor::I64(a) => Tensor::I64(crate::modules::reshape_const(&r, a).map_err(|_| fail())?),
                })
            }
            "Transpose" => {
                let t = as_tensor(&known[0]).ok_or_else(fail)?;
                let rank = t.shape().len();
                let perm = match attr_ints(node, "perm") {
                    Some(p) => sizes(node, "perm", &p)?,
                    None => (0..rank).rev().collect(),
                };
                let tr = Transpose { perm };
                Val::Const(match t {
                    Tensor::F32(a) => {
                        Tensor::F32(crate::modules::transpose_const(&tr, a).map_err(|_| fail())?)
                    }
                    Tensor::I64(a) => {
                        Tensor::I64(crate::modules::transpose_const(&tr, a).map_err(|_| fail())?)
                    }
                })
            }
            _ => return Ok(false),
        };
        self.set(Self::out(node), result);
        Ok(true)
    }

    fn conv(&mut self, node: &NodeProto) -> Res<()> {
        no_auto_pad(node)?;
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?;
        let b = self.constant(node, 2, "the bias")?;
        let w = w.to_f32();
        let dims = w.ndim().saturating_sub(2);
        if !(1..=3).contains(&dims) {
            return Err(node_err(
                node,
                format!("weight of shape {:?}", w.shape()),
                "1-d, 2-d and 3-d convolutions are supported",
            ));
        }
        let groups = sizes(node, "group", &[attr_i(node, "group", 1)])?[0].max(1);
        let kernel = w.shape()[2..].to_vec();
        if let Some(k) = attr_ints(node, "kernel_shape") {
            if sizes(node, "kernel_shape", &k)? != kernel {
                return Err(node_err(node, "kernel_shape differs from the weight's", "check the model"));
            }
        }
        let options = ConvOptions {
            in_channels: w.shape()[1]
                .checked_mul(groups)
                .ok_or_else(|| node_err(node, "too many groups", "check the model"))?,
            out_channels: w.shape()[0],
            kernel_size: kernel,
            stride: sizes(node, "strides", &attr_ints(node, "strides").unwrap_or_else(|| vec![1; dims]))?,
            padding: symmetric(node, attr_ints(node, "pads"), dims)?,
            dilation: sizes(
                node,
                "dilations",
                &attr_ints(node, "dilations").unwrap_or_else(|| vec![1; dims]),
            )?,
            groups,
            bias: b.is_some(),
            padding_mode: PaddingMode::Zeros,
        };
        let mut conv = Conv::with_options(options)?;
        conv.set_weight_bias(w, b.map(|b| b.to_f32()))?;
        self.unary(node, "conv", conv)
    }

    fn conv_transpose(&mut self, node: &NodeProto) -> Res<()> {
        no_auto_pad(node)?;
        if attr(node, "output_shape").is_some() {
            return Err(node_err(
                node,
                "output_shape is given",
                "export with output_padding (as torch.onnx.export does)",
            ));
        }
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?
            .to_f32();
        let b = self.constant(node, 2, "the bias")?.map(|b| b.to_f32());
        if w.ndim() != 4 {
            return Err(node_err(
                node,
                format!("weight of shape {:?}", w.shape()),
                "2-d transposed convolutions are supported",
            ));
        }
        let pair = |name: &str, default: usize| -> Res<[usize; 2]> {
            let v = match attr_ints(node, name) {
                Some(v) => sizes(node, name, &v)?,
                None => vec![default; 2],
            };
            <[usize; 2]>::try_from(v)
                .map_err(|_| node_err(node, format!("{name} has not 2 entries"), "check the model"))
        };
        let groups = sizes(node, "group", &[attr_i(node, "group", 1)])?[0].max(1);
        let padding = symmetric(node, attr_ints(node, "pads"), 2)?;
        let options = ConvTransposeOptions {
            in_channels: w.shape()[0],
            out_channels: w.shape()[1]
                .checked_mul(groups)
                .ok_or_else(|| node_err(node, "too many groups", "check the model"))?,
            kernel_size: [w.shape()[2], w.shape()[3]],
            stride: pair("strides", 1)?,
            padding: [padding[0], padding[1]],
            output_padding: pair("output_padding", 0)?,
            dilation: pair("dilations", 1)?,
            groups,
            bias: b.is_some(),
        };
        let module = ConvTranspose2d::new(options, w, b)?;
        let rank = Some(4);
        self.float_op(node, "conv_transpose", Box::new(module), rank).map(|_| ())
    }

    fn batch_norm(&mut self, node: &NodeProto) -> Res<()> {
        if attr_i(node, "training_mode", 0) != 0 || node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(node_err(node, "training-mode batch norm", "export the model in eval mode"));
        }
        let get = |k, what| -> Res<ArrayD<f32>> {
            Ok(self
                .constant(node, k, what)?
                .ok_or_else(|| node_err(node, format!("no {what}"), "check the model"))?
                .to_f32())
        };
        let (w, b, mean, var) = (get(1, "scale")?, get(2, "bias")?, get(3, "mean")?, get(4, "var")?);
        let n = w.len();
        let rank = match self.input(node, 0)? {
            Some(Val::Node { rank, .. }) => *rank,
            _ => None,
        };
        let eps = attr_f64(node, "epsilon", 1e-5);
        let bn = match rank {
            Some(2 | 3) => BatchNorm1d::new(n),
            Some(5) => BatchNorm3d::new(n),
            _ => BatchNorm2d::new(n),
        };
        let mut bn = bn.eps(eps);
        let flat = |a: ArrayD<f32>| {
            a.into_shape_with_order(IxDyn(&[n]))
                .map_err(|_| node_err(node, "parameters of different lengths", "check the model"))
        };
        bn.set_params(flat(mean)?, flat(var)?, Some((flat(w)?, flat(b)?)))?;
        self.unary(node, "bn", bn)
    }

    fn clip(&mut self, node: &NodeProto) -> Res<()> {
        let bound = |k: usize, name: &str| -> Res<Option<f64>> {
            if self.opset < 11 {
                return Ok(attr(node, name).and_then(|a| a.f).map(f64::from));
            }
            Ok(self.constant(node, k, name)?.and_then(|t| t.values_f64().first().copied()))
        };
        let (lo, hi) = (bound(1, "min")?, bound(2, "max")?);
        match (lo, hi) {
            (Some(l), Some(h)) if l == 0.0 && h == 6.0 => self.unary(node, "relu6", ReLU6::new()),
            (Some(l), None) if l == 0.0 => self.unary(node, "relu", ReLU::new()),
            (l, h) => self.unary(
                node,
                "hardtanh",
                Hardtanh::new(l.unwrap_or(f64::NEG_INFINITY), h.unwrap_or(f64::INFINITY)),
            ),
        }
    }

    fn arithmetic(&mut self, index: usize) -> Res<()> {
        let node = &self.nodes[index];
        let op = node.op_type.as_str();
        let a_const = matches!(self.input(node, 0)?, Some(Val::Const(_)));
        let b_const = matches!(self.input(node, 1)?, Some(Val::Const(_)));
        let consumer = self.items.len() + 1;
        if !a_const && !b_const {
            let functional = match op {
                "Add" => Functional::Add,
                "Mul" => Functional::Mul,
                _ => {
                    return Err(node_err(
                        node,
                        format!("{op} of two computed values"),
                        "FloatFunctional has add and mul only",
                    ));
                }
            };
            let (a, ra) = self.quant_value(node, 0, consumer)?;
            let (b, _) = self.quant_value(node, 1, consumer)?;
            // add followed by its only reader, a ReLU: PyTorch's quantizable models use add_relu.
            let relu = (functional == Functional::Add)
                .then(|| self.sole_reader(Self::out(node)))
                .flatten()
                .filter(|&j| self.nodes[j].op_type == "Relu");
            let (functional, base) = match relu {
                Some(_) => (Functional::AddRelu, "add_relu"),
                None => (functional, if functional == Functional::Add { "add" } else { "mul" }),
            };
            let out = self.push(node, base, Kind::Functional(functional), vec![a, b], ra);
            if let Some(j) = relu {
                self.absorbed.insert(j, out);
            }
            return Ok(());
        }
        let (k, c) = if b_const { (0, 1) } else { (1, 0) };
        let t = self.constant(node, c, "the constant operand")?.expect("checked present");
        if t.len() != 1 {
            return Err(node_err(
                node,
                format!("{op} by a constant of shape {:?}", t.shape()),
                "only scalar constants map to FloatFunctional (add_scalar, mul_scalar)",
            ));
        }
        let v = t.values_f64()[0];
        let functional = match (op, c) {
            ("Add", _) => Functional::AddScalar(v),
            ("Sub", 1) => Functional::AddScalar(-v),
            ("Mul", _) => Functional::MulScalar(v),
            ("Div", 1) if v != 0.0 => Functional::MulScalar(1.0 / v),
            _ => {
                return Err(node_err(
                    node,
                    format!("{op} with the constant as the left operand"),
                    "rewrite as x * c or x + c",
                ));
            }
        };
        let (x, rank) = self.quant_value(node, k, consumer)?;
        let base = if matches!(functional, Functional::AddScalar(_)) { "add_scalar" } else { "mul_scalar" };
        self.push(node, base, Kind::Functional(functional), vec![x], rank);
        Ok(())
    }

    fn concat(&mut self, node: &NodeProto) -> Res<()> {
        let consumer = self.items.len() + 1;
        let mut inputs = Vec::new();
        let mut rank = None;
        for k in 0..node.inputs.len() {
            let (x, r) = self.quant_value(node, k, consumer)?;
            rank = rank.or(r);
            inputs.push(x);
        }
        let axis = attr_i(node, "axis", 0);
        let axis = if axis < 0 {
            let r = rank.ok_or_else(|| {
                node_err(node, "negative axis of an input of unknown rank", "export with a non-negative dim")
            })?;
            axis + r as i64
        } else {
            axis
        };
        let axis =
            usize::try_from(axis).map_err(|_| node_err(node, "axis out of range", "check the model"))?;
        self.push(node, "cat", Kind::Functional(Functional::Cat(axis)), inputs, rank);
        Ok(())
    }

    fn pool_geometry(&self, node: &NodeProto) -> Res<(Vec<usize>, Vec<usize>, Vec<usize>, bool)> {
        no_auto_pad(node)?;
        let k = sizes(
            node,
            "kernel_shape",
            &attr_ints(node, "kernel_shape")
                .ok_or_else(|| node_err(node, "no kernel_shape", "check the model"))?,
        )?;
        let d = k.len();
        let s = sizes(node, "strides", &attr_ints(node, "strides").unwrap_or_else(|| vec![1; d]))?;
        let p = symmetric(node, attr_ints(node, "pads"), d)?;
        if s.len() != d || k.iter().chain(&s).any(|&v| v == 0) {
            return Err(node_err(
                node,
                "kernel and strides must be positive and of equal length",
                "check the model",
            ));
        }
        Ok((k, s, p, attr_i(node, "ceil_mode", 0) != 0))
    }

    fn max_pool(&mut self, node: &NodeProto) -> Res<()> {
        let (k, s, p, ceil) = self.pool_geometry(node)?;
        let dil =
            sizes(node, "dilations", &attr_ints(node, "dilations").unwrap_or_else(|| vec![1; k.len()]))?;
        if node.outputs.len() > 1 && node.outputs[1..].iter().any(|o| !o.is_empty()) {
            return Err(node_err(node, "the indices output is used", "export without return_indices"));
        }
        match k.len() {
            2 => {
                let pool = MaxPool2d::new([k[0], k[1]])
                    .stride([s[0], s[1]])
                    .padding([p[0], p[1]])
                    .dilation([dil[0], dil[1]])
                    .ceil_mode(ceil);
                self.unary(node, "maxpool", pool)
            }
            1 => self.unary(
                node,
                "maxpool",
                MaxPool1d::new([k[0]]).stride([s[0]]).padding([p[0]]).dilation([dil[0]]).ceil_mode(ceil),
            ),
            _ => Err(node_err(
                node,
                format!("{}-d max pooling", k.len()),
                "1-d and 2-d max pooling are supported",
            )),
        }
    }

    fn avg_pool(&mut self, node: &NodeProto) -> Res<()> {
        let (k, s, p, ceil) = self.pool_geometry(node)?;
        if k.len() != 2 {
            return Err(node_err(
                node,
                format!("{}-d average pooling", k.len()),
                "2-d average pooling is supported",
            ));
        }
        let pool = AvgPool2d::new([k[0], k[1]])
            .stride([s[0], s[1]])
            .padding([p[0], p[1]])
            .ceil_mode(ceil)
            .count_include_pad(attr_i(node, "count_include_pad", 0) != 0);
        self.unary(node, "avgpool", pool)
    }

    fn reduce_mean(&mut self, node: &NodeProto) -> Res<()> {
        let axes = match attr_ints(node, "axes") {
            Some(a) => Some(a),
            None => self.ints_input(node, 1, "axes")?,
        };
        let rank = match self.input(node, 0)? {
            Some(Val::Node { rank, .. }) => *rank,
            _ => None,
        };
        let spatial = matches!(axes.as_deref(), Some([2, 3] | [-2, -1] | [3, 2] | [-1, -2]));
        if rank == Some(4) && spatial && attr_i(node, "keepdims", 1) == 1 {
            return self.unary(node, "avgpool", AdaptiveAvgPool2d::new([1, 1]));
        }
        Err(node_err(
            node,
            format!("mean over axes {axes:?} of a rank-{rank:?} tensor"),
            "only the spatial mean of NCHW with keepdims (global average pooling) is supported",
        ))
    }

    fn reshape(&mut self, node: &NodeProto) -> Res<()> {
        let (id, _, layout, float) = self.value(node, 0)?;
        let target = match self.input(node, 1)? {
            Some(Val::Dims(d)) => d.clone(),
            Some(Val::Const(t)) => Dims::from_tensor(t)
                .ok_or_else(|| node_err(node, "shape is not an integer vector", "check the model"))?,
            _ => {
                return Err(node_err(
                    node,
                    "shape is computed by the graph",
                    "export with do_constant_folding=True",
                ));
            }
        };
        if matches!(layout, Layout::RnnYT { .. }) && target.dims.len() == 3 {
            self.set(Self::out(node), Val::Node { id, rank: Some(3), layout: Layout::Plain, float });
            return Ok(());
        }
        let shape: Vec<i64> = target
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(v) => Ok(*v),
                Dim::Of { value, axis } if *value == id && *axis == i => Ok(0),
                Dim::Of { .. } => Err(node_err(
                    node,
                    "a target dimension taken from another position",
                    "export with static sizes",
                )),
            })
            .collect::<Res<_>>()?;
        self.layout_op(node, "reshape", Box::new(Reshape { shape: shape.clone() }), Some(shape.len()))
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

    fn transpose(&mut self, node: &NodeProto) -> Res<()> {
        let (_, rank, layout, float) = self.value(node, 0)?;
        let perm = match attr_ints(node, "perm") {
            Some(p) => sizes(node, "perm", &p)?,
            None => (0..rank.ok_or_else(|| node_err(node, "no perm and unknown rank", "give perm"))?)
                .rev()
                .collect(),
        };
        if let Layout::RnnY { dirs, hidden } = layout {
            if perm == [0, 2, 1, 3] {
                let (id, ..) = self.value(node, 0)?;
                self.set(
                    Self::out(node),
                    Val::Node { id, rank: Some(4), layout: Layout::RnnYT { dirs, hidden }, float },
                );
                return Ok(());
            }
        }
        let r = Some(perm.len());
        self.layout_op(node, "permute", Box::new(Transpose { perm }), r)
    }

    fn squeeze(&mut self, node: &NodeProto) -> Res<()> {
        let axes = match attr_ints(node, "axes") {
            Some(a) => a,
            None => self.ints_input(node, 1, "axes")?.unwrap_or_default(),
        };
        let (id, rank, layout, float) = self.value(node, 0)?;
        if node.op_type == "Squeeze" {
            if matches!(layout, Layout::RnnY { dirs: 1, .. }) && axes == [1] {
                self.set(Self::out(node), Val::Node { id, rank: Some(3), layout: Layout::Plain, float });
                return Ok(());
            }
            let r = rank.filter(|_| !axes.is_empty()).map(|r| r.saturating_sub(axes.len()));
            self.layout_op(node, "squeeze", Box::new(Squeeze { axes }), r)
        } else {
            let r = rank.map(|r| r + axes.len());
            self.layout_op(node, "unsqueeze", Box::new(Unsqueeze { axes }), r)
        }
    }

    fn slice(&mut self, node: &NodeProto) -> Res<()> {
        let (_, rank, ..) = self.value(node, 0)?;
        let (starts, ends, axes, steps) = if self.opset < 10 {
            let s = attr_ints(node, "starts").unwrap_or_default();
            let n = s.len();
            (
                s,
                attr_ints(node, "ends").unwrap_or_default(),
                attr_ints(node, "axes").unwrap_or_else(|| (0..n as i64).collect()),
                vec![1; n],
            )
        } else {
            let s = self.ints_input(node, 1, "starts")?.unwrap_or_default();
            let n = s.len();
            let e = self.ints_input(node, 2, "ends")?.unwrap_or_default();
            let a = self.ints_input(node, 3, "axes")?.unwrap_or_else(|| (0..n as i64).collect());
            let st = self.ints_input(node, 4, "steps")?.unwrap_or_else(|| vec![1; n]);
            (s, e, a, st)
        };
        self.layout_op(node, "slice", Box::new(Slice { starts, ends, axes, steps }), rank)
    }

    fn split(&mut self, node: &NodeProto) -> Res<()> {
        let (id, rank, layout, float) = self.value(node, 0)?;
        if layout != Layout::Plain {
            return Err(node_err(
                node,
                "splits a recurrent layer's output in ONNX's layout",
                "split PyTorch's output instead",
            ));
        }
        let split = match attr_ints(node, "split") {
            Some(s) => s,
            None => self.ints_input(node, 1, "split")?.ok_or_else(|| {
                node_err(
                    node,
                    "equal splits of an unknown size",
                    "export with explicit split sizes (torch.split with a list)",
                )
            })?,
        };
        if split.len() != node.outputs.len() || split.iter().any(|&s| s < 0) {
            return Err(node_err(
                node,
                format!("split sizes {split:?} for {} outputs", node.outputs.len()),
                "check the model",
            ));
        }
        let axis = attr_i(node, "axis", 0);
        let mut start = 0i64;
        let scope = self.scope_of(node);
        for (k, &size) in split.iter().enumerate() {
            let end = start
                .checked_add(size)
                .ok_or_else(|| node_err(node, "split sizes overflow", "check the model"))?;
            let output = node.outputs[k].clone();
            let slice = Slice { starts: vec![start], ends: vec![end], axes: vec![axis], steps: vec![1] };
            self.items.push(Item {
                scope: scope.clone(),
                base: "split".into(),
                role: Role::Op,
                kind: Kind::Module(Box::new(slice)),
                inputs: vec![id.clone()],
                output: output.clone(),
                node: node.name.clone(),
            });
            self.set(&output, Val::Node { id: output.clone(), rank, layout: Layout::Plain, float });
            start = end;
        }
        Ok(())
    }

    fn gather(&mut self, node: &NodeProto) -> Res<()> {
        let (_, rank, ..) = self.value(node, 0)?;
        let idx = self
            .constant(node, 1, "indices")?
            .ok_or_else(|| node_err(node, "no indices", "check the model"))?;
        let idx = idx
            .as_i64()
            .cloned()
            .ok_or_else(|| node_err(node, "indices are not integers", "check the model"))?;
        if idx.ndim() > 1 {
            return Err(node_err(node, "indices of rank > 1", "index with a scalar or a vector"));
        }
        let scalar = idx.ndim() == 0;
        let g = Gather { axis: attr_i(node, "axis", 0), indices: idx.iter().copied().collect(), scalar };
        let r = rank.map(|r| if scalar { r.saturating_sub(1) } else { r });
        self.layout_op(node, "gather", Box::new(g), r)
    }

    fn linear(
        &mut self,
        node: &NodeProto,
        base: &str,
        w: ArrayD<f32>,
        b: Option<ArrayD<f32>>,
        inputs: (String, Option<usize>),
    ) -> Res<String> {
        let [out, inp] = w.shape()[..] else {
            return Err(node_err(
                node,
                format!("weight of shape {:?}", w.shape()),
                "a linear layer's weight is 2-d",
            ));
        };
        let b = b
            .map(|b| {
                if b.len() != out {
                    return Err(node_err(
                        node,
                        format!("bias of shape {:?} for {out} outputs", b.shape()),
                        "use a bias per output",
                    ));
                }
                Ok(b.into_shape_with_order(IxDyn(&[out])).expect("length checked"))
            })
            .transpose()?;
        let mut linear = Linear::new(inp, out, b.is_some());
        linear.set_weight_bias(w, b)?;
        Ok(self.push(node, base, Kind::Module(Box::new(linear)), vec![inputs.0], inputs.1))
    }

    fn gemm(&mut self, node: &NodeProto) -> Res<()> {
        if attr_i(node, "transA", 0) != 0 {
            return Err(node_err(node, "transA=1", "a linear layer multiplies the input untransposed"));
        }
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?
            .to_f32();
        if w.ndim() != 2 {
            return Err(node_err(node, "weight is not 2-d", "check the model"));
        }
        let alpha = attr_f(node, "alpha", 1.0);
        let beta = attr_f(node, "beta", 1.0);
        let mut w = if attr_i(node, "transB", 0) != 0 {
            w
        } else {
            w.reversed_axes().as_standard_layout().into_owned()
        };
        if alpha != 1.0 {
            w.mapv_inplace(|v| v * alpha);
        }
        let b = self.constant(node, 2, "the bias")?.map(|b| {
            let mut b = b.to_f32();
            if beta != 1.0 {
                b.mapv_inplace(|v| v * beta);
            }
            b
        });
        let consumer = self.items.len() + 1;
        let x = self.quant_value(node, 0, consumer)?;
        self.linear(node, "fc", w, b, x)?;
        Ok(())
    }

    fn matmul(&mut self, index: usize) -> Res<()> {
        let node = &self.nodes[index];
        let w = self
            .constant(node, 1, "the weight")?
            .ok_or_else(|| node_err(node, "no weight", "check the model"))?
            .to_f32();
        if w.ndim() != 2 {
            return Err(node_err(
                node,
                "the right operand is not a 2-d constant",
                "MatMul maps to Linear with a constant weight",
            ));
        }
        let w = w.reversed_axes().as_standard_layout().into_owned();
        // MatMul then Add of a constant vector: nn.Linear on an input of rank > 2.
        let mut bias = None;
        if let Some(j) = self.sole_reader(Self::out(node)).filter(|&j| self.nodes[j].op_type == "Add") {
            let add = &self.nodes[j];
            let other = usize::from(add.inputs[0] == *Self::out(node));
            if let Some(Val::Const(t)) = self.input(add, other)? {
                if t.len() == w.shape()[0] {
                    bias = Some((j, t.to_f32()));
                }
            }
        }
        let consumer = self.items.len() + 1;
        let x = self.quant_value(node, 0, consumer)?;
        let out = self.linear(node, "fc", w, bias.as_ref().map(|(_, b)| b.clone()), x)?;
        if let Some((j, _)) = bias {
            self.absorbed.insert(j, out);
        }
        Ok(())
    }

    fn softmax(&mut self, node: &NodeProto) -> Res<()> {
        let default = if self.opset >= 13 { -1 } else { 1 };
        let axis = attr_i(node, "axis", default);
        let (_, rank, ..) = self.value(node, 0)?;
        if self.opset < 13 && rank.is_none_or(|r| axis != r as i64 - 1 && axis != -1) {
            return Err(node_err(
                node,
                "opset < 13 softmax over flattened trailing axes",
                "export with opset 13 or later",
            ));
        }
        if node.op_type == "Softmax" {
            self.unary(node, "softmax", Softmax::new(axis))
        } else {
            self.float_op(node, "log_softmax", Box::new(LogSoftmax { dim: axis }), rank).map(|_| ())
        }
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

    fn resize(&mut self, node: &NodeProto) -> Res<()> {
        let mode = attr_s(node, "mode").unwrap_or_else(|| "nearest".into());
        let ctm = attr_s(node, "coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
        let up = |u: Upsample| -> Res<Upsample> {
            Ok(match (mode.as_str(), ctm.as_str()) {
                ("nearest", "asymmetric") if attr_s(node, "nearest_mode").as_deref() == Some("floor") => u,
                ("linear", "align_corners") => u.mode(UpsampleMode::Bilinear).align_corners(true),
                ("linear", "pytorch_half_pixel" | "half_pixel") => {
                    u.mode(UpsampleMode::Bilinear).align_corners(false)
                }
                _ => {
                    return Err(node_err(
                        node,
                        format!("mode={mode}, coordinate_transformation_mode={ctm}"),
                        "PyTorch's nearest (asymmetric, floor) and bilinear (align_corners or half_pixel) are supported",
                    ));
                }
            })
        };
        let scales = self.constant(node, 2, "scales")?.filter(|t| t.len() > 0);
        let sizes_in = match self.input(node, 3)? {
            Some(Val::Dims(d)) if d.dims.len() == 4 => match (&d.dims[2], &d.dims[3]) {
                (Dim::Known(h), Dim::Known(w)) => Some(vec![0, 0, *h, *w]),
                _ => None,
            },
            _ => self.ints_input(node, 3, "sizes")?,
        };
        let u = match (scales, sizes_in) {
            (Some(s), _) => {
                let s = s.values_f64();
                if s.len() != 4 || s[0] != 1.0 || s[1] != 1.0 {
                    return Err(node_err(
                        node,
                        format!("scales {s:?}"),
                        "scale the spatial dimensions of NCHW only",
                    ));
                }
                Upsample::scale_factors([s[2], s[3]])
            }
            (None, Some(sz)) if sz.len() == 4 => {
                let sz = sizes(node, "sizes", &sz)?;
                Upsample::size([sz[2], sz[3]])
            }
            _ => {
                return Err(node_err(
                    node,
                    "neither constant scales nor sizes",
                    "export with a constant scale_factor or size",
                ));
            }
        };
        let u = up(u)?;
        self.unary(node, "upsample", u)
    }

    fn pad(&mut self, node: &NodeProto) -> Res<()> {
        let mode = attr_s(node, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(node_err(node, format!("mode={mode}"), "constant padding is supported"));
        }
        let pads = match attr_ints(node, "pads") {
            Some(p) if self.opset < 11 => p,
            _ => self
                .ints_input(node, 1, "pads")?
                .ok_or_else(|| node_err(node, "no pads", "check the model"))?,
        };
        if self.input(node, 3)?.is_some() {
            return Err(node_err(
                node,
                "the axes input",
                "pad every axis (export with opset < 18 or without axes)",
            ));
        }
        let value = if self.opset < 11 {
            attr_f(node, "value", 0.0)
        } else {
            self.constant(node, 2, "constant_value")?
                .map(|t| t.values_f64().first().copied().unwrap_or(0.0) as f32)
                .unwrap_or(0.0)
        };
        let pads = sizes(node, "pads (negative pads crop)", &pads)?;
        let (_, rank, ..) = self.value(node, 0)?;
        self.layout_op(node, "pad", Box::new(Pad { pads, value }), rank)
    }

    fn recurrent(&mut self, node: &NodeProto) -> Res<()> {
        let lstm = node.op_type == "LSTM";
        let hidden = sizes(node, "hidden_size", &[attr_i(node, "hidden_size", 0)])?[0];
        let dirs = match attr_s(node, "direction").as_deref() {
            None | Some("forward") => 1,
            Some("bidirectional") => 2,
            Some(d) => {
                return Err(node_err(
                    node,
                    format!("direction={d}"),
                    "forward and bidirectional layers map to PyTorch's",
                ));
            }
        };
        if attr_i(node, "layout", 0) != 0
            || attr(node, "clip").is_some()
            || attr(node, "activations").is_some()
            || attr_i(node, "input_forget", 0) != 0
        {
            return Err(node_err(
                node,
                "layout, clip, activations or input_forget set",
                "export PyTorch's default recurrent layer",
            ));
        }
        if !lstm && attr_i(node, "linear_before_reset", 0) != 1 {
            return Err(node_err(node, "linear_before_reset=0", "PyTorch's GRU is linear_before_reset=1"));
        }
        if self.input(node, 4)?.is_some() {
            return Err(node_err(node, "sequence_lens", "run on full sequences (no packed sequences)"));
        }
        for k in 5..node.inputs.len() {
            if !matches!(self.input(node, k)?, None | Some(Val::Zeros)) {
                let all_zero = matches!(self.input(node, k)?, Some(Val::Const(t)) if t.values_f64().iter().all(|&v| v == 0.0));
                if !all_zero {
                    return Err(node_err(
                        node,
                        "non-zero initial states",
                        "start from zero states (PyTorch's default)",
                    ));
                }
            }
        }
        if node.outputs.iter().skip(1).any(|o| !o.is_empty() && self.readers.contains_key(o.as_str()))
            || node.outputs.iter().skip(1).any(|o| self.outputs.contains(o))
        {
            return Err(node_err(
                node,
                "the final states (Y_h, Y_c) are used",
                "use the sequence output only",
            ));
        }
        let w =
            self.constant(node, 1, "W")?.ok_or_else(|| node_err(node, "no W", "check the model"))?.to_f32();
        let r =
            self.constant(node, 2, "R")?.ok_or_else(|| node_err(node, "no R", "check the model"))?.to_f32();
        let b = self.constant(node, 3, "B")?.map(|b| b.to_f32());
        let gates = if lstm { 4 } else { 3 };
        let gh = gates * hidden;
        if w.ndim() != 3 || w.shape()[0] != dirs || w.shape()[1] != gh || r.shape() != [dirs, gh, hidden] {
            return Err(node_err(
                node,
                format!("W {:?} and R {:?} for hidden size {hidden}", w.shape(), r.shape()),
                "check the model",
            ));
        }
        if b.as_ref().is_some_and(|b| b.shape() != [dirs, 2 * gh]) {
            return Err(node_err(node, "B has the wrong shape", "check the model"));
        }
        let input = w.shape()[2];
        // ONNX's gate blocks in PyTorch's order: LSTM iofc -> ifgo, GRU zrh -> rzn.
        let order: &[usize] = if lstm { &[0, 2, 3, 1] } else { &[1, 0, 2] };
        let reorder = |m: ndarray::ArrayViewD<f32>| -> ArrayD<f32> {
            let parts: Vec<_> = order
                .iter()
                .map(|&g| m.slice_axis(Axis(0), ndarray::Slice::from(g * hidden..(g + 1) * hidden)))
                .collect();
            ndarray::concatenate(Axis(0), &parts).expect("same shapes")
        };
        let mut tensors = Vec::new();
        for d in 0..dirs {
            let suffix = if d == 1 { "_reverse" } else { "" };
            tensors.push((format!("weight_ih_l0{suffix}"), reorder(w.index_axis(Axis(0), d))));
            tensors.push((format!("weight_hh_l0{suffix}"), reorder(r.index_axis(Axis(0), d))));
            let bd = b
                .as_ref()
                .map(|b| b.index_axis(Axis(0), d).to_owned())
                .unwrap_or_else(|| ArrayD::zeros(IxDyn(&[2 * gh])));
            tensors.push((
                format!("bias_ih_l0{suffix}"),
                reorder(bd.slice_axis(Axis(0), ndarray::Slice::from(0..gh))),
            ));
            tensors.push((
                format!("bias_hh_l0{suffix}"),
                reorder(bd.slice_axis(Axis(0), ndarray::Slice::from(gh..2 * gh))),
            ));
        }
        let options = RnnOptions { bidirectional: dirs == 2, ..RnnOptions::new(input, hidden) };
        let y = node.outputs.first().cloned().unwrap_or_default();
        let index = self.nodes.iter().position(|n| std::ptr::eq(n, node)).unwrap_or(0);
        // A layer reading only the previous layer's output: PyTorch's next layer of one module.
        if let Some((item, stack)) = self.stack_below(node, lstm, &options) {
            let k = stack.options.num_layers;
            let (lstm, output) = (stack.lstm, stack.output.clone());
            stack.options.num_layers += 1;
            stack.last_node = index;
            stack
                .tensors
                .extend(tensors.into_iter().map(|(name, t)| (name.replace("_l0", &format!("_l{k}")), t)));
            let tensors = stack.tensors.clone();
            let options = stack.options;
            self.items[item].kind = Kind::Module(if lstm {
                Box::new(LSTM::from_tensors(options, tensors)?)
            } else {
                Box::new(GRU::from_tensors(options, tensors)?)
            });
            self.set(
                &y,
                Val::Node { id: output, rank: Some(3), layout: Layout::RnnY { dirs, hidden }, float: true },
            );
            return Ok(());
        }
        let module: Box<dyn Module> = if lstm {
            Box::new(LSTM::from_tensors(options, tensors.clone())?)
        } else {
            Box::new(GRU::from_tensors(options, tensors.clone())?)
        };
        let base = if lstm { "lstm" } else { "gru" };
        let tuple = self.float_op(node, base, module, None)?;
        let item = self.items.len() - 1;
        let out = self.fresh(&y);
        self.items.push(Item {
            scope: self.scope_of(node),
            base: format!("{base}_output"),
            role: Role::Stub { next_to: self.items.len() - 1 },
            kind: Kind::GetItem(0),
            inputs: vec![tuple],
            output: out.clone(),
            node: node.name.clone(),
        });
        self.recurrent.insert(item, Stack { lstm, options, tensors, last_node: index, output: out.clone() });
        self.set(
            &y,
            Val::Node { id: out, rank: Some(3), layout: Layout::RnnY { dirs, hidden }, float: true },
        );
        Ok(())
    }
}
