//! Calibrators beyond PyTorch, as TensorRT and ONNX Runtime users know them: percentile,
//! entropy (KL divergence, TensorRT's method) and MSE-optimal range search. Each keeps a running
//! histogram with [`HistogramObserver`](crate::HistogramObserver)'s update rules, implements
//! [`Observer`], and is an [`ObserverSpec`] variant, so it drops into a qconfig.
//!
//! The chosen range goes through the same `_calculate_qparams` as PyTorch's observers (so it is
//! widened to include 0, and symmetric schemes use `max(|min|, |max|)`).
//! Non-finite input is handled as by the histogram observer: ±Inf skipped and counted, NaN an error.

use ndarray::ArrayViewD;

use crate::common::{delegate_observer, wrong_spec, wrong_statistics};
use crate::histogram::{HistogramCore, finite_batch};
use crate::observer::{HistogramData, ObservedRange, Statistics};
use crate::spec::DEFAULT_UPSAMPLE_RATE;
use crate::{ObserveError, ObserveResult, Observer, ObserverSpec, ObserverState, ObserverStats, QParams};

/// The value below which a fraction `mass` of the histogram lies, interpolating linearly
/// inside the bin (from the left), or above which it lies (from the right).
fn quantile(h: &HistogramData, mass: f64, from_right: bool) -> f32 {
    let bins = h.counts.len();
    let bw = (f64::from(h.max) - f64::from(h.min)) / bins as f64;
    let mut acc = 0.0f64;
    for k in 0..bins {
        let i = if from_right { bins - 1 - k } else { k };
        let c = f64::from(h.counts[i]);
        if c > 0.0 && acc + c >= mass {
            let frac = ((mass - acc) / c).clamp(0.0, 1.0);
            let edge = if from_right {
                f64::from(h.min) + bw * ((i + 1) as f64 - frac)
            } else {
                f64::from(h.min) + bw * (i as f64 + frac)
            };
            return edge as f32;
        }
        acc += c;
    }
    if from_right { h.min } else { h.max }
}

/// Percentile calibrator: keeps `percentile` % of the observed values inside the range and
/// clips the rest, half from each tail (ONNX Runtime's and pytorch-quantization's "percentile"
/// method, two-sided). 100 gives the histogram's full range.
#[derive(Debug, Clone)]
pub struct PercentileCalibrator {
    core: HistogramCore,
    percentile: f64,
}

impl PercentileCalibrator {
    /// The calibrator's name.
    pub const NAME: &'static str = "PercentileCalibrator";

    /// Builds from an [`ObserverSpec::Percentile`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        let ObserverSpec::Percentile { percentile, bins, args } = spec else {
            return Err(wrong_spec(Self::NAME, spec));
        };
        if !(*percentile > 0.0 && *percentile <= 100.0) {
            return Err(ObserveError::InvalidArgument {
                observer: Self::NAME,
                name: "percentile",
                value: percentile.to_string(),
                reason: "the share of values to keep is a percentage in (0, 100], e.g. 99.99",
            });
        }
        Ok(Self {
            core: HistogramCore::new(Self::NAME, spec, *bins, DEFAULT_UPSAMPLE_RATE, args)?,
            percentile: *percentile,
        })
    }

    /// The clipped range `(min, max)` the parameters are computed from.
    pub fn range(&self) -> ObserveResult<(f32, f32)> {
        let h = self.core.data()?;
        let total: f64 = h.counts.iter().map(|&c| f64::from(c)).sum();
        let tail = (1.0 - self.percentile / 100.0) / 2.0 * total;
        if tail <= 0.0 {
            return Ok((h.min, h.max));
        }
        let lo = quantile(h, tail, false);
        let hi = quantile(h, tail, true);
        Ok(if lo <= hi { (lo, hi) } else { (hi, lo) })
    }
}

