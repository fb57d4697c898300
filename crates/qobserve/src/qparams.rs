//! `UniformQuantizationObserverBase`: argument checks and `_calculate_qparams`, ported from
//! PyTorch 2.15 with its float32 arithmetic.

use qcore::{QDType, QParams, QScheme, calculate_qmin_qmax, inverse_scale};

use crate::{ObserveError, ObserveResult, UniformArgs};

/// Checked range arguments with `quant_min`/`quant_max` resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Uniform {
    pub args: UniformArgs,
    pub qmin: i64,
    pub qmax: i64,
    /// PyTorch's `has_customized_qrange`.
    pub custom: bool,
}

/// Which family of qschemes an observer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granularity {
    PerTensor,
    PerChannel,
}

impl Uniform {
    /// Checks `args` as PyTorch's constructors do, plus: eps must be a positive float32 with a
    /// finite reciprocal, and symmetric + reduce_range + quint8 is refused for every observer
    /// (PyTorch refuses it for MinMax and PerChannel; elsewhere it yields a zero point of 128
    /// outside [0, 127]).
    pub(crate) fn new(
        observer: &'static str,
        args: UniformArgs,
        granularity: Granularity,
    ) -> ObserveResult<Self> {
        let scheme_ok = match granularity {
            Granularity::PerTensor => !args.qscheme.is_per_channel(),
            Granularity::PerChannel => args.qscheme.is_per_channel(),
        };
        if !scheme_ok {
            return Err(ObserveError::IncompatibleOptions {
                observer,
                options: format!("qscheme={}", args.qscheme),
                reason: match granularity {
                    Granularity::PerTensor => {
                        "this observer is per tensor; use per_tensor_affine or per_tensor_symmetric, \
                         or a per-channel observer"
                    }
                    Granularity::PerChannel => {
                        "this observer is per channel; use per_channel_affine, per_channel_symmetric or \
                         per_channel_affine_float_qparams, or a per-tensor observer"
                    }
                },
            });
        }
        if args.qscheme.is_symmetric() && args.reduce_range && args.dtype == QDType::QUInt8 {
            return Err(ObserveError::IncompatibleOptions {
                observer,
                options: format!("qscheme={}, reduce_range=true, dtype=torch.quint8", args.qscheme),
                reason: "PyTorch cannot reduce the range of symmetric quint8 quantization; use qint8, \
                         an affine qscheme, or quant_min/quant_max instead of reduce_range",
            });
        }
        let eps_ok = args.eps > 0.0 && args.eps.is_finite() && (1.0 / args.eps).is_finite();
        if !eps_ok {
            return Err(ObserveError::InvalidArgument {
                observer,
                name: "eps",
                value: format!("{:e}", args.eps),
                reason: "eps is the smallest scale: use a positive float32 whose reciprocal is finite \
                         (PyTorch's default is 2^-23)",
            });
        }
        let (qmin, qmax) =
            calculate_qmin_qmax(args.quant_min, args.quant_max, args.dtype, args.reduce_range)?;
        Ok(Self { args, qmin, qmax, custom: args.quant_min.is_some() && args.quant_max.is_some() })
    }

    /// `_calculate_qparams` for one (min, max) pair of an integer-zero-point scheme:
    /// `(scale as float32, zero point)`. The range must be observed (min <= max, both finite).
    pub(crate) fn affine_or_symmetric(&self, min_val: f32, max_val: f32) -> (f32, i64) {
        let (qmin, qmax) = (self.qmin, self.qmax);
        let min_neg = if min_val < 0.0 { min_val } else { 0.0 };
        let max_pos = if max_val > 0.0 { max_val } else { 0.0 };
        let eps = self.args.eps;
        if self.args.qscheme.is_symmetric() {
            let max_pos = if -min_neg > max_pos { -min_neg } else { max_pos };
            // `float(quant_max - quant_min) / 2` is a Python double, used as a float32 scalar.
            let divisor = ((qmax - qmin) as f64 / 2.0) as f32;
            let scale = max_pos / divisor;
            let scale = if scale > eps { scale } else { eps };
            let zero_point = match self.args.dtype {
                QDType::QUInt8 if self.custom => (qmin + qmax).div_euclid(2),
                QDType::QUInt8 => 128,
                _ => 0,
            };
            (scale, zero_point)
        } else {
            let scale = (max_pos - min_neg) / (qmax - qmin) as f32;
            let scale = if scale > eps { scale } else { eps };
            // `quant_min - torch.round(min_val_neg / scale).to(torch.int)`, in int32: the
            // conversion of an out-of-range float gives INT_MIN on x86 and the subtraction wraps.
            let rounded = (min_neg / scale).round_ties_even();
            let rounded_i32 = if (-2_147_483_648.0..2_147_483_648.0).contains(&rounded) {
                rounded as i32
            } else {
                i32::MIN
            };
            let zero_point = (qmin as i32).wrapping_sub(rounded_i32);
            (scale, i64::from(zero_point).clamp(qmin, qmax))
        }
    }

