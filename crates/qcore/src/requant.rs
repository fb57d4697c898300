//! Requantization: from integer accumulators, or from the float result of an elementwise op, back
//! to quantized values, by PyTorch's x86 rules. Kernels in `qkernels` reuse these definitions.

use crate::scalar::{cvt_f32_to_i32_x86, dequantize_val, inverse_scale, lrintf_x86, quantize_val};
use crate::{AffineQuantizer, QDType, QResult};

/// `at::native::requantize_from_int`: `clamp(zero_point + lrintf((float)v * multiplier))` to `dtype`.
pub fn requantize_from_int(multiplier: f32, zero_point: i64, v: i64, dtype: QDType) -> i32 {
    lrintf_x86(v as f32 * multiplier).saturating_add(zero_point).clamp(dtype.min(), dtype.max()) as i32
}

/// How the f32 bias enters FBGEMM's conv/linear output pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasTerm {
    /// Per-tensor weights (AVX2/AVX-512 path): `bias * (float)(1.0 / (double)act_times_w_scale)`.
    Reciprocal,
    /// Per-channel weights, and FBGEMM's scalar path: `bias / act_times_w_scale`.
    Division,
}

/// The conv/linear output requantization of one output channel, as PyTorch's FBGEMM kernels do it:
/// float multiplier, float bias divided by `act_scale * w_scale`, round half to even, `+ zp`, clamp
/// to quint8, ReLU clamping at the zero point.
///
/// ```
/// use qcore::requant::{BiasTerm, ConvRequant};
/// let r = ConvRequant::new(0.02, 0.005, 0.05)?; // activation, weight and output scales
/// // acc = Σ (a - a_zp)(w - w_zp) = 1000 with bias 0.1: (1000 + 0.1/1e-4) * 0.002 = 4 → 4 + zp
/// assert_eq!(r.requantize(1000, r.bias_term(0.1, BiasTerm::Division), 3, false), 7);
/// # Ok::<(), qcore::QError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvRequant {
    act_times_w_scale: f32,
    multiplier: f32,
}

impl ConvRequant {
    /// `act_times_w_scale = (float)act_scale * (float)w_scale`,
    /// `multiplier = act_times_w_scale / (float)out_scale`, all in f32 as PyTorch computes them.
    pub fn new(act_scale: f64, w_scale: f64, out_scale: f64) -> QResult<Self> {
        const CONTEXT: &str = "ConvRequant::new";
        for scale in [act_scale, w_scale, out_scale] {
            inverse_scale(CONTEXT, scale)?;
        }
        let act_times_w_scale = act_scale as f32 * w_scale as f32;
        Ok(Self { act_times_w_scale, multiplier: act_times_w_scale / out_scale as f32 })
    }

    /// `act_scale * w_scale` in f32.
    pub fn act_times_w_scale(&self) -> f32 {
        self.act_times_w_scale
    }

    /// The f32 multiplier from accumulator units to output units.
    pub fn multiplier(&self) -> f32 {
        self.multiplier
    }

    /// The float bias in accumulator units, computed once per output channel.
    pub fn bias_term(&self, bias: f32, mode: BiasTerm) -> f32 {
        match mode {
            BiasTerm::Reciprocal => bias * (1.0 / f64::from(self.act_times_w_scale)) as f32,
            BiasTerm::Division => bias / self.act_times_w_scale,
        }
    }

    /// Requantizes the zero-point-corrected accumulator `acc = Σ (a - a_zp)(w - w_zp)` to quint8.
    ///
    /// `y = cvtps2dq(((float)acc + bias_term) * multiplier)`, then FBGEMM's saturating pack:
    /// to i16, `+ zp` saturating in i16, to u8; ReLU raises the floor to the zero point. A product
    /// beyond i32 (only with absurd scales) converts to `i32::MIN` and so to 0, as on x86.
    pub fn requantize(&self, acc: i32, bias_term: f32, out_zero_point: u8, relu: bool) -> u8 {
        let y = cvt_f32_to_i32_x86((acc as f32 + bias_term) * self.multiplier);
        let y16 = y.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        let with_zp = y16.saturating_add(i16::from(out_zero_point));
        let out = with_zp.clamp(0, 255) as u8;
        if relu { out.max(out_zero_point) } else { out }
    }
}

