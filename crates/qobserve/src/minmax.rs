//! `MinMaxObserver`, `MovingAverageMinMaxObserver`, `PerChannelMinMaxObserver` and
//! `MovingAveragePerChannelMinMaxObserver`, bit-exact with PyTorch 2.15.
//!
//! Non-finite input: NaN and ±Inf are rejected with [`ObserveError::NonFinite`] and leave the
//! observer unchanged (PyTorch stores them and later returns NaN or infinite scales).

use ndarray::ArrayViewD;

use crate::common::{delegate_observer, wrong_spec, wrong_statistics};
use crate::kernels::min_max;
use crate::observer::{ChannelRanges, Counters, ObservedRange, Statistics, first_bad, with_slice};
use crate::qparams::{Granularity, Uniform};
use crate::{ObserveError, ObserveResult, ObserverSpec, ObserverState, ObserverStats, QParams};

const NON_FINITE_FIX: &str = "min/max observers reject NaN and ±Inf (PyTorch would return a NaN or infinite \
                              scale); clean the data, or use HistogramObserver, which skips ±Inf";

/// Checks `averaging_constant` (PyTorch only checks it against `is_dynamic`).
fn check_averaging(observer: &'static str, c: f64, is_dynamic: bool) -> ObserveResult<f32> {
    if !(c > 0.0 && c <= 1.0) {
        return Err(ObserveError::InvalidArgument {
            observer,
            name: "averaging_constant",
            value: c.to_string(),
            reason: "the weight of each new batch must be in (0, 1] (PyTorch's default is 0.01)",
        });
    }
    if is_dynamic && c != 1.0 {
        return Err(ObserveError::IncompatibleOptions {
            observer,
            options: format!("is_dynamic=true, averaging_constant={c}"),
            reason: "dynamic quantization needs averaging_constant=1 (PyTorch raises too)",
        });
    }
    // Used as a float32 scalar in `averaging_constant * (cur - val)`.
    Ok(c as f32)
}

/// Per-tensor min and max of `x`, `None` for an empty tensor, an error for NaN/±Inf.
fn tensor_range(observer: &'static str, x: &ArrayViewD<'_, f32>) -> ObserveResult<Option<(f32, f32)>> {
    if x.is_empty() {
        return Ok(None);
    }
    let r = match x.as_slice_memory_order() {
        Some(s) => min_max(s),
        None => with_slice(x, min_max),
    };
    if !r.finite {
        let (index, value) = first_bad(x, true).unwrap_or((0, f32::NAN));
        return Err(ObserveError::NonFinite { observer, index, value, fix: NON_FINITE_FIX });
    }
    Ok(Some((r.min, r.max)))
}

/// `min + c * (cur - min)` in float32, PyTorch's moving-average update.
fn ema(old: f32, cur: f32, c: f32) -> f32 {
    old + c * (cur - old)
}

/// Running min/max (or its moving average) of whole tensors.
#[derive(Debug, Clone)]
struct PerTensorCore {
    spec: ObserverSpec,
    name: &'static str,
    uniform: Uniform,
    averaging: Option<f32>,
    range: Option<(f32, f32)>,
    counters: Counters,
}

impl PerTensorCore {
    fn new(spec: &ObserverSpec) -> ObserveResult<Self> {
        let (name, args, averaging) = match spec {
            ObserverSpec::MinMax { args } => (MinMaxObserver::NAME, args, None),
            ObserverSpec::MovingAverageMinMax { averaging_constant, args } => {
                let name = MovingAverageMinMaxObserver::NAME;
                (name, args, Some(check_averaging(name, *averaging_constant, args.is_dynamic)?))
            }
            other => return Err(wrong_spec("MinMaxObserver", other)),
        };
        let uniform = Uniform::new(name, *args, Granularity::PerTensor)?;
        Ok(Self { spec: spec.clone(), name, uniform, averaging, range: None, counters: Counters::default() })
    }

    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> ObserveResult<()> {
        let Some((lo, hi)) = tensor_range(self.name, &x)? else { return Ok(()) };
        self.range = Some(match (self.range, self.averaging) {
            (None, _) => (lo, hi),
            (Some((min, max)), None) => (if lo < min { lo } else { min }, if hi > max { hi } else { max }),
            (Some((min, max)), Some(c)) => (ema(min, lo, c), ema(max, hi, c)),
        });
        self.counters.batches += 1;
        self.counters.elements += x.len() as u64;
        Ok(())
    }

