//! `HistogramObserver` (PyTorch 2.15) and the running histogram the calibrators share.
//!
//! The histogram follows PyTorch's `forward` step by step: `torch.histc` of the first batch on
//! its own range; later batches are histogrammed on the union range, and the stored histogram is
//! moved onto it by `_upscale_histogram` (each bin split into `upsample_rate` equal parts whose
//! midpoints are bucketed into the new bins) or, for a single-valued histogram, by `histc` of that
//! value. `calculate_qparams` runs `_non_linear_param_search`, the L2 search of caffe2's
//! `norm_minimization.cc`, with PyTorch's float32 reductions reproduced (see `kernels`).
//!
//! Non-finite input: ±Inf values are skipped and counted (PyTorch 2.x drops them with a
//! warning); NaN is rejected with [`ObserveError::NonFinite`] (PyTorch's `histc` raises on it).

use std::borrow::Cow;

use ndarray::ArrayViewD;

use crate::common::{delegate_observer, wrong_spec, wrong_statistics};
use crate::kernels::{Linspace, div_floor, histc, min_max, torch_cumsum, torch_sum};
use crate::observer::{Counters, HistogramData, ObservedRange, Statistics, first_bad};
use crate::qparams::{Granularity, Uniform};
use crate::spec::{DEFAULT_UPSAMPLE_RATE, UniformArgs};
use crate::{ObserveError, ObserveResult, ObserverSpec, ObserverState, ObserverStats, QDType, QParams};

const NAN_FIX: &str = "histogram observers skip ±Inf but cannot place NaN in a bin (PyTorch's histc raises); \
                       remove NaN from the data";

/// The finite part of an observed tensor.
pub(crate) struct FiniteBatch<'a> {
    /// The finite values (borrowed when there were no infinities).
    pub values: Cow<'a, [f32]>,
    /// Their minimum and maximum, `None` if every value was infinite.
    pub range: Option<(f32, f32)>,
    /// How many ±Inf values were dropped.
    pub skipped: u64,
}

/// Splits off the finite values of `x`: `None` for an empty tensor, an error for NaN.
pub(crate) fn finite_batch<'a>(
    observer: &'static str,
    x: &'a ArrayViewD<'_, f32>,
) -> ObserveResult<Option<FiniteBatch<'a>>> {
    if x.is_empty() {
        return Ok(None);
    }
    let values: Cow<'a, [f32]> = match x.as_slice_memory_order() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    };
    let r = min_max(&values);
    if r.finite {
        return Ok(Some(FiniteBatch { values, range: Some((r.min, r.max)), skipped: 0 }));
    }
    if let Some((index, value)) = first_bad(x, false) {
        return Err(ObserveError::NonFinite { observer, index, value, fix: NAN_FIX });
    }
    let kept: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let skipped = (values.len() - kept.len()) as u64;
    let r = min_max(&kept);
    let range = if kept.is_empty() { None } else { Some((r.min, r.max)) };
    Ok(Some(FiniteBatch { values: Cow::Owned(kept), range, skipped }))
}

/// Checks a bin count and upsample rate.
pub(crate) fn check_bins(observer: &'static str, bins: usize, upsample_rate: usize) -> ObserveResult<()> {
    if bins == 0 || bins > 1 << 24 {
        return Err(ObserveError::InvalidArgument {
            observer,
            name: "bins",
            value: bins.to_string(),
            reason: "use between 1 and 2^24 bins (PyTorch's default is 2048)",
        });
    }
    if upsample_rate == 0 || bins.saturating_mul(upsample_rate) > 1 << 24 {
        return Err(ObserveError::InvalidArgument {
            observer,
            name: "upsample_rate",
            value: upsample_rate.to_string(),
            reason: "use an upsample rate >= 1 with bins * upsample_rate <= 2^24 (PyTorch 2.15 uses 16)",
        });
    }
    Ok(())
}

/// A running histogram with PyTorch's update and merge rules.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunningHistogram {
    pub bins: usize,
    pub upsample_rate: usize,
    pub data: Option<HistogramData>,
}

impl RunningHistogram {
    pub(crate) fn new(bins: usize, upsample_rate: usize) -> Self {
        Self { bins, upsample_rate, data: None }
    }

