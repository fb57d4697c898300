//! The one error type of `qcore`.

use crate::QDType;

/// Everything that can be wrong with the input of a `qcore` function.
///
/// Each variant names the function (`context`), the offending value and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QError {
    /// A scale that is zero, negative, NaN, infinite, or whose f32 reciprocal overflows.
    #[error(
        "{context}: scale {scale:e} is invalid ({reason}); use a finite scale > 0 whose f32 reciprocal is finite"
    )]
    InvalidScale {
        /// The function that rejected the scale.
        context: &'static str,
        /// The scale as given.
        scale: f64,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A zero point that the dtype cannot hold.
    #[error(
        "{context}: zero point {zero_point} is outside [{qmin}, {qmax}] of {dtype}; pick one in that range"
    )]
    ZeroPointOutOfRange {
        /// The function that rejected the zero point.
        context: &'static str,
        /// The zero point as given.
        zero_point: i64,
        /// The dtype it was meant for.
        dtype: QDType,
        /// Smallest allowed value.
        qmin: i64,
        /// Largest allowed value.
        qmax: i64,
    },
    /// Per-channel parameters whose count differs from the size of the channel axis.
    #[error("{context}: {what} has {got} entries but axis {axis} has size {expected}; give one per channel")]
    ChannelCountMismatch {
        /// The function that rejected the parameters.
        context: &'static str,
        /// Which parameter (`scales`, `zero_points`).
        what: &'static str,
        /// How many were given.
        got: usize,
        /// The channel axis.
        axis: usize,
        /// The size of that axis.
        expected: usize,
    },
    /// An axis that the tensor does not have.
    #[error("{context}: axis {axis} is out of range for a {ndim}-D tensor; use an axis below {ndim}")]
    AxisOutOfRange {
        /// The function that rejected the axis.
        context: &'static str,
        /// The axis as given.
        axis: usize,
        /// The number of dimensions of the tensor.
        ndim: usize,
    },
    /// A tensor of a dtype the function does not accept.
    #[error("{context}: got a {dtype} tensor but this needs {expected}; quantize it with dtype={expected}")]
    UnsupportedDType {
        /// The function that rejected the tensor.
        context: &'static str,
        /// The tensor's dtype.
        dtype: QDType,
        /// The dtype the function needs.
        expected: QDType,
    },
    /// A custom `quant_min`/`quant_max` range that cannot be used.
    #[error("{context}: quant range [{quant_min}, {quant_max}] is invalid for {dtype}: {reason}")]
    InvalidQuantRange {
        /// The function that rejected the range.
        context: &'static str,
        /// Lower bound as given.
        quant_min: i64,
        /// Upper bound as given.
        quant_max: i64,
        /// The dtype it was meant for.
        dtype: QDType,
        /// Why it was rejected and what to do.
        reason: &'static str,
    },
    /// Fake-quant parameters PyTorch's fake-quant ops refuse.
    #[error("{context}: zero point {zero_point} with quant range [{quant_min}, {quant_max}]: {reason}")]
    InvalidFakeQuantParams {
        /// The function that rejected the parameters.
        context: &'static str,
        /// The zero point as given.
        zero_point: i64,
        /// Lower bound as given.
        quant_min: i64,
        /// Upper bound as given.
        quant_max: i64,
        /// Why they were rejected.
        reason: &'static str,
    },
    /// A float zero point that is NaN or infinite.
    #[error("{context}: float zero point {zero_point} is not finite; use a finite zero point")]
    InvalidFloatZeroPoint {
        /// The function that rejected it.
        context: &'static str,
        /// The zero point as given.
        zero_point: f32,
    },
    /// A value that does not fit a sub-byte dtype, or packed bytes of the wrong length.
    #[error("{context}: {what}; {fix}")]
    SubByte {
        /// The function that rejected it.
        context: &'static str,
        /// What is wrong, with the value.
        what: String,
        /// What to do instead.
        fix: &'static str,
    },
    /// A call that needs per-tensor parameters on a per-channel tensor, or the reverse.
    #[error("{context}: the tensor is quantized {actual}; {hint}")]
    WrongQScheme {
        /// The function that was called.
        context: &'static str,
        /// The scheme the tensor has, e.g. `per channel`.
        actual: &'static str,
        /// What to call instead.
        hint: &'static str,
    },
    /// A min / max range for dynamic quantization that is NaN, infinite or reversed.
    #[error(
        "{context}: range [{min}, {max}] is invalid ({reason}); pass the finite min and max of finite input values"
    )]
    InvalidRange {
        /// The function that rejected the range.
        context: &'static str,
        /// The minimum as given.
        min: f32,
        /// The maximum as given.
        max: f32,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// `Result` with [`QError`].
pub type QResult<T> = Result<T, QError>;