    fn calculate_qparams(&self) -> ObserveResult<QParams> {
        let (min, max) = self.range.ok_or(ObserveError::NotObserved { observer: self.name, detail: "" })?;
        self.uniform.per_tensor(self.name, min, max)
    }

    fn stats(&self) -> ObserverStats {
        ObserverStats {
            observer: self.name.to_string(),
            counters: self.counters,
            range: self.range.map(|(min, max)| ObservedRange::PerTensor { min, max }),
        }
    }

    fn state(&self) -> ObserverState {
        ObserverState {
            spec: self.spec.clone(),
            counters: self.counters,
            statistics: Statistics::MinMax(self.range),
        }
    }

    fn stats_of(&self, state: &ObserverState) -> ObserveResult<Option<(f32, f32)>> {
        state.check_spec(self.name, &self.spec)?;
        match &state.statistics {
            Statistics::MinMax(range) => {
                if let Some((min, max)) = range
                    && !(min.is_finite() && max.is_finite() && min <= max)
                {
                    return Err(ObserveError::InvalidState {
                        observer: self.name,
                        reason: format!("range [{min}, {max}] must be finite with min <= max"),
                    });
                }
                Ok(*range)
            }
            other => Err(wrong_statistics(self.name, other)),
        }
    }

    fn load_state(&mut self, state: &ObserverState) -> ObserveResult<()> {
        self.range = self.stats_of(state)?;
        self.counters = state.counters;
        Ok(())
    }

    fn merge(&mut self, other: &ObserverState) -> ObserveResult<()> {
        let theirs = self.stats_of(other)?;
        self.range = match (self.range, theirs) {
            (mine, None) => mine,
            (None, theirs) => theirs,
            (Some((a, b)), Some((c, d))) => {
                if self.averaging.is_some() {
                    return Err(moving_average_merge(self.name));
                }
                Some((a.min(c), b.max(d)))
            }
        };
        self.counters.add(&other.counters);
        Ok(())
    }
}

/// Running min/max (or its moving average) per channel.
#[derive(Debug, Clone)]
struct PerChannelCore {
    spec: ObserverSpec,
    name: &'static str,
    uniform: Uniform,
    ch_axis: i64,
    averaging: Option<f32>,
    ranges: Option<ChannelRanges>,
    counters: Counters,
}

/// Resolves PyTorch's `ch_axis` (negative counts from the end) against `ndim`.
pub(crate) fn resolve_axis(observer: &'static str, ch_axis: i64, ndim: usize) -> ObserveResult<usize> {
    let n = ndim as i64;
    let axis = if ch_axis < 0 { ch_axis + n } else { ch_axis };
    if ndim == 0 || axis < 0 || axis >= n {
        return Err(ObserveError::AxisOutOfRange { observer, ch_axis, ndim });
    }
    Ok(axis as usize)
}

