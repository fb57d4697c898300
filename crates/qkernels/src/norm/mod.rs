//! Quantized batch normalization on channels-last quint8 (`quantized::batch_norm1d/2d/3d` and
//! their `_relu` variants), with PyTorch's numbers.
//!
//! PyTorch (`aten/src/ATen/native/quantized/cpu/qbatch_norm.cpp`) folds the statistics into one
//! scale and shift per channel, `compute_fused_params`, then runs `q_batch_norm_kernel`
//! (`kernels/QuantizedOpKernels.cpp`). That kernel is registered with `REGISTER_DISPATCH`, so an
//! AVX-512 CPU runs its AVX2 build: `Vectorized<float>` of 8 lanes, 32 channels at a time, then
//! 8 at a time, then the last `C mod 8` channels in scalar code. The definition, per channel `c`
//! of `C` ([`FusedBatchNorm`] holds the folded parameters, [`FusedBatchNorm::element`] applies it):
//!
//! ```text
//! inv_sigma = f32(1.0 / f64(sqrtf(var[c] + f32(eps))))                  // sqrt in f32, divide in f64
//! alpha[c]  = f32(f64(inv_sigma * weight[c]) * (in_scale / out_scale))  // scales as f64
//! beta[c]   = f32(f64(bias[c] - mean[c] * inv_sigma * weight[c]) / out_scale)
//!
//! d = f32(q - in_zp)                                                     // exact
//! first C - C mod 8 channels (vector code):
//!     y = fma(alpha[c], d, beta[c])
//!     out = clamp(cvtps2dq(min_ps(y, 2^31 - 128)) +wrapping out_zp, 0, 255)   // QuantizeAvx2, scale 1
//!     relu: out = max(out, out_zp)
//! last C mod 8 channels (scalar code, compiled with FMA contraction):
//!     y = fma(alpha[c], d, beta[c])
//!     out = clamp(max?(out_zp + lrintf(y), out_zp), 0, 255)             // i64; NaN / Inf -> i64::MIN
//! ```
//!
//! `compute_fused_params` is compiled without FMA (baseline x86-64), so its products and
//! differences round one at a time. The two element rules agree unless `y` is NaN or its
//! magnitude reaches 2^31: there the vector code gives 255 (0 when the wrapping add overflows,
//! `out_zp >= 128`) for NaN and large positive values, the scalar code 0 for NaN and ±Inf.
//! The golden fixtures (`tools/golden/gen_kernels_bn.py`) confirm both rules and the FMA in the
//! scalar tail, on channels chosen so that an unfused multiply-add would round differently.

use qcore::{AffineQuantizer, QDType};

use crate::elementwise::PerTensor;
use crate::util::{SendPtr, check_len, invalid, numel, par_rows};
use crate::{Isa, KernelResult};

/// Channels PyTorch's batch-norm kernel computes with vectors: all but the last `C mod 8`.
pub const PYTORCH_BN_VECTOR_CHANNELS: usize = 8;

/// The statistics and affine parameters of a batch-norm layer, one value per channel.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormParams<'a> {
    /// `gamma`.
    pub weight: &'a [f32],
    /// `beta`.
    pub bias: &'a [f32],
    /// The running mean.
    pub mean: &'a [f32],
    /// The running variance.
    pub var: &'a [f32],
    /// Added to the variance (PyTorch's default 1e-5); used as `f32(eps)`.
    pub eps: f64,
}

/// A batch norm folded into `alpha` and `beta` per channel (PyTorch's `compute_fused_params`),
/// with the zero points and ReLU flag the kernel needs. Build once per layer, apply many times.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedBatchNorm {
    alpha: Vec<f32>,
    beta: Vec<f32>,
    in_zp: i32,
    out_zp: i32,
    relu: bool,
    quantizer: AffineQuantizer,
}

/// x86 `lrintf` into a C `long`: round half to even; NaN, ±Inf and values beyond i64 give
/// `i64::MIN`.
fn lrintf(x: f32) -> i64 {
    const LIMIT: f32 = 9_223_372_036_854_775_808.0;
    let r = x.round_ties_even();
    if r.is_nan() || !(-LIMIT..LIMIT).contains(&r) { i64::MIN } else { r as i64 }
}

