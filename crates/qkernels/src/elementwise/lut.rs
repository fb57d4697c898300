//! 256-entry lookup tables: every op of one 8-bit input, built once from PyTorch's element rule.

use std::marker::PhantomData;

use qcore::{QDType, cvt_f32_to_i32_x86, dequantize_val, quantize_val};

use qcore::PerTensor;

use super::qelem::{QElem, bytes, bytes_mut};
use crate::float::Activation;
use crate::util::{SendPtr, check_len, for_chunks, invalid};
use crate::{Isa, KernelResult};

/// How PyTorch dequantizes before a float op, which differs between its kernels (NUMERICS.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dequant {
    /// `f32(s) * f32(q - zp)` and, after the op, `quantize_per_tensor` (inverse `1.0f / f32(s)`):
    /// PyTorch's general paths (`Tensor.dequantize`, the `cat` of non-channels-last tensors).
    Plain,
    /// The vector body of PyTorch's quantized kernels: `fma(f32(s), f32(q), f32(s) * -f32(zp))`,
    /// quantized with the inverse `f32(1.0 / s)` computed in double (`qcat_nhwc_kernel`).
    Fma,
}

/// A quantized activation. Each maps one input value to one output value, exactly as PyTorch's
/// quantized kernel (fbgemm engine) computes it in its vector body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// `quantized::relu`: `max(q, zp)`; output parameters are the input's.
    Relu,
    /// `quantized::relu6`: `min(max(q, zp), quantize_val(6.0))`; output parameters are the input's.
    Relu6,
    /// `quantized::hardtanh` / `clamp`: `min(max(q, quantize_val(min)), quantize_val(max))`.
    Hardtanh {
        /// Lower bound, in real units.
        min: f32,
        /// Upper bound, in real units.
        max: f32,
    },
    /// `quantized::hardswish`: `x * min(max(x + 3, 0), 6) / 6` on the FMA-dequantized input,
    /// quantized with the inverse `f32(1.0 / out_scale)`.
    Hardswish,
    /// `quantized::hardsigmoid`: `min(max(x + 3, 0), 6) / 6` in f32; output scale 1/256, zero
    /// point 0 (quint8) or -128 (qint8).
    Hardsigmoid,
    /// `threshold` on quantized values (`qthreshold_kernel`): `x > threshold ? x : value` on the
    /// FMA-dequantized input, with the input's parameters (inverse `f32(1 / f64(f32(s)))`).
    Threshold {
        /// Values at or below it are replaced.
        threshold: f32,
        /// The replacement, in real units.
        value: f32,
    },
    /// `quantized::sigmoid`: `1 / (1 + exp(-x))` in f32; output scale 1/256, zero point 0
    /// (quint8) or -128 (qint8).
    Sigmoid,
    /// `quantized::tanh`: output scale 2/256, zero point 128 (quint8) or 0 (qint8).
    Tanh,
    /// `quantized::leaky_relu`: `x * (x > 0 ? 1 : negative_slope)`.
    LeakyRelu {
        /// The slope for negative inputs.
        negative_slope: f32,
    },
    /// `quantized::elu`: `x >= 0 ? x * scale : expm1(x * input_scale) * alpha * scale`.
    Elu {
        /// `alpha`.
        alpha: f32,
        /// `scale` (1 for `torch.nn.ELU`).
        scale: f32,
        /// `input_scale` (1 for `torch.nn.ELU`).
        input_scale: f32,
    },
}