impl PerChannelCore {
    fn new(spec: &ObserverSpec) -> ObserveResult<Self> {
        let (name, args, ch_axis, averaging) = match spec {
            ObserverSpec::PerChannelMinMax { ch_axis, args } => {
                (PerChannelMinMaxObserver::NAME, args, *ch_axis, None)
            }
            ObserverSpec::MovingAveragePerChannelMinMax { averaging_constant, ch_axis, args } => {
                let name = MovingAveragePerChannelMinMaxObserver::NAME;
                (name, args, *ch_axis, Some(check_averaging(name, *averaging_constant, false)?))
            }
            other => return Err(wrong_spec("PerChannelMinMaxObserver", other)),
        };
        if args.is_dynamic {
            return Err(ObserveError::IncompatibleOptions {
                observer: name,
                options: "is_dynamic=true".into(),
                reason: "per-channel observers do not support dynamic quantization (PyTorch raises too)",
            });
        }
        let uniform = Uniform::new(name, *args, Granularity::PerChannel)?;
        Ok(Self {
            spec: spec.clone(),
            name,
            uniform,
            ch_axis,
            averaging,
            ranges: None,
            counters: Counters::default(),
        })
    }

    /// Per-channel min and max of `x` along `axis`.
    fn channel_ranges(&self, x: &ArrayViewD<'_, f32>, axis: usize) -> ObserveResult<(Vec<f32>, Vec<f32>)> {
        let shape = x.shape();
        let channels = shape[axis];
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let mut mins = vec![f32::INFINITY; channels];
        let mut maxs = vec![f32::NEG_INFINITY; channels];
        let mut finite = true;
        with_slice(x, |data| {
            if inner >= 32 {
                // Long contiguous runs per channel (NCHW activations, weights along axis 0).
                for o in 0..outer {
                    for c in 0..channels {
                        let start = (o * channels + c) * inner;
                        let r = min_max(&data[start..start + inner]);
                        mins[c] = if r.min < mins[c] { r.min } else { mins[c] };
                        maxs[c] = if r.max > maxs[c] { r.max } else { maxs[c] };
                        finite &= r.finite;
                    }
                }
            } else {
                // Short runs (channels last): fold whole rows into the per-channel accumulators,
                // element by element, which vectorises across channels.
                let mut bad = vec![0.0f32; channels];
                for row in data.chunks_exact(channels * inner) {
                    for (k, &v) in row.iter().enumerate() {
                        let c = k / inner;
                        mins[c] = if v < mins[c] { v } else { mins[c] };
                        maxs[c] = if v > maxs[c] { v } else { maxs[c] };
                        bad[c] += v * 0.0;
                    }
                }
                finite = bad.iter().all(|&b| b == 0.0);
            }
        });
        if !finite {
            let (index, value) = first_bad(x, true).unwrap_or((0, f32::NAN));
            return Err(ObserveError::NonFinite { observer: self.name, index, value, fix: NON_FINITE_FIX });
        }
        Ok((mins, maxs))
    }

    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> ObserveResult<()> {
        // PyTorch returns before looking at ch_axis when the tensor is empty.
        if x.is_empty() {
            return Ok(());
        }
        let axis = resolve_axis(self.name, self.ch_axis, x.ndim())?;
        let channels = x.shape()[axis];
        if let Some(r) = &self.ranges
            && r.min.len() != channels
        {
            return Err(ObserveError::ChannelCountMismatch {
                observer: self.name,
                axis,
                expected: r.min.len(),
                got: channels,
            });
        }
        let (mins, maxs) = self.channel_ranges(&x, axis)?;
        match (&mut self.ranges, self.averaging) {
            (None, _) => self.ranges = Some(ChannelRanges { axis, min: mins, max: maxs }),
            (Some(r), None) => {
                for (m, v) in r.min.iter_mut().zip(&mins) {
                    *m = if *v < *m { *v } else { *m };
                }
                for (m, v) in r.max.iter_mut().zip(&maxs) {
                    *m = if *v > *m { *v } else { *m };
                }
                r.axis = axis;
            }
            (Some(r), Some(c)) => {
                for (m, &v) in r.min.iter_mut().zip(&mins) {
                    *m = ema(*m, v, c);
                }
                for (m, &v) in r.max.iter_mut().zip(&maxs) {
                    *m = ema(*m, v, c);
                }
                r.axis = axis;
            }
        }
        self.counters.batches += 1;
        self.counters.elements += x.len() as u64;
        Ok(())
    }

