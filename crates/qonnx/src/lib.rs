//! Imports float ONNX models, as `torch.onnx.export` writes them for CNNs and CRNNs, into a
//! qgraph module tree ready for PyTorch's eager int8 workflow: `fuse_auto`, `prepare_with`,
//! `calibrate`, `convert_with`, `io::save`.
//!
//! Each operator becomes one module named as PyTorch names it (`/layer1/layer1.0/conv1/Conv`
//! becomes `layer1.0.conv1`, its weight `layer1.0.conv1.weight`), adds, multiplications and
//! concatenations become `FloatFunctional`s, a `QuantStub` follows each input and a
//! `DeQuantStub` precedes each output. Recurrent layers (`LSTM`, `GRU`) become qgraph's, which
//! stay float under static quantization (stubs convert around them) and are quantized by
//! `quantize_dynamic`. Shape arithmetic is folded at import time.
//!
//! ```no_run
//! use qgraph::{Module, QConfigMapping, Value, calibrate, convert_with, fuse::fuse_auto, prepare_with};
//! let imported = qonnx::import_file("resnet18.onnx")?;
//! let mut model = imported.model;
//! fuse_auto(&mut model)?;
//! let qconfig = qgraph::qconfig::get_default_qconfig("x86")?;
//! prepare_with(&mut model, &QConfigMapping::global(qconfig), &qonnx::mappings())?;
//! let images: Vec<ndarray::ArrayD<f32>> = Vec::new(); // calibration data, NCHW
//! calibrate(model.as_ref(), images, |_, _| {})?;
//! convert_with(&mut model, &qonnx::mappings())?;
//! qgraph::io::save(model.as_ref(), "resnet18-int8.safetensors")?;
//! let back = qgraph::io::load_with("resnet18-int8.safetensors", &qonnx::loaders())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conv_transpose;
mod convert;
mod error;
mod fold;
mod items;
pub mod modules;
mod nest;
mod proto;
mod scope;
mod tensor;

use std::path::Path;

pub use convert::SUPPORTED;
pub use error::OnnxError;

use crate::convert::Converter;
use crate::items::{Item, Kind, Layout, Role, Val};

/// A float model read from ONNX.
#[derive(Debug)]
pub struct Imported {
    /// The float model: a qgraph `Graph` with stubs at its float boundaries.
    pub model: Box<dyn qgraph::Module>,
    /// The graph inputs, in order (batch dimension may be unknown).
    pub inputs: Vec<TensorInfo>,
    /// The graph outputs, in order.
    pub outputs: Vec<TensorInfo>,
}

/// Name and shape of a graph input or output (`None` for a symbolic dimension): qgraph's type,
/// so that a model file can record the inputs (`qgraph::io::save_with_inputs`).
pub use qgraph::io::TensorInfo;

/// Reads and imports the ONNX file at `path` (external data files are read from its directory).
pub fn import_file(path: impl AsRef<Path>) -> Result<Imported, OnnxError> {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).map_err(|source| OnnxError::Io { path: path.display().to_string(), source })?;
    import(&bytes, Some(path.parent().unwrap_or(Path::new("."))))
}

/// Imports a serialized ONNX model (external data is an error: use [`import_file`]).
pub fn import_bytes(bytes: &[u8]) -> Result<Imported, OnnxError> {
    import(bytes, None)
}

/// qgraph's default loaders plus qonnx's modules (for `qgraph::io::load_with`).
pub fn loaders() -> qgraph::io::Loaders {
    let mut loaders = qgraph::io::Loaders::default();
    modules::register_loaders(&mut loaders);
    loaders
}

/// qgraph's default mappings plus qonnx's modules (for `prepare_with` / `convert_with`).
///
/// qonnx's layout modules run on quantized values as they are (PyTorch's view and indexing ops
/// keep a quantized tensor's parameters), so they need no entries; the table is qgraph's.
pub fn mappings() -> qgraph::mappings::Mappings {
    qgraph::mappings::Mappings::default()
}

