//! PyTorch's eager-mode quantization workflow in Rust: a tree of named modules, `QuantStub` /
//! `DeQuantStub`, module fusion, qconfig assignment, `prepare` / calibrate / `convert`, quantized
//! modules that run on `qkernels`, and save and load as safetensors.
//!
//! A model is a tree of [`Module`]s named as in PyTorch (`features.0`, `layer1.0.conv1`); the
//! containers are [`Sequential`] and [`Graph`] (named nodes, for residual adds and branches).
//! Values between modules are [`Value`]s: float tensors in NCHW, quantized activations (quint8,
//! qint8, qint32), or tuples of values for modules and graphs with several inputs or outputs.

/// `Module::config` as the module's serde form (for modules whose serialized fields are their
/// configuration). Defined before the modules so that every file can use it.
macro_rules! serde_config {
    () => {
        fn config(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("plain data")
        }
    };
}

/// A unit module that returns its input (`Identity`, `QuantStub`): the struct, `new()` and its
/// `Module` impl under PyTorch's class name `$name`.
macro_rules! identity_module {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $new_doc:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        pub struct $ty;

        impl $ty {
            #[doc = $new_doc]
            pub fn new() -> Self {
                $ty
            }
        }

        impl Module for $ty {
            fn type_name(&self) -> &str {
                $name
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                Ok(input)
            }
        }
    };
}

/// `Module::extra_repr`, `params`, `params_mut`, `training` and `set_training` of a module that
/// wraps another in the field `$field` and prints and trains as it (a prepared module, a QAT
/// layer around its float layer).
#[macro_export]
macro_rules! delegate_to_inner {
    ($field:ident) => {
        fn extra_repr(&self) -> String {
            self.$field.extra_repr()
        }

        fn params(&self) -> Vec<(&'static str, &ndarray::ArrayD<f32>)> {
            self.$field.params()
        }

        fn params_mut(&mut self) -> Vec<(&'static str, &mut ndarray::ArrayD<f32>)> {
            self.$field.params_mut()
        }

        fn training(&self) -> bool {
            self.$field.training()
        }

        fn set_training(&mut self, training: bool) {
            self.$field.set_training(training);
        }
    };
}

pub mod calibrator_choice;
mod container;
pub mod debug;
pub mod equalize;
mod error;
pub mod fallback;
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
pub mod ns;
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
pub use workflow::{
    DynamicDType, DynamicQConfigSpec, QConfigMapping, calibrate, convert, convert_with, prepare,
    prepare_qat_with, prepare_with, quantize, quantize_dynamic, quantize_with,
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