impl Unary {
    /// The op's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Unary::Relu => "relu",
            Unary::Relu6 => "relu6",
            Unary::Hardtanh { .. } => "hardtanh",
            Unary::Hardswish => "hardswish",
            Unary::Hardsigmoid => "hardsigmoid",
            Unary::Threshold { .. } => "threshold",
            Unary::Sigmoid => "sigmoid",
            Unary::Tanh => "tanh",
            Unary::LeakyRelu { .. } => "leaky_relu",
            Unary::Elu { .. } => "elu",
        }
    }

    /// The output parameters PyTorch gives this op when the caller does not choose them: fixed for
    /// sigmoid, hardsigmoid and tanh, the input's for every other op.
    pub fn output_qparams(&self, input: PerTensor, dtype: QDType) -> PerTensor {
        match (self, dtype) {
            (Unary::Sigmoid | Unary::Hardsigmoid, QDType::QInt8) => PerTensor::new(1.0 / 256.0, -128),
            (Unary::Sigmoid | Unary::Hardsigmoid, _) => PerTensor::new(1.0 / 256.0, 0),
            (Unary::Tanh, QDType::QUInt8) => PerTensor::new(2.0 / 256.0, 128),
            (Unary::Tanh, _) => PerTensor::new(2.0 / 256.0, 0),
            _ => input,
        }
    }

    /// True if PyTorch lets the caller choose the output parameters (hardswish, leaky_relu, elu);
    /// the other ops only produce [`Unary::output_qparams`].
    pub fn output_qparams_free(&self) -> bool {
        matches!(self, Unary::Hardswish | Unary::LeakyRelu { .. } | Unary::Elu { .. })
    }

    /// For the ops that are an integer clamp, its bounds; checks the parameters.
    pub(crate) fn integer_clamp<T: QElem>(
        &self,
        in_q: PerTensor,
        out_q: PerTensor,
    ) -> KernelResult<Option<(T, T)>> {
        let dtype = T::DTYPE;
        in_q.quantizer(dtype)?;
        out_q.quantizer(dtype)?;
        if !self.output_qparams_free() && out_q != self.output_qparams(in_q, dtype) {
            return Err(invalid(
                self.name(),
                "output qparams",
                out_q,
                "this op fixes its output parameters (Unary::output_qparams)",
            ));
        }
        let q = |x: f32| quantize_val(in_q.scale, in_q.zero_point, x, dtype);
        let zp = in_q.zero_point as i32;
        let (lo, hi) = match *self {
            Unary::Relu => (zp, dtype.max() as i32),
            Unary::Relu6 => (zp, q(6.0)),
            Unary::Hardtanh { min, max } => {
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(invalid(
                        "hardtanh",
                        "(min, max)",
                        (min, max),
                        "needs min <= max, neither NaN",
                    ));
                }
                (q(min), q(max))
            }
            _ => return Ok(None),
        };
        // std::min(std::max(q, lo), hi): with lo > hi every value becomes hi.
        Ok(Some((T::from_i32(lo.min(hi)), T::from_i32(hi))))
    }
}

/// A 256-entry table from input byte to output byte: any function of one 8-bit quantized value.
#[derive(Clone)]
pub struct Lut<T> {
    table: [u8; 256],
    identity: bool,
    _t: PhantomData<T>,
}

impl<T> std::fmt::Debug for Lut<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lut").field("table", &&self.table[..]).finish()
    }
}

/// FBGEMM's vector quantize (`QuantizeAvx2`/`Avx512`) with a given inverse scale: NUMERICS.md §2.1.
fn quantize_vec_rule(x: f32, inv: f32, zp: i32, dtype: QDType) -> i32 {
    let t = x * inv;
    let t = if t.is_nan() || t > 2_147_483_520.0 { 2_147_483_520.0 } else { t };
    cvt_f32_to_i32_x86(t).wrapping_add(zp).clamp(dtype.min() as i32, dtype.max() as i32)
}

impl<T: QElem> Lut<T> {
    /// The table of `f`, evaluated on all 256 values.
    pub fn from_fn(f: impl Fn(T) -> T) -> Self {
        let mut table = [0u8; 256];
        for (i, t) in table.iter_mut().enumerate() {
            *t = f(T::from_index(i)).index() as u8;
        }
        let identity = table.iter().enumerate().all(|(i, &t)| usize::from(t) == i);
        Self { table, identity, _t: PhantomData }
    }

    /// The output value for input `q`.
    pub fn get(&self, q: T) -> T {
        T::from_index(usize::from(self.table[q.index()]))
    }

