//! Quantized dtypes, quantization parameters, [`QTensor`], and the scalar quantize / dequantize /
//! requantize / fake-quant math of PyTorch's eager-mode quantization, bit-exact with PyTorch 2.x on x86.
//!
//! This crate is the oracle of the workspace: every SIMD kernel in `qkernels` is tested bit for
//! bit against the plain scalar functions here, and these are tested bit for bit against PyTorch
//! through committed golden fixtures. The rules, with the PyTorch and FBGEMM source each comes from,
//! are in `docs/NUMERICS.md`.
//!
//! ```
//! use ndarray::array;
//! use qcore::{quantize_per_tensor, QDType};
//!
//! let q = quantize_per_tensor(&array![0.7f32, 0.5, -0.7], 0.25, 4, QDType::QUInt8)?;
//! assert_eq!(
//!     q.to_string(),
//!     "tensor([ 0.7500,  0.5000, -0.7500], size=(3,), dtype=torch.quint8,\n       \
//!      quantization_scheme=torch.per_tensor_affine, scale=0.25, zero_point=4)"
//! );
//! # Ok::<(), qcore::QError>(())
//! ```

mod display;
mod dtype;
mod dtype_range;
pub mod dynamic;
mod error;
pub mod fake_quant;
pub mod math;
mod per_tensor;
pub mod requant;
mod scalar;
pub mod subbyte;
mod tensor;

pub use display::{float_tensor_str, int_tensor_str, python_float_repr};
pub use dtype::{QDType, QScheme};
pub use dtype_range::calculate_qmin_qmax;
pub use error::{QError, QResult};
pub use per_tensor::PerTensor;
pub use scalar::{
    AffineQuantizer, cvt_f32_to_i32_x86, dequantize_per_channel_val, dequantize_val,
    dequantize_val_float_qparams, inverse_scale, quantize_val, quantize_val_float_qparams,
};
pub use tensor::{
    IntRepr, QParams, QTensor, quantize_per_channel, quantize_per_channel_float_qparams, quantize_per_tensor,
};

/// This crate's README examples, run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;