/// Entropy calibrator: TensorRT's KL-divergence method (as in NVIDIA's pytorch-quantization
/// `_compute_amax_entropy`) on a histogram of |x| over [0, max|x|].
///
/// For each candidate threshold bin `i` (from the number of quantization levels up to `bins`),
/// the reference distribution is the histogram cut at `i` with the outliers added to its last
/// bin (and, as there, the first bin replaced by the second, so exact zeros do not dominate);
/// the candidate is that histogram merged into as many levels as the quantized range has
/// on one side (half the range if negative values were seen, else all of it) and expanded back
/// over the non-empty bins. The threshold with the smallest KL divergence (the last one on
/// ties) becomes `t`, and the range is the observed range clipped to `[-t, t]`.
#[derive(Debug, Clone)]
pub struct EntropyCalibrator {
    /// The histogram of |x| (its statistics are saved with the signed range, not as the core's).
    core: HistogramCore,
    signed: Option<(f32, f32)>,
}

impl EntropyCalibrator {
    /// The calibrator's name.
    pub const NAME: &'static str = "EntropyCalibrator";

    /// Builds from an [`ObserverSpec::Entropy`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        let ObserverSpec::Entropy { bins, args } = spec else {
            return Err(wrong_spec(Self::NAME, spec));
        };
        Ok(Self {
            core: HistogramCore::new(Self::NAME, spec, *bins, DEFAULT_UPSAMPLE_RATE, args)?,
            signed: None,
        })
    }

    /// Quantization levels on one side of zero.
    fn levels(&self, signed_min: f32) -> usize {
        let all = (self.core.uniform.qmax - self.core.uniform.qmin + 1) as usize;
        let levels = if signed_min < 0.0 { all / 2 } else { all };
        levels.clamp(1, self.core.hist.bins)
    }

    /// The clipped range `(min, max)` the parameters are computed from.
    pub fn range(&self) -> ObserveResult<(f32, f32)> {
        let (Some(h), Some((smin, smax))) = (&self.core.hist.data, self.signed) else {
            return Err(self.core.not_observed());
        };
        let bins = h.counts.len();
        let levels = self.levels(smin);
        let mut counts: Vec<f64> = h.counts.iter().map(|&c| f64::from(c)).collect();
        // As pytorch-quantization's `_compute_amax_entropy` (`bins[0] = bins[1]`): the first bin
        // holds every exact zero (ReLU outputs), a spike that would otherwise dominate the KL.
        if bins > 1 {
            counts[0] = counts[1];
        }
        let mut best: Option<(f64, usize)> = None;
        let mut merged = vec![0.0f64; levels];
        let mut nonzero = vec![0usize; levels];
        for i in levels..=bins {
            let outliers: f64 = counts[i..].iter().sum();
            // Which of the `levels` merged bins source bin j (< i) belongs to:
            // digitize(j, linspace(0, i, levels + 1)) - 1.
            let level_of = |j: usize| ((j * levels) / i).min(levels - 1);
            merged.iter_mut().for_each(|m| *m = 0.0);
            nonzero.iter_mut().for_each(|n| *n = 0);
            for (j, &c) in counts[..i].iter().enumerate() {
                if c != 0.0 {
                    merged[level_of(j)] += c;
                    nonzero[level_of(j)] += 1;
                }
            }
            let p_total: f64 = counts[..i].iter().sum::<f64>() + outliers;
            let q_total: f64 = merged.iter().sum();
            if p_total <= 0.0 || q_total <= 0.0 {
                continue;
            }
            let mut kl = 0.0f64;
            for (j, &c) in counts[..i].iter().enumerate() {
                let p = if j == i - 1 { c + outliers } else { c };
                if p == 0.0 {
                    continue;
                }
                let q = if c != 0.0 { merged[level_of(j)] / nonzero[level_of(j)] as f64 } else { 0.0 };
                if q == 0.0 {
                    kl = f64::INFINITY;
                    break;
                }
                let (p, q) = (p / p_total, q / q_total);
                kl += p * (p / q).ln();
            }
            if best.is_none_or(|(b, _)| kl <= b) {
                best = Some((kl, i));
            }
        }
        let threshold = match best {
            Some((kl, i)) if kl.is_finite() => {
                let bw = (f64::from(h.max) - f64::from(h.min)) / bins as f64;
                (f64::from(h.min) + bw * i as f64) as f32
            }
            _ => h.max,
        };
        Ok((smin.max(-threshold), smax.min(threshold)))
    }

    fn stats_of<'a>(&self, state: &'a ObserverState) -> ObserveResult<Option<&'a (HistogramData, f32, f32)>> {
        state.check_spec(Self::NAME, &self.core.spec)?;
        match &state.statistics {
            Statistics::AbsHistogram(s) => {
                if let Some((h, lo, hi)) = s {
                    self.core.hist.validate(Self::NAME, h)?;
                    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                        return Err(ObserveError::InvalidState {
                            observer: Self::NAME,
                            reason: format!("signed range [{lo}, {hi}] must be finite with min <= max"),
                        });
                    }
                }
                Ok(s.as_ref())
            }
            other => Err(wrong_statistics(Self::NAME, other)),
        }
    }
}

