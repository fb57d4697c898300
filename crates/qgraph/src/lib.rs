//! PyTorch's eager-mode quantization workflow in Rust: a tree of named modules, `QuantStub` /
//! `DeQuantStub`, module fusion, qconfig assignment, `prepare` / calibrate / `convert`, quantized
//! modules that run on `qkernels`, and save and load as safetensors.
//!
//! A model is a tree of [`Module`]s named as in PyTorch (`features.0`, `layer1.0.conv1`); the
//! containers are [`Sequential`] and [`Graph`] (named nodes, for residual adds and branches).
//! Values between modules are [`Value`]s: float tensors in NCHW, or quantized activations.

mod container;
pub mod debug;
mod error;
mod functional;
pub mod fuse;
pub mod fusion;
pub mod io;
mod loaders;
pub mod mappings;
pub mod memory;
pub mod models;
mod module;
pub mod nn;
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
pub use value::{QuantTensor, Value, pytorch_threads, set_pytorch_threads};
pub use workflow::{
    QConfigMapping, calibrate, convert, convert_with, prepare, prepare_qat_with, prepare_with, quantize,
    quantize_with,
};
pub use {qkernels, qobserve};

/// The README's examples, run as doctests (qgraph depends on every crate they use).
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// This crate's README examples, run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;
