//! Fake quantization (quantize then dequantize in float) and its straight-through gradient mask,
//! element by element, exactly as PyTorch's CPU kernels compute them. `qfake` wraps these.

use crate::scalar::nearbyint;
use crate::{QError, QResult};

/// The value and gradient mask of one fake-quantized element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeQuant {
    /// The fake-quantized value.
    pub value: f32,
    /// True where the gradient passes straight through (the unclamped quantized value was in range).
    pub mask: bool,
}

/// Checks `quant_min <= zero_point <= quant_max` and `quant_min <= quant_max`, as the PyTorch ops do.
pub fn check_fake_quant_range(
    context: &'static str,
    zero_point: i64,
    quant_min: i64,
    quant_max: i64,
) -> QResult<()> {
    let invalid =
        |reason| QError::InvalidFakeQuantParams { context, zero_point, quant_min, quant_max, reason };
    if quant_min > quant_max {
        return Err(invalid("quant_min must not exceed quant_max"));
    }
    if !(quant_min..=quant_max).contains(&zero_point) {
        return Err(invalid("the zero point must lie within [quant_min, quant_max]"));
    }
    Ok(())
}

/// `torch.fake_quantize_per_tensor_affine` on one element.
///
/// `qf = (float)zp + nearbyint(x * (1.0f / scale))` (ties to even, zero point after rounding);
/// `q = (i64)fmin(fmax(qf, qmin), qmax)` (NaN becomes `quant_min`); value `(float)(q - zp) * scale`;
/// mask `quant_min <= qf <= quant_max` (false for NaN).
///
/// ```
/// use qcore::fake_quant::fake_quantize_per_tensor;
/// let fq = fake_quantize_per_tensor(0.74, 0.25, 4, 0, 255);
/// assert_eq!((fq.value, fq.mask), (0.75, true));
/// let clipped = fake_quantize_per_tensor(100.0, 0.25, 4, 0, 255);
/// assert_eq!((clipped.value, clipped.mask), (62.75, false));
/// ```
pub fn fake_quantize_per_tensor(
    x: f32,
    scale: f32,
    zero_point: i64,
    quant_min: i64,
    quant_max: i64,
) -> FakeQuant {
    let inv = 1.0f32 / scale;
    let qf = zero_point as f32 + nearbyint(x * inv);
    // std::fmax/fmin on (float, int64) promote to double and ignore a NaN operand.
    let clamped = f64::from(qf).max(quant_min as f64).min(quant_max as f64);
    let q = clamped as i64;
    let mask = (quant_min as f32) <= qf && qf <= quant_max as f32;
    FakeQuant { value: (q - zero_point) as f32 * scale, mask }
}

/// `torch.fake_quantize_per_channel_affine` on one element of a channel with an integer zero point.
///
/// `q = (i64)((float)zp + nearbyint(x * (1.0f / scale)))` (x86 converts NaN and out-of-range values
/// to `i64::MIN`); value `(fmin(fmax(q, qmin), qmax) - zp) * scale` rounded to f32; mask
/// `quant_min <= q <= quant_max`.
pub fn fake_quantize_per_channel(
    x: f32,
    scale: f32,
    zero_point: i64,
    quant_min: i64,
    quant_max: i64,
) -> FakeQuant {
    let inv = 1.0f32 / scale;
    let qf = zero_point as f32 + nearbyint(x * inv);
    let q = if qf.is_nan() || qf.abs() >= 9.223_372e18 { i64::MIN } else { qf as i64 };
    let clamped = q.clamp(quant_min, quant_max);
    let value = ((clamped - zero_point) as f64 * f64::from(scale)) as f32;
    FakeQuant { value, mask: (quant_min..=quant_max).contains(&q) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tensor_nan_clamps_to_quant_min_and_blocks_the_gradient() {
        let fq = fake_quantize_per_tensor(f32::NAN, 0.5, 3, 0, 255);
        assert_eq!(fq.value, -1.5);
        assert!(!fq.mask);
    }

    #[test]
    fn range_checks_name_the_problem() {
        assert!(check_fake_quant_range("t", 300, 0, 255).unwrap_err().to_string().contains("zero point"));
        assert!(check_fake_quant_range("t", 0, 5, 1).unwrap_err().to_string().contains("must not exceed"));
        assert!(check_fake_quant_range("t", 0, -128, 127).is_ok());
    }
}