impl Observer for EntropyCalibrator {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn spec(&self) -> ObserverSpec {
        self.core.spec.clone()
    }

    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> ObserveResult<()> {
        let Some(batch) = finite_batch(Self::NAME, &x)? else { return Ok(()) };
        if let Some((lo, hi)) = batch.range {
            let abs: Vec<f32> = batch.values.iter().map(|v| v.abs()).collect();
            let amax = if -lo > hi { -lo } else { hi };
            self.core.hist.add(Self::NAME, &abs, 0.0, amax)?;
            self.signed = Some(match self.signed {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            });
        }
        self.core.counters.batches += 1;
        self.core.counters.elements += x.len() as u64;
        self.core.counters.skipped_infinite += batch.skipped;
        Ok(())
    }

    fn calculate_qparams(&self) -> ObserveResult<QParams> {
        let (lo, hi) = self.range()?;
        self.core.uniform.per_tensor(Self::NAME, lo, hi)
    }

    fn reset(&mut self) {
        self.core.reset();
        self.signed = None;
    }

    fn stats(&self) -> ObserverStats {
        ObserverStats {
            observer: Self::NAME.to_string(),
            counters: self.core.counters,
            range: self.signed.map(|(min, max)| ObservedRange::PerTensor { min, max }),
        }
    }

    fn state(&self) -> ObserverState {
        let statistics = match (&self.core.hist.data, self.signed) {
            (Some(h), Some((lo, hi))) => Statistics::AbsHistogram(Some((h.clone(), lo, hi))),
            _ => Statistics::AbsHistogram(None),
        };
        ObserverState { spec: self.core.spec.clone(), counters: self.core.counters, statistics }
    }

    fn load_state(&mut self, state: &ObserverState) -> ObserveResult<()> {
        let s = self.stats_of(state)?.cloned();
        self.core.hist.data = s.as_ref().map(|(h, _, _)| h.clone());
        self.signed = s.map(|(_, lo, hi)| (lo, hi));
        self.core.counters = state.counters;
        Ok(())
    }

    fn merge(&mut self, other: &ObserverState) -> ObserveResult<()> {
        if let Some((h, lo, hi)) = self.stats_of(other)? {
            self.core.hist.merge(Self::NAME, h)?;
            self.signed = Some(match self.signed {
                None => (*lo, *hi),
                Some((a, b)) => (a.min(*lo), b.max(*hi)),
            });
        }
        self.core.counters.add(&other.counters);
        Ok(())
    }
}

/// Shrink factors tried by the MSE search: `0.98^k`, from the full range down to about 1.8 %.
const MSE_CANDIDATES: i32 = 200;
const MSE_SHRINK: f64 = 0.98;

