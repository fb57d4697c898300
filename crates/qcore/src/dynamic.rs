//! Dynamic quantization: the per-call activation parameters and quantize rule of PyTorch's
//! FBGEMM dynamic linear, and the fp16 weight rounding of its fp16 variant (`docs/NUMERICS.md`
//! section 15).
//!
//! * [`min_max`]: FBGEMM's `FindMinMax` (0, 0 for an empty input); NaN and ±Inf are errors.
//! * [`choose_dynamic_qparams`]: PyTorch's `quant_utils::ChooseQuantizationParams(min, max, 0,
//!   255, preserve_sparsity = false, force_scale_power_of_two = false, reduce_range)`.
//! * [`DynamicQuantizer`]: the rule `PackAWithQuantRowOffset` quantizes activations with,
//!   FBGEMM's non-legacy `QuantizeAvx2`: `clamp(cvtps2dq(min(x * (1/scale), 2^31 - 128)) + zp, 0,
//!   255)`, the rule of `quantize_per_tensor` ([`crate::AffineQuantizer::quantize`]). (FBGEMM's
//!   legacy variant, a fused `fma(x, 1/scale, zp)`, gives other bytes on rounding ties; PyTorch
//!   2.15 does not run it here.)
//! * [`f16_weight`]: `HandleWeightsSaturation` (clamp to ±65504) and round to nearest even.
//!
//! ```
//! use qcore::dynamic::{DynamicQuantizer, choose_dynamic_qparams, min_max};
//! let x = [-1.0f32, 0.5, 2.0];
//! let (lo, hi) = min_max(&x)?;
//! let q = choose_dynamic_qparams(lo, hi, false)?;
//! assert_eq!((q.scale, q.zero_point), (3.0 / 255.0, 85));
//! let quantizer = DynamicQuantizer::new(q)?;
//! assert_eq!(x.map(|v| quantizer.quantize(v)), [0, 127, 255]); // 0.5 / scale = 42.5 rounds to 42
//! # Ok::<(), qcore::QError>(())
//! ```

use half::f16;

use crate::{AffineQuantizer, PerTensor, QDType, QError, QResult};

/// `SMALL_SCALE_THRESHOLD` of PyTorch's `QuantUtils.h`: the smallest normal fp16, as an f32.
pub const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;

/// The largest finite fp16, 65504: `HandleWeightsSaturation` clamps weights to ±this.
pub const F16_MAX: f32 = 65504.0;

/// FBGEMM's `FindMinMax`: the smallest and largest element, `(0, 0)` for an empty slice.
///
/// Errors: an element that is NaN or infinite ([`QError::InvalidRange`]): PyTorch's result then
/// depends on where the NaN sits (its vector `min_ps` drops a NaN in one operand position and
/// keeps it in the other), so no rule is reproduced for it.
pub fn min_max(x: &[f32]) -> QResult<(f32, f32)> {
    let Some(&first) = x.first() else { return Ok((0.0, 0.0)) };
    let (mut lo, mut hi, mut nonfinite) = (first, first, 0.0f32);
    for &v in x {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
        // v * 0 is NaN exactly when v is NaN or infinite (else ±0); the sum keeps it.
        nonfinite += v * 0.0;
    }
    check_range("qcore::dynamic::min_max", lo, hi, nonfinite)
}

/// `Ok((lo, hi))` if `nonfinite` (a sum of `v * 0.0`) is 0, else the error naming the range.
pub fn check_range(context: &'static str, lo: f32, hi: f32, nonfinite: f32) -> QResult<(f32, f32)> {
    if nonfinite == 0.0 {
        Ok((lo, hi))
    } else {
        Err(QError::InvalidRange { context, min: lo, max: hi, reason: "the input holds NaN or an infinity" })
    }
}

