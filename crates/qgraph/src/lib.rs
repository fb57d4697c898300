//! PyTorch's eager-mode quantization workflow in Rust: a tree of named modules, `QuantStub` /
//! `DeQuantStub`, module fusion, qconfig assignment, `prepare` / calibrate / `convert`, quantized
//! modules that run on `qkernels`, and save and load as safetensors.
//!
//! A model is a tree of [`Module`]s named as in PyTorch (`features.0`, `layer1.0.conv1`); the
//! containers are [`Sequential`] and [`Graph`] (named nodes, for residual adds and branches).
//! Values between modules are [`Value`]s: float tensors in NCHW, quantized activations (quint8,
//! qint8, qint32), or tuples of values for modules and graphs with several inputs or outputs.

mod container;
pub mod debug;
mod error;
mod functional;
pub mod fuse;
pub mod fusion;
pub mod io;
pub mod memory;
pub mod models;
mod module;
pub mod nn;
mod outq;
pub mod qconfig;
pub mod quantized;
pub mod record;
mod stubs;
mod value;
pub mod workflow;

pub use container::{Graph, GraphBuilder, Node, Op, Sequential};
pub(crate) use error::invalid;
pub use error::{GraphError, GraphResult};
pub use functional::{FloatFunctional, QFunctional};
pub use module::{Functional, Module, ModuleAny, eval, load_state_dict, replace, slot_mut, train};
pub use qkernels::MemoryFormat;
pub use qkernels::elementwise::PerTensor;
pub use stubs::{DeQuantStub, DeQuantize, QuantStub, QuantWrapper, Quantize};
pub use value::{
    DType, QuantElement, QuantTensor, QuantTensorOf, Value, pytorch_threads, set_pytorch_threads,
};
pub use workflow::{QConfigMapping, calibrate, convert, prepare, quantize};
pub use {qkernels, qobserve};

/// The README's examples, run as doctests (qgraph depends on every crate they use).
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// This crate's README examples, run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;
