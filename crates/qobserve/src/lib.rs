//! Observers: they watch float tensors during calibration and choose scales and zero points.
//!
//! * PyTorch's observers (`torch.ao.quantization.observer`, 2.15) with PyTorch's arguments,
//!   defaults and float32 arithmetic: [`MinMaxObserver`], [`MovingAverageMinMaxObserver`],
//!   [`PerChannelMinMaxObserver`], [`MovingAveragePerChannelMinMaxObserver`] (scales and zero
//!   points bit-identical to PyTorch), [`HistogramObserver`] (PyTorch's histogram updates and L2
//!   search with its float32 reductions; histogram, chosen bins and parameters bit-identical on
//!   the golden fixtures), [`PlaceholderObserver`],
//!   [`FixedQParamsObserver`], [`NoopObserver`], [`RecordingObserver`].
//! * Three calibrators beyond PyTorch: [`PercentileCalibrator`], [`EntropyCalibrator`]
//!   (TensorRT's KL method) and [`MseCalibrator`].
//!
//! All implement one [`Observer`] trait; an [`ObserverSpec`] describes one as plain data (the
//! Rust form of `MinMaxObserver.with_args(...)`) and builds it; [`defaults`] holds PyTorch's named
//! defaults. [`ObserverState`] serializes what an observer has seen, so a calibration can be saved,
//! resumed, and merged with another run over other data.
//!
//! Differences from PyTorch, all on purpose (see `OBSERVERS.md` in this crate):
//! computing parameters before any data is an error, not scale 1.0 / zero point 0; NaN is an
//! error for every computing observer and ±Inf for the min/max ones (PyTorch returns NaN or
//! infinite scales); symmetric + reduce_range + quint8 is refused by every observer.
//!
//! ```
//! use ndarray::Array1;
//! use qobserve::{defaults, QParams};
//!
//! let mut act = defaults::x86_activation_observer().build()?; // HistogramObserver(reduce_range=True)
//! let x = Array1::linspace(-1.0f32, 3.0, 1000).into_dyn();
//! act.observe(x.view())?;
//! let QParams::PerTensor { scale, zero_point } = act.calculate_qparams()? else { unreachable!() };
//! assert!(scale > 0.0 && (0..=127).contains(&zero_point));
//! # Ok::<(), qobserve::ObserveError>(())
//! ```

mod basic;
mod build;
mod calibrators;
mod common;
mod error;
mod histogram;
mod kernels;
mod minmax;
mod observer;
mod qparams;
mod spec;

pub use basic::{FixedQParamsObserver, NoopObserver, PlaceholderObserver, RecordingObserver};
pub use calibrators::{EntropyCalibrator, MseCalibrator, PercentileCalibrator};
pub use error::{ObserveError, ObserveResult};
pub use histogram::{HistogramObserver, HistogramSearch};
pub use kernels::torch_sum;
pub use minmax::{
    MinMaxObserver, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
};
pub use observer::{
    ChannelRanges, Counters, HistogramData, ObservedRange, Observer, ObserverState, ObserverStats,
    RecordedTensor, Statistics,
};
pub use qcore;
pub use qcore::{QDType, QError, QParams, QScheme};
pub use spec::{
    CarriedDType, DEFAULT_AVERAGING_CONSTANT, DEFAULT_BINS, DEFAULT_EPS, DEFAULT_UPSAMPLE_RATE, ObserverSpec,
    UniformArgs, defaults,
};

/// This crate's README examples, run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;