/// PyTorch's `quant_utils::ChooseQuantizationParams(min, max, 0, 255, false, false,
/// reduce_range)` (`aten/src/ATen/native/quantized/cpu/QuantUtils.h`), the activation parameters
/// of every FBGEMM dynamic op. The scale is the double PyTorch returns (kernels use `f32(scale)`).
///
/// * `reduce_range` halves the range to `[0, 127]`; the range is widened to contain 0.
/// * `scale = (f64(max) - min) / (qmax - qmin)`; 0.1 if `f32(scale)` is 0 or its f32 reciprocal
///   overflows; below [`SMALL_SCALE_THRESHOLD`] it becomes that threshold and min / max are
///   stretched in f32 by `threshold / f32(scale)`.
/// * The zero point comes from the end whose error `|q| - |r / scale|` is smaller (PyTorch's copy
///   subtracts where FBGEMM's original adds), clamped to the range, else rounded half to even.
///
/// Errors: `min > max`, or a NaN or infinite bound ([`QError::InvalidRange`]).
pub fn choose_dynamic_qparams(min: f32, max: f32, reduce_range: bool) -> QResult<PerTensor> {
    const CONTEXT: &str = "qcore::dynamic::choose_dynamic_qparams";
    let invalid = |reason| QError::InvalidRange { context: CONTEXT, min, max, reason };
    if !min.is_finite() || !max.is_finite() {
        return Err(invalid("a bound is NaN or infinite"));
    }
    if min > max {
        return Err(invalid("min exceeds max"));
    }
    let qmax = if reduce_range { 127 } else { 255 };
    let (scale, zero_point) = choose_quantization_params(min, max, 0, qmax, false);
    Ok(PerTensor::new(scale, zero_point))
}

/// `quant_utils::ChooseQuantizationParams(min, max, qmin, qmax, preserve_sparsity, false, false)`
/// on a finite `min <= max` (callers check): [`choose_dynamic_qparams`]'s arithmetic for any range,
/// plus `preserve_sparsity` (symmetric schemes): a range across 0 is first made symmetric,
/// `max(|min / sym_qmin|, |max / sym_qmax|)` times `sym_qmin = -((qmax - qmin) / 2 + 1)` and
/// `sym_qmax = (qmax - qmin) / 2`, and the zero point is `(qmin + qmax) / 2` rounded half to even.
/// Returns the double scale and the zero point.
///
/// ```
/// use qcore::dynamic::choose_quantization_params;
/// let (scale, zero_point) = choose_quantization_params(-1.0, 1.0, -128, 127, true);
/// assert_eq!(zero_point, 0);
/// assert!((scale - 1.0 / 127.0).abs() < 1e-8);
/// assert_eq!(choose_quantization_params(-1.0, 2.0, 0, 255, false), (3.0 / 255.0, 85));
/// ```
pub fn choose_quantization_params(
    min: f32,
    max: f32,
    qmin: i64,
    qmax: i64,
    preserve_sparsity: bool,
) -> (f64, i64) {
    let (mut min, mut max) = (min, max);
    let symmetric = min < 0.0 && max > 0.0 && preserve_sparsity;
    if symmetric {
        let sym_qmin = -((qmax - qmin) / 2 + 1);
        let sym_qmax = (qmax - qmin) / 2;
        let max_scale = f64::from((min / sym_qmin as f32).abs().max((max / sym_qmax as f32).abs()));
        min = (max_scale * sym_qmin as f64) as f32;
        max = (max_scale * sym_qmax as f64) as f32;
    }
    let mut lo = min.min(0.0);
    let mut hi = max.max(0.0);
    let span = qmax - qmin;
    let mut scale = (f64::from(hi) - f64::from(lo)) / span as f64;
    if scale as f32 == 0.0 || (1.0f32 / scale as f32).is_infinite() {
        scale = 0.1;
    }
    if scale < f64::from(SMALL_SCALE_THRESHOLD) {
        let org_scale = scale as f32;
        scale = f64::from(SMALL_SCALE_THRESHOLD);
        if lo == 0.0 {
            hi = SMALL_SCALE_THRESHOLD * span as f32;
        } else if hi == 0.0 {
            lo = -SMALL_SCALE_THRESHOLD * span as f32;
        } else {
            let amplifier = SMALL_SCALE_THRESHOLD / org_scale;
            lo *= amplifier;
            hi *= amplifier;
        }
    }
    let (qmin_f, qmax_f) = (qmin as f64, qmax as f64);
    let from_min = qmin_f - f64::from(lo) / scale;
    let from_max = qmax_f - f64::from(hi) / scale;
    let err_min = qmin_f.abs() - (f64::from(lo) / scale).abs();
    let err_max = qmax_f.abs() - (f64::from(hi) / scale).abs();
    let mut initial = if err_min < err_max { from_min } else { from_max };
    if symmetric {
        initial = (qmin + qmax) as f64 / 2.0;
    }
    let zero_point = if initial < qmin_f {
        qmin
    } else if initial > qmax_f {
        qmax
    } else {
        initial.round_ties_even() as i64
    };
    (scale, zero_point)
}