    /// Adds finite `values` whose range is `[lo, hi]`, as `HistogramObserver.forward`.
    /// Fails, changing nothing, if the union range is too wide for float32.
    pub(crate) fn add(
        &mut self,
        observer: &'static str,
        values: &[f32],
        lo: f32,
        hi: f32,
    ) -> ObserveResult<()> {
        self.add_times(observer, values, lo, hi, 1)
    }

    /// [`RunningHistogram::add`] `times` times in a row (at least once): after the first, the
    /// range no longer changes, so each further `forward` adds the same update histogram, which
    /// is computed once here and added `times - 1` more times in float32, as PyTorch adds it.
    pub(crate) fn add_times(
        &mut self,
        observer: &'static str,
        values: &[f32],
        lo: f32,
        hi: f32,
        times: usize,
    ) -> ObserveResult<()> {
        let (new_min, new_max) = match &self.data {
            None => (lo, hi),
            Some(d) => (d.min.min(lo), d.max.max(hi)),
        };
        check_width(observer, new_min, new_max)?;
        let update = histc(values, self.bins, new_min, new_max);
        let mut data = match self.data.take() {
            None => HistogramData { min: lo, max: hi, counts: update.clone() },
            Some(mut d) => {
                if new_min == d.min && new_max == d.max {
                    for (c, u) in d.counts.iter_mut().zip(&update) {
                        *c += *u;
                    }
                    d
                } else {
                    let mut moved = self.transform(&d, new_min, new_max);
                    for (m, u) in moved.iter_mut().zip(&update) {
                        *m += *u;
                    }
                    HistogramData { min: new_min, max: new_max, counts: moved }
                }
            }
        };
        for _ in 1..times {
            for (c, u) in data.counts.iter_mut().zip(&update) {
                *c += *u;
            }
        }
        self.data = Some(data);
        Ok(())
    }

    /// `orig` moved onto `[new_min, new_max]` (which contains its range): the
    /// `_combine_histograms` of PyTorch 2.15 without the added update histogram.
    fn transform(&self, orig: &HistogramData, new_min: f32, new_max: f32) -> Vec<f32> {
        if orig.min == new_min && orig.max == new_max {
            return orig.counts.clone();
        }
        if orig.min == orig.max {
            let bin_value = torch_sum(&orig.counts);
            let one = histc(&[orig.min], self.bins, new_min, new_max);
            return one.into_iter().map(|v| v * bin_value).collect();
        }
        self.upscale(orig, new_min, new_max)
    }

    /// `_upscale_histogram`: every bin split into `upsample_rate` parts of weight
    /// `count / upsample_rate`, each part placed by `bucketize(midpoint, linspace(new_min,
    /// new_max, bins + 1), right=True) - 1`, clamped, and summed with `bincount`.
    fn upscale(&self, orig: &HistogramData, new_min: f32, new_max: f32) -> Vec<f32> {
        let (bins, up) = (self.bins, self.upsample_rate);
        let n = bins * up;
        let upf = up as f32;
        let bin_size = (orig.max - orig.min) / n as f32;
        let half = 0.5f32 * bin_size;
        let mids = Linspace::new(orig.min, orig.max, n + 1);
        let edges = Linspace::new(new_min, new_max, bins + 1);
        let edges: Vec<f32> = (0..=bins).map(|i| edges.at(i)).collect();
        let mut out = vec![0.0f32; bins];
        for j in 0..n {
            let weight = orig.counts[j / up] / upf;
            let mid = mids.at(j) + half;
            let bucket = edges.partition_point(|&e| e <= mid);
            let bucket = bucket.saturating_sub(1).min(bins - 1);
            out[bucket] += weight;
        }
        out
    }

    /// Adds another histogram (same bin count): both are moved onto the union range and added.
    pub(crate) fn merge(&mut self, observer: &'static str, other: &HistogramData) -> ObserveResult<()> {
        let Some(mine) = &self.data else {
            self.data = Some(other.clone());
            return Ok(());
        };
        let (new_min, new_max) = (mine.min.min(other.min), mine.max.max(other.max));
        check_width(observer, new_min, new_max)?;
        let mut counts = self.transform(mine, new_min, new_max);
        let theirs = self.transform(other, new_min, new_max);
        for (c, t) in counts.iter_mut().zip(&theirs) {
            *c += *t;
        }
        self.data = Some(HistogramData { min: new_min, max: new_max, counts });
        Ok(())
    }

