//! The one error type of `qkernels`.

/// Everything that can be wrong with the input of a `qkernels` function. Each variant names the
/// operation, the offending value and what would be accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Invalid quantization parameters or tensors, as `qcore` reports them.
    #[error(transparent)]
    Quant(#[from] qcore::QError),
    /// A `QKERNELS_ISA` value that names no tier.
    #[error("unknown ISA tier {name:?}; QKERNELS_ISA takes scalar|avx2|avx512|avx512vnni|amx")]
    UnknownIsa {
        /// The value given.
        name: String,
    },
    /// A tier this CPU cannot run.
    #[error("this CPU does not support the {isa} tier; use Isa::detect() or a tier from Isa::tiers()")]
    IsaUnsupported {
        /// The name of the tier asked for (`Isa::name`).
        isa: &'static str,
    },
    /// Two sizes that must agree do not.
    #[error("{op}: {what} is {got} but must be {expected}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Which size, e.g. `input channels` or `output buffer length`.
        what: &'static str,
        /// The size given.
        got: usize,
        /// The size required.
        expected: usize,
    },
    /// A parameter outside what the operation accepts.
    #[error("{op}: {what} = {value} is invalid: {reason}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// The parameter, e.g. `groups` or `stride`.
        what: &'static str,
        /// Its value, formatted.
        value: String,
        /// Why, and what would be accepted.
        reason: &'static str,
    },
}

/// `Result` with [`KernelError`].
pub type KernelResult<T> = Result<T, KernelError>;
