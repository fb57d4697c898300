//! Observers: they watch float tensors during calibration and choose scales and zero points.
//!
//! PyTorch's observers (`MinMaxObserver`, `HistogramObserver`, their moving-average and
//! per-channel variants, ...) with PyTorch's float32 formulas, plus percentile, entropy and
//! MSE calibrators, all behind one `Observer` trait. They arrive with the observer work; this crate
//! currently fixes its place in the workspace: above `qkernels`, below `qgraph`.

pub use qcore;
