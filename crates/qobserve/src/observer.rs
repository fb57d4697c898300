//! The [`Observer`] trait, its statistics and its serializable state.

use std::fmt;

use ndarray::{ArrayBase, ArrayViewD, Data, Dimension};
use serde::{Deserialize, Serialize};

use crate::{ObserveError, ObserveResult, ObserverSpec, QParams};

/// Watches float tensors during calibration and chooses quantization parameters.
///
/// Every observer of this crate (PyTorch's and the extra calibrators) implements it, so a
/// qconfig can hold a `Box<dyn Observer>` built from an [`ObserverSpec`].
///
/// ```
/// use ndarray::array;
/// use qobserve::{ObserverSpec, QParams};
///
/// let mut obs = ObserverSpec::min_max().build()?;
/// obs.observe(array![[-1.0f32, 2.0], [0.5, 3.0]].view().into_dyn())?;
/// let QParams::PerTensor { scale, zero_point } = obs.calculate_qparams()? else { unreachable!() };
/// assert_eq!((scale, zero_point), (f64::from(4.0f32 / 255.0), 64));
/// # Ok::<(), qobserve::ObserveError>(())
/// ```
pub trait Observer: fmt::Debug + Send + Sync {
    /// PyTorch's class name (`MinMaxObserver`, ...) or the calibrator's name.
    fn name(&self) -> &'static str;

    /// The description this observer was built from.
    fn spec(&self) -> ObserverSpec;

    /// Records statistics of `x` (PyTorch's `forward`). An empty tensor changes nothing.
    ///
    /// On error the observer's state is unchanged.
    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> ObserveResult<()>;

    /// [`Observer::observe`] on the same `x`, `times` times in a row (PyTorch observes the
    /// output of a fused module twice). Observers that can do it in one pass override this.
    fn observe_repeated(&mut self, x: ArrayViewD<'_, f32>, times: usize) -> ObserveResult<()> {
        for _ in 0..times {
            self.observe(x.view())?;
        }
        Ok(())
    }

    /// Scales and zero points from the statistics so far (PyTorch's `calculate_qparams`).
    ///
    /// An error, not PyTorch's silent scale 1.0 / zero point 0, if nothing was observed.
    fn calculate_qparams(&self) -> ObserveResult<QParams>;

    /// Forgets everything observed (PyTorch's `reset_min_max_vals`).
    fn reset(&mut self);

    /// What has been observed so far.
    fn stats(&self) -> ObserverStats;

    /// The full state: description, counters and statistics, serializable with serde.
    fn state(&self) -> ObserverState;

    /// Replaces this observer's statistics with a saved state of the same description.
    fn load_state(&mut self, state: &ObserverState) -> ObserveResult<()>;

    /// Adds the statistics of another calibration run (a saved state of the same description),
    /// as if this observer had also seen that run's data. See each observer for how exact that is.
    fn merge(&mut self, other: &ObserverState) -> ObserveResult<()>;
}

impl dyn Observer {
    /// [`Observer::observe`] for any `ndarray` array or view of f32.
    pub fn observe_array<S, D>(&mut self, x: &ArrayBase<S, D>) -> ObserveResult<()>
    where
        S: Data<Elem = f32>,
        D: Dimension,
    {
        self.observe(x.view().into_dyn())
    }
}

/// Counters every observer keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Non-empty tensors observed.
    pub batches: u64,
    /// Elements observed (skipped ones included).
    pub elements: u64,
    /// ±Inf values skipped (histogram-based observers; PyTorch 2.x drops them too).
    pub skipped_infinite: u64,
}

impl Counters {
    pub(crate) fn add(&mut self, other: &Counters) {
        self.batches += other.batches;
        self.elements += other.elements;
        self.skipped_infinite += other.skipped_infinite;
    }
}

