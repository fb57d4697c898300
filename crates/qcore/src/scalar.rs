//! Element-level quantize and dequantize: the scalar definition every kernel is tested against.
//!
//! PyTorch (x86, FBGEMM build) quantizes by two slightly different rules; both are here, and
//! `docs/NUMERICS.md` cites their sources.
//!
//! * [`quantize_val`]: PyTorch's scalar `quantize_val` (FBGEMM `Quantize<T, LEGACY=false>`), used by
//!   per-channel quantization and by every qint32 quantization.
//! * [`AffineQuantizer::quantize`]: the per-tensor quint8/qint8 tensor path (FBGEMM `QuantizeAvx2`), which
//!   agrees with [`quantize_val`] on every finite in-range input and differs only for NaN, ±Inf and
//!   values whose scaled magnitude reaches 2^31.

use crate::{QDType, QError, QResult};

/// The largest float below `i32::MAX` (2^31 - 128): FBGEMM clips scaled values to it before converting.
const F32_BELOW_I32_MAX: f32 = 2_147_483_520.0;

/// x86 `cvtss2si` (one lane of `cvtps2dq`): round half to even; NaN and anything outside i32 give
/// `i32::MIN`.
///
/// On x86-64 this is the instruction itself (SSE2 is part of the baseline, and the rounding mode is
/// the default round-to-nearest-even, which Rust never changes); elsewhere the same rule in plain Rust.
pub fn cvt_f32_to_i32_x86(x: f32) -> i32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use std::arch::x86_64::{_mm_cvtss_si32, _mm_set_ss};
        // SAFETY: the two intrinsics need SSE2, which the cfg above guarantees is enabled for this
        // target; they only move and convert a register value and touch no memory.
        unsafe { _mm_cvtss_si32(_mm_set_ss(x)) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        // 2^31 as f32 is exact; every float strictly inside (-2^31 - 1, 2^31) rounds into i32.
        const LIMIT: f32 = 2_147_483_648.0;
        let r = x.round_ties_even();
        if r.is_nan() || !(-LIMIT..LIMIT).contains(&r) { i32::MIN } else { r as i32 }
    }
}

/// C's `nearbyint` in the default rounding mode (half to even), except that a zero result is
/// always +0.0: callers add it to a zero point or convert it to an integer, where the sign of zero
/// cannot show. Floats of magnitude 2^31 or more are integers already and pass through, as do NaN and ±Inf.
pub(crate) fn nearbyint(t: f32) -> f32 {
    if t.abs() < 2_147_483_648.0 { cvt_f32_to_i32_x86(t) as f32 } else { t }
}

/// The reciprocal every quantizer multiplies by: `1.0f32 / (float)scale`, never a division of `x`.
///
/// Returns an error unless `scale` is finite and positive as an f32 and its f32 reciprocal is finite.
pub fn inverse_scale(context: &'static str, scale: f64) -> QResult<f32> {
    let invalid = |reason| QError::InvalidScale { context, scale, reason };
    if scale.is_nan() {
        return Err(invalid("it is NaN"));
    }
    if scale <= 0.0 {
        return Err(invalid("it must be positive"));
    }
    let scale_f32 = scale as f32;
    if scale_f32.is_infinite() {
        return Err(invalid("it overflows f32"));
    }
    if scale_f32 == 0.0 {
        return Err(invalid("it underflows to zero in f32"));
    }
    let inv = 1.0f32 / scale_f32;
    if inv.is_infinite() {
        return Err(invalid("its f32 reciprocal overflows"));
    }
    Ok(inv)
}

/// Converts the clamped double of the scalar rule to the storage type as x86 C++ does:
/// `static_cast<T>(double)` goes through `cvttsd2si`, so NaN becomes `i32::MIN`, truncated to the
/// dtype's width (0 for the 8-bit types).
fn double_to_storage(v: f64, dtype: QDType) -> i32 {
    let as_i32 = if v.is_nan() { i32::MIN } else { v as i32 };
    match dtype {
        QDType::QUInt8 => i32::from(as_i32 as u8),
        QDType::QInt8 => i32::from(as_i32 as i8),
        QDType::QInt32 => as_i32,
        // `static_cast<uint8_t>` of quint4x2's underlying type, as quint8.
        QDType::QUInt4x2 => i32::from(as_i32 as u8),
    }
}