    /// Checks a saved histogram against this one's bin count.
    pub(crate) fn validate(&self, observer: &'static str, d: &HistogramData) -> ObserveResult<()> {
        let ok = d.counts.len() == self.bins
            && d.min.is_finite()
            && d.max.is_finite()
            && d.min <= d.max
            && (d.max - d.min).is_finite()
            && d.counts.iter().all(|c| c.is_finite() && *c >= 0.0);
        if ok {
            Ok(())
        } else {
            Err(ObserveError::InvalidState {
                observer,
                reason: format!(
                    "a histogram needs {} finite, non-negative bins over a finite range with min <= max \
                     (got {} bins over [{}, {}])",
                    self.bins,
                    d.counts.len(),
                    d.min,
                    d.max
                ),
            })
        }
    }
}

/// Fails if `max - min` overflows float32: every histogram computation divides by it.
fn check_width(observer: &'static str, min: f32, max: f32) -> ObserveResult<()> {
    if (max - min).is_finite() {
        Ok(())
    } else {
        Err(ObserveError::RangeUnusable {
            observer,
            min,
            max,
            reason: "max - min overflows float32, so no histogram bin has a finite width".into(),
        })
    }
}

/// The result of `_non_linear_param_search`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSearch {
    /// First bin kept.
    pub start_bin: usize,
    /// Last bin kept.
    pub end_bin: usize,
    /// `min_val + bin_width * start_bin` (float32).
    pub new_min: f32,
    /// `min_val + bin_width * (end_bin + 1)` (float32).
    pub new_max: f32,
    /// The L2 error of the chosen range (`inf` if the search never moved).
    pub norm: f64,
    /// How many candidate ranges were evaluated.
    pub evaluations: usize,
}

/// `_non_linear_param_search` over histogram `h` for `dst_nbins` quantization levels.
pub(crate) fn non_linear_param_search(h: &HistogramData, dst_nbins: f64) -> HistogramSearch {
    let bins = h.counts.len();
    let bin_width = (h.max - h.min) / bins as f32;
    let total = f64::from(torch_sum(&h.counts));
    let csum = torch_cumsum(&h.counts);
    let stepsize = 1e-5f64;
    let (mut alpha, mut beta) = (0.0f64, 1.0f64);
    let (mut start, mut end) = (0usize, bins - 1);
    let mut norm_min = f64::INFINITY;
    let mut evaluations = 0;
    let mut scratch = QuantErrorScratch::default();
    while alpha < beta {
        let next_alpha = alpha + stepsize;
        let next_beta = beta - stepsize;
        // `cSum[l] < next_alpha * total` compares a float32 tensor with a Python float:
        // the float is rounded to float32 first.
        let lo_mass = (next_alpha * total) as f32;
        let hi_mass = (next_beta * total) as f32;
        let mut l = start;
        let mut r = end;
        while l < end && csum[l] < lo_mass {
            l += 1;
        }
        while r > start && csum[r] > hi_mass {
            r -= 1;
        }
        let (mut next_start, mut next_end) = (start, end);
        if l - start > end - r {
            next_start = l;
            alpha = next_alpha;
        } else {
            next_end = r;
            beta = next_beta;
        }
        if next_start == start && next_end == end {
            continue;
        }
        let norm = compute_quantization_error(h, next_start, next_end, dst_nbins, &mut scratch);
        evaluations += 1;
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start = next_start;
        end = next_end;
    }
    HistogramSearch {
        start_bin: start,
        end_bin: end,
        new_min: h.min + bin_width * start as f32,
        new_max: h.min + bin_width * (end + 1) as f32,
        norm: norm_min,
        evaluations,
    }
}

#[derive(Default)]
struct QuantErrorScratch {
    norm: Vec<f32>,
}

