//! The one error type of `qobserve`.

use qcore::QError;

/// Everything that can go wrong while building an observer, observing data or computing
/// quantization parameters.
///
/// Each variant names the observer (`observer`, PyTorch's class name or the calibrator's name),
/// the offending value and how to fix it. Nothing in this crate panics on user input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// A `qcore` rule rejected a value (a custom quant range, a scale, a zero point).
    #[error(transparent)]
    Core(#[from] QError),

    /// `calculate_qparams` on an observer that has seen no data (PyTorch warns and returns
    /// scale 1.0, zero point 0; a calibration that silently yields those is almost always a bug).
    #[error(
        "{observer}: calculate_qparams was called before any data was observed (it has seen no \
         non-empty tensor{detail}); run calibration batches through it first"
    )]
    NotObserved {
        /// The observer.
        observer: &'static str,
        /// Extra context, e.g. ", every value was ±Inf and was skipped".
        detail: &'static str,
    },

    /// Two options that cannot be used together (PyTorch raises for the same combinations).
    #[error("{observer}: {options} cannot be combined: {reason}")]
    IncompatibleOptions {
        /// The observer.
        observer: &'static str,
        /// The options, e.g. `qscheme=torch.per_tensor_symmetric, reduce_range=true, dtype=torch.quint8`.
        options: String,
        /// Why, and what to use instead.
        reason: &'static str,
    },

    /// An argument outside its domain (a zero bin count, an averaging constant outside (0, 1], ...).
    #[error("{observer}: {name} = {value} is invalid: {reason}")]
    InvalidArgument {
        /// The observer.
        observer: &'static str,
        /// The argument's name, as PyTorch spells it.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        reason: &'static str,
    },

    /// A NaN (every observer) or an infinity (min/max observers) in the observed data.
    #[error("{observer}: element {index} of the observed tensor is {value}; {fix}")]
    NonFinite {
        /// The observer.
        observer: &'static str,
        /// Flat index (in logical, row-major order) of the first offending element.
        index: usize,
        /// The value (NaN, inf or -inf).
        value: f32,
        /// What to do about it.
        fix: &'static str,
    },

    /// `ch_axis` is not an axis of the observed tensor.
    #[error(
        "{observer}: ch_axis {ch_axis} is out of range for a {ndim}-D tensor; use an axis in \
         [-{ndim}, {ndim}) (a 0-D tensor has no channel axis)"
    )]
    AxisOutOfRange {
        /// The observer.
        observer: &'static str,
        /// The axis as configured.
        ch_axis: i64,
        /// Dimensions of the observed tensor.
        ndim: usize,
    },

    /// A per-channel observer saw a tensor whose channel count differs from earlier batches.
    #[error(
        "{observer}: the tensor has {got} channels along axis {axis} but earlier batches had \
         {expected}; observe tensors with the same channel count, or reset() the observer first"
    )]
    ChannelCountMismatch {
        /// The observer.
        observer: &'static str,
        /// The resolved channel axis.
        axis: usize,
        /// Channels seen before.
        expected: usize,
        /// Channels in this tensor.
        got: usize,
    },

    /// The observed range cannot be turned into valid parameters (for example `max - min`
    /// overflows f32, or the scale's f32 reciprocal overflows).
    #[error(
        "{observer}: the observed range [{min:e}, {max:e}] gives no usable quantization parameters \
         ({reason}); clamp the data to a range whose width is finite in f32"
    )]
    RangeUnusable {
        /// The observer.
        observer: &'static str,
        /// The (per-channel: offending) minimum.
        min: f32,
        /// The (per-channel: offending) maximum.
        max: f32,
        /// What went wrong.
        reason: String,
    },

    /// `calculate_qparams` on an observer that never computes parameters
    /// (Placeholder, Noop, Recording: PyTorch raises too).
    #[error("{observer}: calculate_qparams is not defined for this observer: {reason}")]
    NoQParams {
        /// The observer.
        observer: &'static str,
        /// Why, and what to use instead.
        reason: &'static str,
    },

    /// Merging two observers (or loading a state) whose configurations differ, or merging
    /// observers whose statistics cannot be merged.
    #[error("{observer}: cannot merge: {reason}")]
    MergeUnsupported {
        /// The observer.
        observer: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },

    /// A saved state that is inconsistent (wrong histogram length, min > max, non-finite values).
    #[error("{observer}: invalid saved state: {reason}; save it again with Observer::state")]
    InvalidState {
        /// The observer.
        observer: &'static str,
        /// What is inconsistent.
        reason: String,
    },
}

/// `Result` with [`ObserveError`].
pub type ObserveResult<T> = Result<T, ObserveError>;