/// The activation quantize rule of FBGEMM's dynamic GEMM (`PackAWithQuantRowOffset::pack`), which
/// is [`AffineQuantizer::quantize`] for quint8: FBGEMM's `QuantizeAvx2` (vector body and masked
/// tail agree).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicQuantizer {
    q: AffineQuantizer,
}

impl DynamicQuantizer {
    /// The rule for `q` (from [`choose_dynamic_qparams`]): inverse `1.0f32 / f32(scale)`.
    ///
    /// Errors: a scale [`crate::inverse_scale`] rejects, a zero point outside [0, 255].
    pub fn new(q: PerTensor) -> QResult<Self> {
        Ok(Self { q: q.quantizer(QDType::QUInt8)? })
    }

    /// `1.0f32 / f32(scale)`.
    pub fn inv_scale(&self) -> f32 {
        self.q.inv_scale()
    }

    /// The zero point.
    pub fn zero_point(&self) -> u8 {
        self.q.zero_point() as u8
    }

    /// `clamp(cvtps2dq(min(x * inv, 2147483520)) + zp, 0, 255)`: the product rounds, then the
    /// conversion rounds half to even; NaN takes the bound (255).
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        self.q.quantize(x) as u8
    }
}

/// One weight of PyTorch's fp16 dynamic linear: clamped to ±[`F16_MAX`]
/// (`HandleWeightsSaturation`), then rounded to the nearest fp16, ties to even. NaN stays NaN.
/// Returns the value and whether it was clamped (PyTorch warns "FOUND weight out of range").
pub fn f16_weight(x: f32) -> (f16, bool) {
    let clamped = x.clamp(-F16_MAX, F16_MAX);
    (f16::from_f32(clamped), clamped != x && !x.is_nan())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qparams_follow_pytorch_rules() {
        // All zero: scale 0 -> 0.1, zero point from min (0).
        assert_eq!(choose_dynamic_qparams(0.0, 0.0, false).unwrap(), PerTensor::new(0.1, 0));
        // Negative only: zero point at qmax.
        let q = choose_dynamic_qparams(-2.0, -1.0, true).unwrap();
        assert_eq!((q.scale, q.zero_point), (2.0 / 127.0, 127));
        // Tiny range: threshold scale.
        let q = choose_dynamic_qparams(0.0, 1e-6, false).unwrap();
        assert_eq!(q.scale, f64::from(SMALL_SCALE_THRESHOLD));
        assert_eq!(q.zero_point, 0);
        assert!(choose_dynamic_qparams(1.0, 0.0, false).is_err());
        assert!(choose_dynamic_qparams(f32::NAN, 0.0, false).is_err());
    }

    #[test]
    fn min_max_rejects_non_finite_and_handles_empty() {
        assert_eq!(min_max(&[]).unwrap(), (0.0, 0.0));
        assert_eq!(min_max(&[3.0, -1.0, 2.0]).unwrap(), (-1.0, 3.0));
        assert!(min_max(&[1.0, f32::NAN]).is_err());
        assert!(min_max(&[f32::INFINITY]).is_err());
    }

    #[test]
    fn quantize_rounds_before_the_zero_point_and_saturates() {
        let q = DynamicQuantizer::new(PerTensor::new(1.0, 10)).unwrap();
        assert_eq!(q.quantize(0.5), 10); // 0.5 ties to 0, then + 10
        assert_eq!(q.quantize(1.5), 12);
        assert_eq!(q.quantize(-0.5), 10);
        assert_eq!(q.quantize(1e30), 255);
        assert_eq!(q.quantize(-1e30), 0);
        assert_eq!(q.quantize(f32::NAN), 255);
    }

    #[test]
    fn f16_saturates_then_rounds() {
        assert_eq!(f16_weight(1e6), (f16::from_f32(65504.0), true));
        assert_eq!(f16_weight(-65519.0), (f16::from_f32(-65504.0), true));
        assert_eq!(f16_weight(1.0 + 1.0 / 4096.0).0, f16::ONE); // tie to even
        assert!(!f16_weight(1.0).1);
    }
}