/// `_compute_quantization_error(start, end)`: each source bin is a uniform density mapped onto
/// `dst_nbins` bins spanning source bins `start..=end`; the squared distance to the destination
/// bin centres is integrated in float32 tensor arithmetic (Python doubles rounded to float32
/// where they meet a tensor) and summed with `torch.sum`.
fn compute_quantization_error(
    h: &HistogramData,
    start: usize,
    end: usize,
    dst_nbins: f64,
    scratch: &mut QuantErrorScratch,
) -> f64 {
    let bins = h.counts.len();
    let bin_width = (f64::from(h.max) - f64::from(h.min)) / bins as f64;
    let dst_bin_width = bin_width * (end - start + 1) as f64 / dst_nbins;
    if dst_bin_width == 0.0 {
        return 0.0;
    }
    let bw = bin_width as f32;
    let dbw = dst_bin_width as f32;
    let half = (dst_bin_width / 2.0) as f32;
    let neg_half = (-dst_bin_width / 2.0) as f32;
    let last_dst = (dst_nbins - 1.0) as f32;
    let get_norm =
        |begin: f32, end: f32, density: f32| density * ((end * end * end - begin * begin * begin) / 3.0);
    // `_get_norm(tensor(-dst_bin_width / 2), tensor(dst_bin_width / 2), density)` factors as
    // density * (a 0-dim float32 norm).
    let full_bin = (half * half * half - neg_half * neg_half * neg_half) / 3.0;
    scratch.norm.clear();
    scratch.norm.extend(h.counts.iter().enumerate().map(|(i, &count)| {
        let src_begin = (i as i64 - start as i64) as f32 * bw;
        let src_end = src_begin + bw;
        let dst_of_begin = div_floor(src_begin, dbw).clamp(0.0, last_dst);
        let dst_of_begin_center = (dst_of_begin + 0.5) * dbw;
        let dst_of_end = div_floor(src_end, dbw).clamp(0.0, last_dst);
        let density = count / bw;
        let mut norm = 0.0f32;
        norm += get_norm(src_begin - dst_of_begin_center, half, density);
        norm += (dst_of_end - dst_of_begin - 1.0) * (density * full_bin);
        let dst_of_end_center = dst_of_end * dbw + half;
        norm += get_norm(neg_half, src_end - dst_of_end_center, density);
        norm
    }));
    f64::from(torch_sum(&scratch.norm))
}

/// `2 ** torch.iinfo(dtype).bits`: the destination bin count of the search (256 for the 8-bit
/// types even with reduce_range or a custom range, as in PyTorch).
pub(crate) fn dst_nbins(dtype: QDType) -> f64 {
    match dtype {
        QDType::QUInt8 | QDType::QInt8 => 256.0,
        QDType::QInt32 => 4_294_967_296.0,
        QDType::QUInt4x2 => 16.0,
    }
}

/// What the histogram-based observers keep: a running histogram of the finite values, the
/// counters, and the range arguments their parameters are computed with.
#[derive(Debug, Clone)]
pub(crate) struct HistogramCore {
    pub spec: ObserverSpec,
    pub name: &'static str,
    pub uniform: Uniform,
    pub hist: RunningHistogram,
    pub counters: Counters,
}

impl HistogramCore {
    /// Checks the bin count, upsample rate and range arguments.
    pub(crate) fn new(
        name: &'static str,
        spec: &ObserverSpec,
        bins: usize,
        upsample_rate: usize,
        args: &UniformArgs,
    ) -> ObserveResult<Self> {
        check_bins(name, bins, upsample_rate)?;
        let uniform = Uniform::new(name, *args, Granularity::PerTensor)?;
        Ok(Self {
            spec: spec.clone(),
            name,
            uniform,
            hist: RunningHistogram::new(bins, upsample_rate),
            counters: Counters::default(),
        })
    }

    /// Adds the finite values of `x`.
    pub(crate) fn observe(&mut self, x: ArrayViewD<'_, f32>) -> ObserveResult<()> {
        self.observe_repeated(x, 1)
    }

    /// One pass over `x`: the update histogram is computed once and added `times` times.
    pub(crate) fn observe_repeated(&mut self, x: ArrayViewD<'_, f32>, times: usize) -> ObserveResult<()> {
        let Some(batch) = finite_batch(self.name, &x)? else { return Ok(()) };
        if times == 0 {
            return Ok(());
        }
        if let Some((lo, hi)) = batch.range {
            self.hist.add_times(self.name, &batch.values, lo, hi, times)?;
        }
        let times = times as u64;
        self.counters.batches += times;
        self.counters.elements += x.len() as u64 * times;
        self.counters.skipped_infinite += batch.skipped * times;
        Ok(())
    }

    /// The histogram, or the "nothing observed" error.
    pub(crate) fn data(&self) -> ObserveResult<&HistogramData> {
        self.hist.data.as_ref().ok_or_else(|| self.not_observed())
    }