impl FusedBatchNorm {
    /// Folds `params` for an input quantized with `in_q` and an output with `out_q` (both quint8),
    /// exactly as PyTorch's `compute_fused_params`.
    ///
    /// Errors: parameter slices of different lengths, an invalid scale or zero point.
    pub fn new(
        params: &BatchNormParams<'_>,
        in_q: PerTensor,
        out_q: PerTensor,
        relu: bool,
    ) -> KernelResult<Self> {
        const OP: &str = "batch_norm";
        let c = params.weight.len();
        check_len(OP, "bias length", params.bias.len(), c)?;
        check_len(OP, "mean length", params.mean.len(), c)?;
        check_len(OP, "var length", params.var.len(), c)?;
        let in_zp = in_q.quantizer(QDType::QUInt8)?.zero_point();
        let out_zp = out_q.quantizer(QDType::QUInt8)?.zero_point();
        // The output stage is quantize with scale 1 (inverse 1) and the output zero point.
        let quantizer = AffineQuantizer::new(1.0, out_zp.into(), QDType::QUInt8)?;
        let ratio = in_q.scale / out_q.scale;
        let eps = params.eps as f32;
        let (mut alpha, mut beta) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            let inv_sigma = (1.0f64 / f64::from((params.var[ch] + eps).sqrt())) as f32;
            let w = params.weight[ch];
            alpha.push((f64::from(inv_sigma * w) * ratio) as f32);
            beta.push((f64::from(params.bias[ch] - params.mean[ch] * inv_sigma * w) / out_q.scale) as f32);
        }
        Ok(Self { alpha, beta, in_zp, out_zp, relu, quantizer })
    }

    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.alpha.len()
    }

    /// The folded scale per channel.
    pub fn alpha(&self) -> &[f32] {
        &self.alpha
    }

    /// The folded shift per channel (in output quanta).
    pub fn beta(&self) -> &[f32] {
        &self.beta
    }

    /// The first channel PyTorch computes with its scalar code: `C - C mod 8`.
    pub fn vector_end(&self) -> usize {
        let c = self.channels();
        c - c % PYTORCH_BN_VECTOR_CHANNELS
    }

    /// The output of one element `q` of channel `c` (the scalar definition every tier matches):
    /// the vector rule below [`FusedBatchNorm::vector_end`], the scalar rule from there on (see
    /// the module documentation).
    pub fn element(&self, c: usize, q: u8) -> u8 {
        let d = (i32::from(q) - self.in_zp) as f32;
        let y = self.alpha[c].mul_add(d, self.beta[c]);
        let r = if c < self.vector_end() {
            self.quantizer.quantize(y)
        } else {
            (i64::from(self.out_zp) + lrintf(y)).clamp(0, 255) as i32
        };
        let r = if self.relu { r.max(self.out_zp) } else { r };
        r as u8
    }

    /// Applies the batch norm to `input`, rows of [`FusedBatchNorm::channels`] channels
    /// (channels-last: any number of pixels, batch included), on the chosen tier.
    ///
    /// Errors: lengths that are not a whole number of rows or differ, an unsupported tier.
    pub fn run(&self, input: &[u8], out: &mut [u8], isa: Isa) -> KernelResult<()> {
        const OP: &str = "batch_norm";
        isa.ensure_supported()?;
        check_len(OP, "output length", out.len(), input.len())?;
        let c = self.channels();
        if c == 0 {
            return check_len(OP, "input length", input.len(), 0);
        }
        if !input.len().is_multiple_of(c) {
            return Err(invalid(OP, "input length", input.len(), "must be a multiple of the channel count"));
        }
        let rows = input.len() / c;
        let ptr = SendPtr(out.as_mut_ptr());
        par_rows(rows, c, |r0, r1| {
            // SAFETY: rows [r0, r1) are a range of `out` no other task writes; `out` outlives the call.
            let o = unsafe { ptr.slice(r0 * c, r1 * c) };
            self.rows(&input[r0 * c..r1 * c], o, isa);
        });
        Ok(())
    }

    /// Whole rows on the chosen tier: the vector tiers take every channel (the scalar-tail rule
    /// too, in masked lanes), the scalar tier applies [`FusedBatchNorm::element`].
    fn rows(&self, input: &[u8], out: &mut [u8], isa: Isa) {
        let c = self.channels();
        debug_assert!(c > 0 && input.len() == out.len() && input.len().is_multiple_of(c));
        let (alpha, beta) = (&self.alpha[..], &self.beta[..]);
        let vector = on_tier!(
            isa,
            scalar: false,
            avx2: {
                crate::x86::norm::avx2::rows(self.consts(), alpha, beta, input, out);
                true
            },
            avx512: {
                crate::x86::norm::avx512::rows(self.consts(), alpha, beta, input, out);
                true
            },
        );
        if vector {
            return;
        }
        for (x, o) in input.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            for (ch, (o, &q)) in o.iter_mut().zip(x).enumerate() {
                *o = self.element(ch, q);
            }
        }
    }
}

