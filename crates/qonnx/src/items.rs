//! What the importer turns ONNX nodes into before the graph is built: a flat list of items, each
//! one qgraph node (a module call, a `FloatFunctional` op, a tuple element) with the module
//! scope the exporter recorded, and the values between them.

use qgraph::{Functional, Module};

use crate::fold::Dims;
use crate::tensor::Tensor;

/// What an item computes.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A module called on the item's input (or the tuple of its inputs).
    Module(Box<dyn Module>),
    /// A `FloatFunctional` op on the inputs.
    Functional(Functional),
    /// Element `index` of a tuple.
    GetItem(usize),
}

/// How an item is named.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Role {
    /// An operator: named after its scope if it is the scope's only operator, else
    /// `scope.base`.
    Op,
    /// A `QuantStub` / `DeQuantStub` (named after the item it serves, `base` being the suffix).
    Stub {
        /// The item whose input (dequant) or output (quant) it converts.
        next_to: usize,
    },
    /// A graph boundary stub at the top level (`quant`, `dequant`).
    Boundary,
}

/// One future graph node.
#[derive(Debug)]
pub(crate) struct Item {
    /// The module scope components (sanitized, no dots), outermost first.
    pub scope: Vec<String>,
    /// The leaf name used when the item is not its scope's module.
    pub base: String,
    /// How it is named.
    pub role: Role,
    /// What it computes.
    pub kind: Kind,
    /// Input value ids.
    pub inputs: Vec<String>,
    /// Output value id.
    pub output: String,
    /// The ONNX node it comes from (for errors).
    pub node: String,
}

/// How a graph value's elements are laid out, for the outputs of recurrent layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Layout {
    /// As the value says.
    Plain,
    /// ONNX's recurrent output `Y` `[seq, dirs, batch, hidden]`, held as PyTorch's
    /// `[seq, batch, dirs * hidden]`.
    RnnY {
        /// Directions.
        dirs: usize,
        /// Hidden size.
        hidden: usize,
    },
    /// `Y` transposed to `[seq, batch, dirs, hidden]` (PyTorch's output before its reshape).
    RnnYT {
        /// Directions.
        dirs: usize,
        /// Hidden size.
        hidden: usize,
    },
}

/// A value while importing.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    /// Known at import time.
    Const(Tensor),
    /// A shape vector, partly symbolic.
    Dims(Dims),
    /// Zeros whose shape depends on the input (a recurrent layer's initial state).
    Zeros,
    /// A value computed by the graph.
    Node {
        /// The value's id.
        id: String,
        /// Its rank, if known.
        rank: Option<usize>,
        /// Its layout.
        layout: Layout,
        /// True if it is float after quantization too (a recurrent layer's output).
        float: bool,
    },
}
