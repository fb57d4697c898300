//! PyTorch's eager-mode quantization workflow in Rust: a tree of named modules, `QuantStub` /
//! `DeQuantStub`, module fusion, qconfig assignment, `prepare` / calibrate / `convert`, quantized
//! modules that run on `qkernels`, save and load as safetensors, and a model zoo.
//!
//! The workflow arrives with the qgraph work; this crate currently fixes its place in the
//! workspace: above `qobserve`, below `qfake`.

pub use qobserve;