/// MSE calibrator: the range `[f * min, f * max]` (f = 0.98^k, k = 0..200) whose expected squared
/// quantization error over the histogram is smallest.
///
/// The error of each candidate uses its real scale and zero point: values inside the
/// representable range `[(qmin - zp) * s, (qmax - zp) * s]` contribute the rounding noise `s^2/12`,
/// values outside it the squared distance to the nearest end, integrated over each bin assuming
/// a uniform density inside the bin.
#[derive(Debug, Clone)]
pub struct MseCalibrator {
    core: HistogramCore,
}

impl MseCalibrator {
    /// The calibrator's name.
    pub const NAME: &'static str = "MseCalibrator";

    /// Builds from an [`ObserverSpec::Mse`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        let ObserverSpec::Mse { bins, args } = spec else {
            return Err(wrong_spec(Self::NAME, spec));
        };
        Ok(Self { core: HistogramCore::new(Self::NAME, spec, *bins, DEFAULT_UPSAMPLE_RATE, args)? })
    }

    /// Expected squared error of quantizing the histogram with the parameters of `[lo, hi]`.
    fn expected_error(&self, h: &HistogramData, lo: f32, hi: f32) -> Option<f64> {
        let u = &self.core.uniform;
        let (scale, zp) = u.affine_or_symmetric(lo, hi);
        qcore::inverse_scale(Self::NAME, f64::from(scale)).ok()?;
        let s = f64::from(scale);
        let q_lo = (u.qmin - zp) as f64 * s;
        let q_hi = (u.qmax - zp) as f64 * s;
        let bins = h.counts.len();
        let bw = (f64::from(h.max) - f64::from(h.min)) / bins as f64;
        let rounding = s * s / 12.0;
        // Mean of (x - c)^2 over x uniform in [a, b] (a < b), times (b - a).
        let clip = |a: f64, b: f64, c: f64| ((b - c).powi(3) - (a - c).powi(3)) / 3.0;
        let mut total = 0.0f64;
        for (i, &count) in h.counts.iter().enumerate() {
            if count == 0.0 {
                continue;
            }
            let n = f64::from(count);
            let a = f64::from(h.min) + bw * i as f64;
            let b = a + bw;
            if bw == 0.0 {
                let x = a;
                let e = if x < q_lo {
                    (x - q_lo).powi(2)
                } else if x > q_hi {
                    (x - q_hi).powi(2)
                } else {
                    rounding
                };
                total += n * e;
                continue;
            }
            let mut e = 0.0;
            let inside = (b.min(q_hi) - a.max(q_lo)).max(0.0);
            e += inside * rounding;
            if a < q_lo {
                e += clip(a, b.min(q_lo), q_lo);
            }
            if b > q_hi {
                e += clip(a.max(q_hi), b, q_hi);
            }
            total += n * e / bw;
        }
        Some(total)
    }

    /// The chosen range `(min, max)` the parameters are computed from.
    pub fn range(&self) -> ObserveResult<(f32, f32)> {
        let h = self.core.data()?;
        let mut best: Option<(f64, f32, f32)> = None;
        for k in 0..=MSE_CANDIDATES {
            let f = MSE_SHRINK.powi(k);
            let (lo, hi) = ((f64::from(h.min) * f) as f32, (f64::from(h.max) * f) as f32);
            if let Some(err) = self.expected_error(h, lo, hi)
                && best.is_none_or(|(b, _, _)| err < b)
            {
                best = Some((err, lo, hi));
            }
        }
        Ok(best.map_or((h.min, h.max), |(_, lo, hi)| (lo, hi)))
    }
}

/// Implements [`Observer`] for the calibrators around a [`HistogramCore`] with a `range()` method.
macro_rules! signed_calibrator {
    ($($ty:ty),+) => {$(
        delegate_observer!($ty, core, {
            fn calculate_qparams(&self) -> ObserveResult<QParams> {
                let (lo, hi) = self.range()?;
                self.core.uniform.per_tensor(Self::NAME, lo, hi)
            }
        });
    )+};
}

signed_calibrator!(PercentileCalibrator, MseCalibrator);