/// PyTorch's scalar `quantize_val(scale, zero_point, x)` for `dtype`, returned widened to `i32`.
///
/// `t = x * (1.0f32 / (float)scale)`; `v = (float)zero_point + nearbyint(t)` in f32 (ties to even,
/// zero point added after rounding); `v` clamped to the dtype's range in f64. NaN gives `i32::MIN`
/// truncated to the dtype: 0 for quint8 and qint8, `i32::MIN` for qint32.
///
/// The scale and zero point are not checked here; [`crate::quantize_per_channel`] and
/// [`AffineQuantizer::new`] do that once per tensor.
///
/// ```
/// use qcore::{quantize_val, QDType};
/// // The seed example: [0.7, 0.5, -0.7] at scale 0.25, zero point 4.
/// let q: Vec<i32> = [0.7f32, 0.5, -0.7].iter().map(|&x| quantize_val(0.25, 4, x, QDType::QUInt8)).collect();
/// assert_eq!(q, [7, 6, 1]);
/// ```
pub fn quantize_val(scale: f64, zero_point: i64, x: f32, dtype: QDType) -> i32 {
    quantize_val_with_inverse(1.0f32 / scale as f32, zero_point, x, dtype)
}

/// [`quantize_val`] with the reciprocal of the scale already computed.
fn quantize_val_with_inverse(inv: f32, zero_point: i64, x: f32, dtype: QDType) -> i32 {
    let v = zero_point as f32 + nearbyint(x * inv);
    let clamped = f64::from(v).max(dtype.min() as f64).min(dtype.max() as f64);
    // `max`/`min` above return the other operand for NaN; C++'s std::max/std::min keep NaN.
    double_to_storage(if v.is_nan() { f64::NAN } else { clamped }, dtype)
}

/// Per-tensor quantization parameters prepared for a loop: the f32 reciprocal of the scale,
/// the zero point and the dtype, checked once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineQuantizer {
    inv_scale: f32,
    zero_point: i32,
    dtype: QDType,
}

impl AffineQuantizer {
    /// Checks `scale` and `zero_point` for `dtype` and precomputes the reciprocal.
    pub fn new(scale: f64, zero_point: i64, dtype: QDType) -> QResult<Self> {
        const CONTEXT: &str = "quantize_per_tensor";
        let inv_scale = inverse_scale(CONTEXT, scale)?;
        dtype.check_zero_point(CONTEXT, zero_point)?;
        Ok(Self { inv_scale, zero_point: zero_point as i32, dtype })
    }

    /// The f32 reciprocal of the scale.
    pub fn inv_scale(&self) -> f32 {
        self.inv_scale
    }

    /// The zero point.
    pub fn zero_point(&self) -> i32 {
        self.zero_point
    }

    /// The dtype quantized to.
    pub fn dtype(&self) -> QDType {
        self.dtype
    }

    /// Quantizes one value as `torch.quantize_per_tensor` does on x86, widened to `i32`.
    ///
    /// quint8/qint8 follow FBGEMM's AVX2 rule: `t = min(x * inv, 2^31 - 128)` (NaN becomes that
    /// bound), `r = cvtps2dq(t)` (ties to even; below -2^31 gives `i32::MIN`), `r + zero_point`
    /// with **wrapping** i32 addition, then clamp. So +Inf and NaN give qmax unless the wrap hits:
    /// quint8 with zero point >= 128 gives 0, and -Inf with a negative qint8 zero point gives 127.
    /// qint32 and quint4x2 (PyTorch's sub-byte per-tensor kernel is scalar) follow
    /// [`quantize_val`].
    pub fn quantize(&self, x: f32) -> i32 {
        match self.dtype {
            QDType::QInt32 | QDType::QUInt4x2 => {
                quantize_val_with_inverse(self.inv_scale, self.zero_point.into(), x, self.dtype)
            }
            QDType::QUInt8 | QDType::QInt8 => {
                let t = x * self.inv_scale;
                // `_mm256_min_ps(t, M)` returns M when t is NaN.
                let t = if t.is_nan() || t > F32_BELOW_I32_MAX { F32_BELOW_I32_MAX } else { t };
                let r = cvt_f32_to_i32_x86(t).wrapping_add(self.zero_point);
                r.clamp(self.dtype.min() as i32, self.dtype.max() as i32)
            }
        }
    }
}

/// x86 `lrintf`: round half to even into an i64; NaN, ±Inf and values beyond i64 give `i64::MIN`.
pub fn lrintf_x86(x: f32) -> i64 {
    // 2^63 as f32 is exact; every float strictly inside (-2^63 - 1, 2^63) rounds into i64.
    const LIMIT: f32 = 9_223_372_036_854_775_808.0;
    let r = x.round_ties_even();
    if r.is_nan() || !(-LIMIT..LIMIT).contains(&r) { i64::MIN } else { r as i64 }
}