    /// The "nothing observed" error, telling apart "no data" from "only ±Inf".
    pub(crate) fn not_observed(&self) -> ObserveError {
        let detail =
            if self.counters.skipped_infinite > 0 { ", every value was ±Inf and was skipped" } else { "" };
        ObserveError::NotObserved { observer: self.name, detail }
    }

    pub(crate) fn reset(&mut self) {
        self.hist.data = None;
        self.counters = Counters::default();
    }

    pub(crate) fn stats(&self) -> ObserverStats {
        ObserverStats {
            observer: self.name.to_string(),
            counters: self.counters,
            range: self.hist.data.as_ref().map(|h| ObservedRange::PerTensor { min: h.min, max: h.max }),
        }
    }

    pub(crate) fn state(&self) -> ObserverState {
        ObserverState {
            spec: self.spec.clone(),
            counters: self.counters,
            statistics: Statistics::Histogram(self.hist.data.clone()),
        }
    }

    fn stats_of<'a>(&self, state: &'a ObserverState) -> ObserveResult<Option<&'a HistogramData>> {
        state.check_spec(self.name, &self.spec)?;
        match &state.statistics {
            Statistics::Histogram(h) => {
                if let Some(h) = h {
                    self.hist.validate(self.name, h)?;
                }
                Ok(h.as_ref())
            }
            other => Err(wrong_statistics(self.name, other)),
        }
    }

    pub(crate) fn load_state(&mut self, state: &ObserverState) -> ObserveResult<()> {
        self.hist.data = self.stats_of(state)?.cloned();
        self.counters = state.counters;
        Ok(())
    }

    pub(crate) fn merge(&mut self, other: &ObserverState) -> ObserveResult<()> {
        if let Some(h) = self.stats_of(other)? {
            self.hist.merge(self.name, h)?;
        }
        self.counters.add(&other.counters);
        Ok(())
    }
}

/// PyTorch's `HistogramObserver`: a running histogram of the values, and the range that
/// minimises the L2 quantization error (`_non_linear_param_search`).
///
/// Merging two runs moves both histograms onto the union range with PyTorch's upsampling rule
/// and adds them; like PyTorch's own batch-to-batch combination it is approximate (bin parts
/// move to the bin their midpoint falls in).
#[derive(Debug, Clone)]
pub struct HistogramObserver {
    core: HistogramCore,
}

impl HistogramObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "HistogramObserver";

    /// `HistogramObserver(bins, **args)` with PyTorch 2.15's upsample rate (16).
    pub fn new(bins: usize, args: UniformArgs) -> ObserveResult<Self> {
        Self::from_spec(&ObserverSpec::Histogram { bins, upsample_rate: DEFAULT_UPSAMPLE_RATE, args })
    }

    /// Builds from an [`ObserverSpec::Histogram`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        let ObserverSpec::Histogram { bins, upsample_rate, args } = spec else {
            return Err(wrong_spec(Self::NAME, spec));
        };
        let core = HistogramCore::new(Self::NAME, spec, *bins, *upsample_rate, args)?;
        if args.is_dynamic {
            return Err(ObserveError::IncompatibleOptions {
                observer: Self::NAME,
                options: "is_dynamic=true".into(),
                reason: "HistogramObserver does not support dynamic quantization (PyTorch raises too)",
            });
        }
        Ok(Self { core })
    }

    /// The running histogram, `None` before any finite data.
    pub fn histogram(&self) -> Option<&HistogramData> {
        self.core.hist.data.as_ref()
    }

    /// Runs `_non_linear_param_search` and reports the chosen bins, `None` before any data.
    pub fn search(&self) -> Option<HistogramSearch> {
        self.histogram().map(|h| non_linear_param_search(h, dst_nbins(self.core.uniform.args.dtype)))
    }
}

delegate_observer!(HistogramObserver, core, {
    fn observe_repeated(&mut self, x: ArrayViewD<'_, f32>, times: usize) -> ObserveResult<()> {
        self.core.observe_repeated(x, times)
    }
    fn calculate_qparams(&self) -> ObserveResult<QParams> {
        let search = self.search().ok_or_else(|| self.core.not_observed())?;
        self.core.uniform.per_tensor(Self::NAME, search.new_min, search.new_max)
    }
});