impl FusedBatchNorm {
    /// The per-call constants the x86 rows take.
    #[cfg(target_arch = "x86_64")]
    fn consts(&self) -> crate::x86::norm::Consts {
        crate::x86::norm::Consts {
            in_zp: self.in_zp,
            out_zp: self.out_zp,
            relu: self.relu,
            vend: self.vector_end(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn batch_norm_nd(
    op: &'static str,
    ranks: &[usize],
    input: &[u8],
    shape: &[usize],
    in_q: PerTensor,
    params: &BatchNormParams<'_>,
    out: &mut [u8],
    out_q: PerTensor,
    relu: bool,
    isa: Isa,
) -> KernelResult<()> {
    isa.ensure_supported()?;
    if !ranks.contains(&shape.len()) {
        return Err(invalid(op, "rank of the input", shape.len(), "must be 2 or 3 (1d), 4 (2d) or 5 (3d)"));
    }
    let total = numel(op, shape)?;
    check_len(op, "input length", input.len(), total)?;
    check_len(op, "output length", out.len(), total)?;
    check_len(op, "weight length", params.weight.len(), shape[1])?;
    FusedBatchNorm::new(params, in_q, out_q, relu)?.run(input, out, isa)
}

macro_rules! batch_norm_fn {
    ($name:ident, $op:literal, $ranks:expr, $relu:expr, $doc:literal) => {
        #[doc = $doc]
        ///
        /// `input` and `out` are channels-last quint8 (`[N, spatial..., C]`), `shape` the logical
        /// `[N, C, spatial...]` shape, `in_q` the input's parameters, `out_q` the output's. Every
        /// element follows [`FusedBatchNorm::element`] on every tier.
        ///
        /// Errors: a wrong rank, buffer or parameter lengths that do not match the shape, an
        /// invalid scale or zero point, an unsupported tier.
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            input: &[u8],
            shape: &[usize],
            in_q: PerTensor,
            params: &BatchNormParams<'_>,
            out: &mut [u8],
            out_q: PerTensor,
            isa: Isa,
        ) -> KernelResult<()> {
            batch_norm_nd($op, $ranks, input, shape, in_q, params, out, out_q, $relu, isa)
        }
    };
}

batch_norm_fn!(
    batch_norm1d,
    "batch_norm1d",
    &[2, 3],
    false,
    "`quantized::batch_norm1d` on `[N, C]` or `[N, C, L]`."
);
batch_norm_fn!(
    batch_norm1d_relu,
    "batch_norm1d_relu",
    &[2, 3],
    true,
    "`quantized::batch_norm1d_relu` on `[N, C]` or `[N, C, L]`."
);
batch_norm_fn!(batch_norm2d, "batch_norm2d", &[4], false, "`quantized::batch_norm2d` on `[N, C, H, W]`.");
batch_norm_fn!(
    batch_norm2d_relu,
    "batch_norm2d_relu",
    &[4],
    true,
    "`quantized::batch_norm2d_relu` on `[N, C, H, W]`."
);
batch_norm_fn!(batch_norm3d, "batch_norm3d", &[5], false, "`quantized::batch_norm3d` on `[N, C, D, H, W]`.");
batch_norm_fn!(
    batch_norm3d_relu,
    "batch_norm3d_relu",
    &[5],
    true,
    "`quantized::batch_norm3d_relu` on `[N, C, D, H, W]`."
);