/// Quantized `add` / `add_relu` of two per-tensor tensors (PyTorch `quantized::add`), one element.
///
/// Each input is dequantized in the vector form `fma(scale, (float)q, scale * -(float)zp)`, the
/// sum (ReLU'd to >= 0 for `add_relu`) is quantized with the output parameters by
/// [`AffineQuantizer::quantize`]. PyTorch's scalar loop ([`AddRequant::apply_scalar_loop`])
/// dequantizes as `scale * (q - zp)` instead, which can differ by one f32 ulp and so by 1 in the
/// result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddRequant {
    a: (f32, f32),
    b: (f32, f32),
    params: [(f64, i64); 3],
    out: AffineQuantizer,
    relu: bool,
}

impl AddRequant {
    /// Parameters `(scale, zero_point)` of both inputs and of the output, all of `dtype`.
    pub fn new(a: (f64, i64), b: (f64, i64), out: (f64, i64), dtype: QDType, relu: bool) -> QResult<Self> {
        const CONTEXT: &str = "AddRequant::new";
        let dequant = |(scale, zero_point): (f64, i64)| -> QResult<(f32, f32)> {
            inverse_scale(CONTEXT, scale)?;
            dtype.check_zero_point(CONTEXT, zero_point)?;
            let scale = scale as f32;
            Ok((scale, scale * -(zero_point as f32)))
        };
        Ok(Self {
            a: dequant(a)?,
            b: dequant(b)?,
            params: [a, b, out],
            out: AffineQuantizer::new(out.0, out.1, dtype)?,
            relu,
        })
    }

    /// The element rule of PyTorch's scalar loop (`qadd_kernel`'s scalar lambda, for the elements
    /// `cpu_kernel_vec` leaves to it): [`dequantize_val`] of each input, the f32 sum (ReLU as
    /// `std::max(c, 0.0f)`), and [`quantize_val`] with the output parameters.
    pub fn apply_scalar_loop(&self, a: i32, b: i32) -> i32 {
        let [(sa, za), (sb, zb), (so, zo)] = self.params;
        let sum = dequantize_val(sa, za, a) + dequantize_val(sb, zb, b);
        quantize_val(so, zo, if self.relu { sum.max(0.0) } else { sum }, self.out.dtype())
    }

    /// The quantized sum of two quantized values.
    pub fn apply(&self, a: i32, b: i32) -> i32 {
        let da = self.a.0.mul_add(a as f32, self.a.1);
        let db = self.b.0.mul_add(b as f32, self.b.1);
        let sum = da + db;
        // Vectorized maximum(c, 0) propagates NaN; sums of finite dequantized values are finite.
        self.out.quantize(if self.relu { sum.max(0.0) } else { sum })
    }
}

/// Quantized `mul` / `mul_relu` of two per-tensor tensors (PyTorch `quantized::mul`), one element:
/// `requantize_from_int((float)a_s * (float)b_s * (1.0f / (float)out_s), out_zp, (a - a_zp) * (b - b_zp))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MulRequant {
    a_zero_point: i32,
    b_zero_point: i32,
    multiplier: f32,
    out_zero_point: i64,
    dtype: QDType,
    relu: bool,
}

impl MulRequant {
    /// Parameters `(scale, zero_point)` of both inputs and of the output, all of `dtype`.
    pub fn new(a: (f64, i64), b: (f64, i64), out: (f64, i64), dtype: QDType, relu: bool) -> QResult<Self> {
        const CONTEXT: &str = "MulRequant::new";
        for (scale, zero_point) in [a, b, out] {
            inverse_scale(CONTEXT, scale)?;
            dtype.check_zero_point(CONTEXT, zero_point)?;
        }
        let multiplier = a.0 as f32 * b.0 as f32 * (1.0f32 / out.0 as f32);
        Ok(Self {
            a_zero_point: a.1 as i32,
            b_zero_point: b.1 as i32,
            multiplier,
            out_zero_point: out.1,
            dtype,
            relu,
        })
    }

    /// The quantized product of two quantized values.
    pub fn apply(&self, a: i32, b: i32) -> i32 {
        let product =
            i64::from(a.wrapping_sub(self.a_zero_point).wrapping_mul(b.wrapping_sub(self.b_zero_point)));
        let q = requantize_from_int(self.multiplier, self.out_zero_point, product, self.dtype);
        if self.relu { q.max(self.out_zero_point as i32) } else { q }
    }
}