/// The observed range, as an observer reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ObservedRange {
    /// One range (running min/max, moving averages, or the histogram's range).
    PerTensor {
        /// Minimum.
        min: f32,
        /// Maximum.
        max: f32,
    },
    /// One range per channel.
    PerChannel {
        /// The channel axis (resolved, non-negative).
        axis: usize,
        /// Minimum per channel.
        min: Vec<f32>,
        /// Maximum per channel.
        max: Vec<f32>,
    },
}

/// What [`Observer::stats`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserverStats {
    /// The observer's name.
    pub observer: String,
    /// Counters.
    pub counters: Counters,
    /// The observed range, if the observer keeps one and has seen data.
    pub range: Option<ObservedRange>,
}

/// A running histogram: `counts.len()` equal bins over `[min, max]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramData {
    /// Left edge.
    pub min: f32,
    /// Right edge.
    pub max: f32,
    /// Float32 bin weights (fractional after histograms of different ranges were combined).
    pub counts: Vec<f32>,
}

/// A running per-channel range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRanges {
    /// Resolved channel axis.
    pub axis: usize,
    /// Minimum per channel.
    pub min: Vec<f32>,
    /// Maximum per channel.
    pub max: Vec<f32>,
}

/// A tensor kept by the recording observer. Values are stored as raw f32 bits so NaN and ±Inf
/// survive JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// `f32::to_bits` of each value, row-major.
    pub bits: Vec<u32>,
}

/// The statistics part of an [`ObserverState`]. `None` means "nothing observed yet" (JSON has no
/// infinities, so PyTorch's ±inf sentinels are not used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Statistics {
    /// Observers without statistics (FixedQParams, Placeholder, Noop).
    Stateless,
    /// Running (or moving-average) min and max.
    MinMax(Option<(f32, f32)>),
    /// Running (or moving-average) per-channel min and max.
    PerChannel(Option<ChannelRanges>),
    /// A histogram of the values (HistogramObserver, percentile and MSE calibrators).
    Histogram(Option<HistogramData>),
    /// A histogram of |x| plus the signed range (entropy calibrator).
    AbsHistogram(Option<(HistogramData, f32, f32)>),
    /// Recorded tensors.
    Recording(Vec<RecordedTensor>),
}

/// Everything needed to resume or merge a calibration: the description, the counters and the
/// statistics. Serialize it with serde (JSON round-trips every value exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserverState {
    /// The observer's description.
    pub spec: ObserverSpec,
    /// Counters.
    pub counters: Counters,
    /// Statistics.
    pub statistics: Statistics,
}

impl ObserverState {
    /// Builds an observer from the description and loads the statistics into it.
    pub fn build(&self) -> ObserveResult<Box<dyn Observer>> {
        let mut observer = self.spec.build()?;
        observer.load_state(self)?;
        Ok(observer)
    }

    /// Checks that the state belongs to an observer with description `spec`.
    pub(crate) fn check_spec(&self, observer: &'static str, spec: &ObserverSpec) -> ObserveResult<()> {
        if &self.spec == spec {
            Ok(())
        } else {
            Err(ObserveError::MergeUnsupported {
                observer,
                reason: format!(
                    "the other state was made by a different observer description ({:?}, this one is {:?}); \
                     merge states of identically configured observers",
                    self.spec, spec
                ),
            })
        }
    }
}

/// Flat index of the first NaN (or, if `infinite_too`, ±Inf) in logical order, and its value.
pub(crate) fn first_bad(x: &ArrayViewD<'_, f32>, infinite_too: bool) -> Option<(usize, f32)> {
    x.iter().enumerate().find(|(_, v)| v.is_nan() || (infinite_too && v.is_infinite())).map(|(i, &v)| (i, v))
}

/// Runs `f` on the elements of `x` as one contiguous slice, copying only if `x` is not in
/// standard layout.
pub(crate) fn with_slice<R>(x: &ArrayViewD<'_, f32>, f: impl FnOnce(&[f32]) -> R) -> R {
    match x.as_slice() {
        Some(s) => f(s),
        None => {
            let owned = x.as_standard_layout();
            f(owned.as_slice().unwrap_or(&[]))
        }
    }
}