    fn calculate_qparams(&self) -> ObserveResult<QParams> {
        let r = self.ranges.as_ref().ok_or(ObserveError::NotObserved { observer: self.name, detail: "" })?;
        self.uniform.per_channel(self.name, &r.min, &r.max, r.axis)
    }

    fn stats(&self) -> ObserverStats {
        ObserverStats {
            observer: self.name.to_string(),
            counters: self.counters,
            range: self.ranges.as_ref().map(|r| ObservedRange::PerChannel {
                axis: r.axis,
                min: r.min.clone(),
                max: r.max.clone(),
            }),
        }
    }

    fn state(&self) -> ObserverState {
        ObserverState {
            spec: self.spec.clone(),
            counters: self.counters,
            statistics: Statistics::PerChannel(self.ranges.clone()),
        }
    }

    fn stats_of<'a>(&self, state: &'a ObserverState) -> ObserveResult<Option<&'a ChannelRanges>> {
        state.check_spec(self.name, &self.spec)?;
        match &state.statistics {
            Statistics::PerChannel(ranges) => {
                if let Some(r) = ranges {
                    let ok = r.min.len() == r.max.len()
                        && !r.min.is_empty()
                        && r.min.iter().zip(&r.max).all(|(a, b)| a.is_finite() && b.is_finite() && a <= b);
                    if !ok {
                        return Err(ObserveError::InvalidState {
                            observer: self.name,
                            reason:
                                "per-channel ranges need as many minima as maxima, at least one channel, \
                                     finite values and min <= max"
                                    .into(),
                        });
                    }
                }
                Ok(ranges.as_ref())
            }
            other => Err(wrong_statistics(self.name, other)),
        }
    }

    fn load_state(&mut self, state: &ObserverState) -> ObserveResult<()> {
        self.ranges = self.stats_of(state)?.cloned();
        self.counters = state.counters;
        Ok(())
    }

    fn merge(&mut self, other: &ObserverState) -> ObserveResult<()> {
        let Some(theirs) = self.stats_of(other)? else {
            self.counters.add(&other.counters);
            return Ok(());
        };
        match &mut self.ranges {
            None => self.ranges = Some(theirs.clone()),
            Some(mine) => {
                if self.averaging.is_some() {
                    return Err(moving_average_merge(self.name));
                }
                if mine.axis != theirs.axis || mine.min.len() != theirs.min.len() {
                    return Err(ObserveError::MergeUnsupported {
                        observer: self.name,
                        reason: format!(
                            "this observer has {} channels along axis {}, the other {} along axis {}",
                            mine.min.len(),
                            mine.axis,
                            theirs.min.len(),
                            theirs.axis
                        ),
                    });
                }
                for (m, &v) in mine.min.iter_mut().zip(&theirs.min) {
                    *m = m.min(v);
                }
                for (m, &v) in mine.max.iter_mut().zip(&theirs.max) {
                    *m = m.max(v);
                }
            }
        }
        self.counters.add(&other.counters);
        Ok(())
    }
}

fn moving_average_merge(observer: &'static str) -> ObserveError {
    ObserveError::MergeUnsupported {
        observer,
        reason: "a moving average depends on the order of the batches, so two runs cannot be combined; \
                 calibrate the shards one after the other, or use the MinMax observer"
            .into(),
    }
}

impl PerTensorCore {
    fn reset(&mut self) {
        self.range = None;
        self.counters = Counters::default();
    }
}

impl PerChannelCore {
    fn reset(&mut self) {
        self.ranges = None;
        self.counters = Counters::default();
    }
}

/// PyTorch's `MinMaxObserver`: the running minimum and maximum of every observed tensor.
///
/// Merging two runs is exact: the result equals observing both runs' data.
#[derive(Debug, Clone)]
pub struct MinMaxObserver(PerTensorCore);