/// The result of adding or multiplying a quantized tensor by a float scalar: PyTorch changes the
/// output parameters and, where it can, leaves the integer data as it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarOp {
    /// Output scale.
    pub scale: f64,
    /// Output zero point.
    pub zero_point: i64,
    map: ScalarOpData,
    relu: bool,
    dtype: QDType,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ScalarOpData {
    /// Integer data unchanged.
    Copy,
    /// `requantize_from_int(multiplier, zero_point, q - in_zp + offset)`.
    Requantize { in_zero_point: i64, offset: i64, multiplier: f32 },
    /// `qmax + qmin - q`: a negative multiplier mirrors the data.
    Mirror,
    /// Every value becomes this constant.
    Constant(i32),
}

impl ScalarOp {
    /// `quantized::add_scalar` / `add_scalar_relu` on a per-tensor tensor with `(scale, zero_point)`.
    ///
    /// `c_q = nearbyint(c / s)`; when `z - c_q` stays within the dtype the zero point moves to it and
    /// the data is copied; otherwise the zero point is pinned to qmin (or qmax), the scale grows to
    /// keep the range, and the data is requantized with `(float)s * (1.0f / (float)s')`.
    pub fn add_scalar(scale: f64, zero_point: i64, c: f64, dtype: QDType, relu: bool) -> QResult<Self> {
        const CONTEXT: &str = "ScalarOp::add_scalar";
        inverse_scale(CONTEXT, scale)?;
        dtype.check_zero_point(CONTEXT, zero_point)?;
        let (qmin, qmax) = (dtype.min(), dtype.max());
        let c_q = (c / scale).round_ties_even() as i64;
        let shifted = zero_point - c_q;
        let range = qmax as f64 - qmin as f64;
        let (out_scale, out_zero_point) = if qmin > shifted {
            ((qmax as f64 - shifted as f64) / range * scale, qmin)
        } else if qmax < shifted {
            ((shifted as f64 - qmin as f64) / range * scale, qmax)
        } else {
            return Ok(Self { scale, zero_point: shifted, map: ScalarOpData::Copy, relu, dtype });
        };
        let multiplier = scale as f32 * (1.0f32 / out_scale as f32);
        Ok(Self {
            scale: out_scale,
            zero_point: out_zero_point,
            map: ScalarOpData::Requantize { in_zero_point: zero_point, offset: c_q, multiplier },
            relu,
            dtype,
        })
    }

    /// `quantized::mul_scalar` / `mul_scalar_relu` on a per-tensor tensor with `(scale, zero_point)`.
    ///
    /// `c > 0`: scale `c * s`, data copied. `c < 0`: scale `-c * s`, zero point `qmax - (z - qmin)`,
    /// data mirrored to `qmax + qmin - q`. `c == 0`: scale 1, zero point 0, every value 0.
    pub fn mul_scalar(scale: f64, zero_point: i64, c: f64, dtype: QDType, relu: bool) -> QResult<Self> {
        const CONTEXT: &str = "ScalarOp::mul_scalar";
        inverse_scale(CONTEXT, scale)?;
        dtype.check_zero_point(CONTEXT, zero_point)?;
        let (qmin, qmax) = (dtype.min(), dtype.max());
        let (scale, zero_point, map) = if c > 0.0 {
            (c * scale, zero_point, ScalarOpData::Copy)
        } else if c < 0.0 {
            (-c * scale, qmax - (zero_point - qmin), ScalarOpData::Mirror)
        } else {
            (1.0, 0, ScalarOpData::Constant(0))
        };
        Ok(Self { scale, zero_point, map, relu, dtype })
    }

    /// The output value for input value `q`.
    pub fn apply(&self, q: i32) -> i32 {
        let (qmin, qmax) = (self.dtype.min(), self.dtype.max());
        let out = match self.map {
            ScalarOpData::Copy => q,
            ScalarOpData::Mirror => (qmax + qmin - i64::from(q)) as i32,
            ScalarOpData::Constant(v) => v,
            ScalarOpData::Requantize { in_zero_point, offset, multiplier } => {
                let v = (i64::from(q) - in_zero_point + offset) as i32;
                requantize_from_int(multiplier, self.zero_point, v.into(), self.dtype)
            }
        };
        if self.relu { out.max(self.zero_point.clamp(qmin, qmax) as i32) } else { out }
    }
}