    /// The table of a [`Unary`] op from input parameters `in_q` to output parameters `out_q`
    /// (which must be what PyTorch allows, see [`Unary::output_qparams`]).
    pub fn unary(op: Unary, in_q: PerTensor, out_q: PerTensor) -> KernelResult<Self> {
        let dtype = T::DTYPE;
        if let Some((lo, hi)) = op.integer_clamp::<T>(in_q, out_q)? {
            return Ok(Self::from_fn(|q: T| q.max(lo).min(hi)));
        }
        let s = in_q.scale as f32;
        let premul = s * -(in_q.zero_point as f32);
        let fma = |q: T| s.mul_add(q.to_i32() as f32, premul);
        let ozp = out_q.zero_point as i32;
        let inv_f64 = (1.0 / out_q.scale) as f32;
        let out = |y: f32, inv: f32| T::from_i32(quantize_vec_rule(y, inv, ozp, dtype));
        Ok(match op {
            Unary::Hardswish => Self::from_fn(|q| out(Activation::Hardswish.apply(fma(q)), inv_f64)),
            Unary::Hardsigmoid => Self::from_fn(|q| out(Activation::Hardsigmoid.apply(fma(q)), inv_f64)),
            Unary::Sigmoid => Self::from_fn(|q| out(Activation::Sigmoid.apply(fma(q)), inv_f64)),
            Unary::Tanh => Self::from_fn(|q| out(Activation::Tanh.apply(fma(q)), inv_f64)),
            Unary::LeakyRelu { negative_slope } => {
                let inv = 1.0f32 / out_q.scale as f32;
                Self::from_fn(|q| out(Activation::LeakyRelu { negative_slope }.apply(fma(q)), inv))
            }
            Unary::Threshold { threshold, value } => {
                let inv = (1.0 / f64::from(out_q.scale as f32)) as f32;
                Self::from_fn(|q| {
                    let x = fma(q);
                    out(if x > threshold { x } else { value }, inv)
                })
            }
            Unary::Elu { alpha, scale, input_scale } => {
                let inv = (1.0 / f64::from(out_q.scale as f32)) as f32;
                Self::from_fn(|q| {
                    let x = fma(q);
                    let y = if x >= 0.0 { x * scale } else { (x * input_scale).exp_m1() * alpha * scale };
                    out(y, inv)
                })
            }
            Unary::Relu | Unary::Relu6 | Unary::Hardtanh { .. } => {
                unreachable!("integer clamps return above")
            }
        })
    }

    /// The table that requantizes from `in_q` to `out_q` (with ReLU in float when `relu`), by the
    /// `dequant` rule: what [`super::cat`] applies to each input.
    pub fn requantize(in_q: PerTensor, out_q: PerTensor, relu: bool, dequant: Dequant) -> KernelResult<Self> {
        let dtype = T::DTYPE;
        in_q.quantizer(dtype)?;
        let quantizer = out_q.quantizer(dtype)?;
        let relu = |x: f32| if relu { x.max(0.0) } else { x };
        Ok(match dequant {
            Dequant::Plain => Self::from_fn(|q: T| {
                let x = dequantize_val(in_q.scale, in_q.zero_point, q.to_i32());
                T::from_i32(quantizer.quantize(relu(x)))
            }),
            Dequant::Fma => {
                let s = in_q.scale as f32;
                let premul = s * -(in_q.zero_point as f32);
                let inv = (1.0 / out_q.scale) as f32;
                let zp = out_q.zero_point as i32;
                Self::from_fn(|q: T| {
                    let x = relu(s.mul_add(q.to_i32() as f32, premul));
                    T::from_i32(quantize_vec_rule(x, inv, zp, dtype))
                })
            }
        })
    }

    /// `out[i] = table[input[i]]`, on the chosen tier (a shuffle-based lookup on AVX2 and AVX-512,
    /// `vpermi2b` where the CPU has AVX-512 VBMI and the tier is [`Isa::Avx512Vnni`]).
    pub fn apply(&self, input: &[T], out: &mut [T], isa: Isa) -> KernelResult<()> {
        isa.ensure_supported()?;
        check_len("lut", "output length", out.len(), input.len())?;
        let src = bytes(input);
        let out = bytes_mut(out);
        if self.identity {
            out.copy_from_slice(src);
            return Ok(());
        }
        let ptr = SendPtr(out.as_mut_ptr());
        for_chunks(src.len(), |s, e| {
            // SAFETY: disjoint ranges of `out` (as bytes), which outlives the call.
            let dst = unsafe { ptr.slice(s, e) };
            lut(&self.table, &src[s..e], dst, isa);
        });
        Ok(())
    }

    /// The raw table, indexed by the input's byte pattern.
    pub fn table(&self) -> &[u8; 256] {
        &self.table
    }
}

/// `out[i] = table[input[i]]` on the chosen tier.
fn lut(table: &[u8; 256], input: &[u8], out: &mut [u8], isa: Isa) {
    let done = on_tier!(
        isa,
        scalar: 0,
        avx2: crate::x86::elementwise::avx2::lut(table, input, out),
        avx512: crate::x86::elementwise::avx512::lut(table, input, out),
        avx512vnni: if crate::x86::has_avx512vbmi() {
            crate::x86::elementwise::avx512::lut_vbmi(table, input, out)
        } else {
            crate::x86::elementwise::avx512::lut(table, input, out)
        },
    );
    for (o, &x) in out[done..].iter_mut().zip(&input[done..]) {
        *o = table[usize::from(x)];
    }
}