    /// `_calculate_qparams` for `per_channel_affine_float_qparams`: the range is **not** forced
    /// to include 0; `scale = (max - min) / (qmax - qmin)`, 1.0 where it is not above eps;
    /// `zero_point = -min / scale`, all float32.
    pub(crate) fn float_qparams(&self, min_val: f32, max_val: f32) -> (f32, f32) {
        let scale = (max_val - min_val) / (self.qmax - self.qmin) as f32;
        let scale = if scale > self.args.eps { scale } else { 1.0 };
        (scale, -min_val / scale)
    }

    /// Per-tensor parameters from an observed range, checked.
    pub(crate) fn per_tensor(
        &self,
        observer: &'static str,
        min_val: f32,
        max_val: f32,
    ) -> ObserveResult<QParams> {
        let (scale, zero_point) = self.affine_or_symmetric(min_val, max_val);
        check_scale(observer, min_val, max_val, scale)?;
        Ok(QParams::PerTensor { scale: f64::from(scale), zero_point })
    }

    /// Per-channel parameters from observed ranges along `axis`, checked.
    pub(crate) fn per_channel(
        &self,
        observer: &'static str,
        mins: &[f32],
        maxs: &[f32],
        axis: usize,
    ) -> ObserveResult<QParams> {
        if self.args.qscheme == QScheme::PerChannelAffineFloatQParams {
            let mut scales = Vec::with_capacity(mins.len());
            let mut zero_points = Vec::with_capacity(mins.len());
            for (&lo, &hi) in mins.iter().zip(maxs) {
                let (scale, zp) = self.float_qparams(lo, hi);
                if !(scale.is_finite() && zp.is_finite()) {
                    return Err(ObserveError::RangeUnusable {
                        observer,
                        min: lo,
                        max: hi,
                        reason: format!("float qparams scale {scale:e}, zero point {zp:e}"),
                    });
                }
                scales.push(scale);
                zero_points.push(zp);
            }
            return Ok(QParams::PerChannelFloat { scales, zero_points, axis });
        }
        let mut scales = Vec::with_capacity(mins.len());
        let mut zero_points = Vec::with_capacity(mins.len());
        for (&lo, &hi) in mins.iter().zip(maxs) {
            let (scale, zp) = self.affine_or_symmetric(lo, hi);
            check_scale(observer, lo, hi, scale)?;
            scales.push(f64::from(scale));
            zero_points.push(zp);
        }
        Ok(QParams::PerChannel { scales, zero_points, axis })
    }
}

/// A scale qcore can quantize with (finite, positive, finite f32 reciprocal).
fn check_scale(observer: &'static str, min: f32, max: f32, scale: f32) -> ObserveResult<()> {
    inverse_scale(observer, f64::from(scale)).map(drop).map_err(|e| ObserveError::RangeUnusable {
        observer,
        min,
        max,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(args: UniformArgs) -> Uniform {
        let g = if args.qscheme.is_per_channel() { Granularity::PerChannel } else { Granularity::PerTensor };
        Uniform::new("test", args, g).unwrap()
    }

    #[test]
    fn symmetric_qint8_divides_by_127_5() {
        let u = uniform(UniformArgs::per_tensor().dtype(QDType::QInt8).qscheme(QScheme::PerTensorSymmetric));
        assert_eq!(u.affine_or_symmetric(-2.0, 1.0), (2.0f32 / 127.5, 0));
    }

    #[test]
    fn quint8_symmetric_zero_point_is_128_or_the_custom_midpoint() {
        let u = uniform(UniformArgs::per_tensor().qscheme(QScheme::PerTensorSymmetric));
        assert_eq!(u.affine_or_symmetric(-1.0, 1.0).1, 128);
        let u = uniform(UniformArgs::per_tensor().qscheme(QScheme::PerTensorSymmetric).quant_range(0, 15));
        assert_eq!(u.affine_or_symmetric(-1.0, 1.0).1, 7);
    }

    #[test]
    fn all_zero_range_gives_eps_and_qmin() {
        let u = uniform(UniformArgs::per_tensor());
        assert_eq!(u.affine_or_symmetric(0.0, 0.0), (f32::EPSILON, 0));
    }
}