impl MinMaxObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "MinMaxObserver";

    /// `MinMaxObserver(**args)`.
    pub fn new(args: crate::UniformArgs) -> ObserveResult<Self> {
        Self::from_spec(&ObserverSpec::MinMax { args })
    }

    /// Builds from an [`ObserverSpec::MinMax`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        match spec {
            ObserverSpec::MinMax { .. } => PerTensorCore::new(spec).map(Self),
            other => Err(wrong_spec(Self::NAME, other)),
        }
    }

    /// The running `(min_val, max_val)`, `None` before any data.
    pub fn min_max(&self) -> Option<(f32, f32)> {
        self.0.range
    }
}

/// PyTorch's `MovingAverageMinMaxObserver`: the first batch sets min/max, each later one moves
/// them by `averaging_constant * (batch - current)`, in float32.
///
/// Two non-empty runs cannot be merged (the average depends on batch order).
#[derive(Debug, Clone)]
pub struct MovingAverageMinMaxObserver(PerTensorCore);

impl MovingAverageMinMaxObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "MovingAverageMinMaxObserver";

    /// `MovingAverageMinMaxObserver(averaging_constant, **args)`.
    pub fn new(averaging_constant: f64, args: crate::UniformArgs) -> ObserveResult<Self> {
        Self::from_spec(&ObserverSpec::MovingAverageMinMax { averaging_constant, args })
    }

    /// Builds from an [`ObserverSpec::MovingAverageMinMax`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        match spec {
            ObserverSpec::MovingAverageMinMax { .. } => PerTensorCore::new(spec).map(Self),
            other => Err(wrong_spec(Self::NAME, other)),
        }
    }

    /// The averaged `(min_val, max_val)`, `None` before any data.
    pub fn min_max(&self) -> Option<(f32, f32)> {
        self.0.range
    }
}

/// PyTorch's `PerChannelMinMaxObserver`: running min/max per index of `ch_axis`.
///
/// Every batch must have the same channel count. Merging is exact.
#[derive(Debug, Clone)]
pub struct PerChannelMinMaxObserver(PerChannelCore);

impl PerChannelMinMaxObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "PerChannelMinMaxObserver";

    /// `PerChannelMinMaxObserver(ch_axis, **args)`.
    pub fn new(ch_axis: i64, args: crate::UniformArgs) -> ObserveResult<Self> {
        Self::from_spec(&ObserverSpec::PerChannelMinMax { ch_axis, args })
    }

    /// Builds from an [`ObserverSpec::PerChannelMinMax`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        match spec {
            ObserverSpec::PerChannelMinMax { .. } => PerChannelCore::new(spec).map(Self),
            other => Err(wrong_spec(Self::NAME, other)),
        }
    }
}

/// PyTorch's `MovingAveragePerChannelMinMaxObserver`: the moving average of per-channel min/max.
#[derive(Debug, Clone)]
pub struct MovingAveragePerChannelMinMaxObserver(PerChannelCore);

impl MovingAveragePerChannelMinMaxObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "MovingAveragePerChannelMinMaxObserver";

    /// `MovingAveragePerChannelMinMaxObserver(averaging_constant, ch_axis, **args)`.
    pub fn new(averaging_constant: f64, ch_axis: i64, args: crate::UniformArgs) -> ObserveResult<Self> {
        Self::from_spec(&ObserverSpec::MovingAveragePerChannelMinMax { averaging_constant, ch_axis, args })
    }

    /// Builds from an [`ObserverSpec::MovingAveragePerChannelMinMax`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        match spec {
            ObserverSpec::MovingAveragePerChannelMinMax { .. } => PerChannelCore::new(spec).map(Self),
            other => Err(wrong_spec(Self::NAME, other)),
        }
    }
}

delegate_observer!(MinMaxObserver, 0);
delegate_observer!(MovingAverageMinMaxObserver, 0);
delegate_observer!(PerChannelMinMaxObserver, 0);
delegate_observer!(MovingAveragePerChannelMinMaxObserver, 0);
