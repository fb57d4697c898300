//! Quantization-aware training: fake-quantize modules built on the element rules of
//! [`qcore::fake_quant`], QAT versions of the qgraph modules (Conv + BatchNorm folding with
//! straight-through gradients), and the training helpers that toggle observers and fake quant.
//!
//! The modules arrive with the QAT work; this crate currently fixes its place at the top of the
//! workspace, above `qgraph`.

pub use qgraph;