/// PyTorch's `quantize_val_float_qparams` (per-channel quantization with a float zero point):
/// `v = lrintf(x * inv + zero_point)` in f32 with `inv = 1.0f / scale` (1 for a zero scale),
/// **truncated to i32** (wrapping), then clamped to the dtype's range.
///
/// So NaN, ±Inf and values beyond i64 (`lrintf` gives `i64::MIN`) become 0 for every dtype, and a
/// value beyond i32 wraps before the clamp: 2.2e9 quantizes to 0 in quint8, -128 in qint8.
pub fn quantize_val_float_qparams(scale: f32, zero_point: f32, x: f32, dtype: QDType) -> i32 {
    let inv = if scale == 0.0 { 1.0 } else { 1.0f32 / scale };
    let truncated = lrintf_x86(x * inv + zero_point) as i32;
    truncated.clamp(dtype.min() as i32, dtype.max() as i32)
}

/// Dequantize of one value with float parameters: `((float)q - zero_point) * scale`, all f32.
pub fn dequantize_val_float_qparams(scale: f32, zero_point: f32, q: i32) -> f32 {
    (q as f32 - zero_point) * scale
}

/// Per-tensor dequantize of one value: `(float)scale * (float)(q - zero_point)`, one f32 multiply.
pub fn dequantize_val(scale: f64, zero_point: i64, q: i32) -> f32 {
    scale as f32 * (i64::from(q) - zero_point) as i32 as f32
}

/// Per-channel dequantize of one value: `((float)q - (float)zero_point) * scale` with the f32
/// difference multiplied by the **double** scale, rounded to f32 once.
pub fn dequantize_per_channel_val(scale: f64, zero_point: i64, q: i32) -> f32 {
    (f64::from(q as f32 - zero_point as f32) * scale) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvt_matches_x86_out_of_range_rule() {
        assert_eq!(cvt_f32_to_i32_x86(2.5), 2);
        assert_eq!(cvt_f32_to_i32_x86(-2.5), -2);
        assert_eq!(cvt_f32_to_i32_x86(3.5), 4);
        assert_eq!(cvt_f32_to_i32_x86(F32_BELOW_I32_MAX), 2_147_483_520);
        assert_eq!(cvt_f32_to_i32_x86(2_147_483_648.0), i32::MIN);
        assert_eq!(cvt_f32_to_i32_x86(-2_147_483_648.0), i32::MIN);
        assert_eq!(cvt_f32_to_i32_x86(f32::NAN), i32::MIN);
        assert_eq!(cvt_f32_to_i32_x86(f32::NEG_INFINITY), i32::MIN);
    }

    #[test]
    fn the_two_rules_differ_only_where_pytorch_differs() {
        let q = AffineQuantizer::new(1.0, 128, QDType::QUInt8).unwrap();
        assert_eq!(q.quantize(f32::INFINITY), 0, "wrapping add of the zero point");
        assert_eq!(quantize_val(1.0, 128, f32::INFINITY, QDType::QUInt8), 255);
        assert_eq!(q.quantize(f32::NAN), 0);
        assert_eq!(quantize_val(1.0, 128, f32::NAN, QDType::QUInt8), 0);
        let q = AffineQuantizer::new(1.0, 0, QDType::QInt8).unwrap();
        assert_eq!(q.quantize(f32::NAN), 127);
        assert_eq!(quantize_val(1.0, 0, f32::NAN, QDType::QInt8), 0);
        assert_eq!(quantize_val(1.0, 0, f32::NAN, QDType::QInt32), i32::MIN);
    }

    #[test]
    fn ties_round_to_even_before_the_zero_point_is_added() {
        for zp in [0i64, 1, 4] {
            let q = AffineQuantizer::new(1.0, zp, QDType::QUInt8).unwrap();
            assert_eq!(q.quantize(2.5), 2 + zp as i32);
            assert_eq!(quantize_val(1.0, zp, 2.5, QDType::QUInt8), 2 + zp as i32);
        }
    }

    #[test]
    fn invalid_scales_are_named() {
        for (scale, reason) in [
            (0.0, "it must be positive"),
            (-1.0, "it must be positive"),
            (f64::NAN, "it is NaN"),
            (f64::INFINITY, "it overflows f32"),
            (1e-50, "it underflows to zero in f32"),
            (1e-39, "its f32 reciprocal overflows"),
        ] {
            let err = inverse_scale("test", scale).unwrap_err();
            assert!(matches!(err, QError::InvalidScale { reason: r, .. } if r == reason), "{scale}: {err}");
        }
    }
}
