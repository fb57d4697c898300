//! PyTorch's eager-mode quantization workflow in Rust: a tree of named modules, `QuantStub` /
//! `DeQuantStub`, module fusion, qconfig assignment, `prepare` / calibrate / `convert`, quantized
//! modules that run on `qkernels`, save and load as safetensors, and a model zoo.
//!
//! In place so far: [`qconfig`] (PyTorch's per-backend defaults over `qobserve`'s observer
//! descriptions) and [`fusion`] (batch-norm folding with PyTorch's arithmetic). The module tree
//! and the workflow built on them come next.

mod error;
pub mod fusion;
pub mod qconfig;

pub use error::{GraphError, GraphResult};
pub use qobserve;