fn import(bytes: &[u8], dir: Option<&Path>) -> Result<Imported, OnnxError> {
    let model = proto::parse_model(bytes)?;
    let opset =
        model.opsets.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map(|(_, v)| *v).unwrap_or(0);
    if !(7..=22).contains(&opset) {
        return Err(OnnxError::Unsupported {
            what: format!("opset {opset} of the default domain"),
            fix: "export with opset 13 to 21 (torch.onnx.export's opset_version)".into(),
        });
    }
    let graph = &model.graph;
    let output_names: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let ranks = graph
        .value_info
        .iter()
        .chain(&graph.outputs)
        .filter(|v| !v.shape.is_empty())
        .map(|v| (v.name.clone(), v.shape.len()))
        .collect();
    let mut conv = Converter::new(&graph.nodes, opset, output_names.clone(), ranks);
    for init in &graph.initializers {
        let t = tensor::decode(init, dir)?;
        conv.vals.insert(init.name.clone(), Val::Const(t));
    }
    let mut inputs = Vec::new();
    for input in &graph.inputs {
        if conv.vals.contains_key(&input.name) {
            continue; // an initializer listed as an input (older exports)
        }
        if ![0, 1].contains(&input.elem_type) {
            return Err(OnnxError::Unsupported {
                what: format!("input `{}` of element type {}", input.name, input.elem_type),
                fix: "the importer takes float inputs".into(),
            });
        }
        let quantized = format!("{}#quant", input.name);
        conv.items.push(Item {
            scope: Vec::new(),
            base: "quant".into(),
            role: Role::Boundary,
            kind: Kind::Module(Box::new(qgraph::QuantStub::new())),
            inputs: vec![input.name.clone()],
            output: quantized.clone(),
            node: input.name.clone(),
        });
        let rank = (!input.shape.is_empty()).then_some(input.shape.len());
        conv.vals.insert(
            input.name.clone(),
            Val::Node { id: quantized, rank, layout: Layout::Plain, float: false },
        );
        inputs.push(input.name.clone());
    }
    if inputs.is_empty() {
        return Err(OnnxError::Unsupported {
            what: "a graph without inputs".into(),
            fix: "export a model that takes an input".into(),
        });
    }
    for index in 0..graph.nodes.len() {
        conv.convert(index)?;
    }
    let mut outputs = Vec::new();
    for name in &output_names {
        match conv.vals.get(name).cloned() {
            Some(Val::Node { id, layout: Layout::Plain, float, .. }) => {
                if float {
                    outputs.push(id);
                } else {
                    let out = format!("{name}#dequant");
                    conv.items.push(Item {
                        scope: Vec::new(),
                        base: "dequant".into(),
                        role: Role::Boundary,
                        kind: Kind::Module(Box::new(qgraph::DeQuantStub::new())),
                        inputs: vec![id],
                        output: out.clone(),
                        node: name.clone(),
                    });
                    outputs.push(out);
                }
            }
            Some(Val::Node { .. }) => {
                return Err(OnnxError::Unsupported {
                    what: format!("output `{name}` in a recurrent layer's ONNX layout"),
                    fix: "return the output as PyTorch's layer does".into(),
                });
            }
            Some(_) => {
                return Err(OnnxError::Unsupported {
                    what: format!("output `{name}`, a constant"),
                    fix: "outputs must depend on the inputs".into(),
                });
            }
            None => return Err(OnnxError::Undefined { value: name.clone(), node: "graph outputs".into() }),
        }
    }
    let items = std::mem::take(&mut conv.items);
    let paths = nest::name_items(&items);
    let members: Vec<usize> = (0..items.len()).collect();
    let input_names: Vec<String> = if inputs.len() == 1 {
        vec![qgraph::Graph::INPUT.to_string()]
    } else {
        (0..inputs.len()).map(|k| format!("input#{k}")).collect()
    };
    let classes: std::collections::HashMap<Vec<String>, String> =
        graph.nodes.iter().flat_map(scope::classes).collect();
    let type_name = match classes.get(&Vec::new()) {
        Some(class) => class.clone(),
        None if graph.name.is_empty() => "Model".to_string(),
        None => scope::sanitize(&graph.name),
    };
    let mut tree = nest::Tree::new(items, paths, &outputs, classes);
    let built = tree.build(&type_name, &members, 0, &inputs, &input_names, &outputs)?;
    let mut model: Box<dyn qgraph::Module> = Box::new(built);
    qgraph::eval(&mut model);
    let info = |v: &proto::ValueInfo| TensorInfo { name: v.name.clone(), shape: v.shape.clone() };
    Ok(Imported {
        model,
        inputs: graph.inputs.iter().filter(|v| inputs.contains(&v.name)).map(info).collect(),
        outputs: graph.outputs.iter().map(info).collect(),
    })
}

/// This crate's README examples, run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
