//! Dynamic quantization kernels: PyTorch's FBGEMM `quantized::linear_dynamic` (int8 weights,
//! activations quantized per call) and `quantized::linear_dynamic_fp16` (fp16 weights, f32
//! activations), bit for bit (`docs/NUMERICS.md` section 15).
//!
//! * [`quantize_activations`]: min / max over the input (FBGEMM's `FindMinMax`), the qparams of
//!   [`qcore::dynamic::choose_dynamic_qparams`], and the quantize rule of
//!   [`qcore::dynamic::DynamicQuantizer`] into a caller-owned buffer.
//! * [`linear_dynamic`]: the above, then the int8 GEMM with its f32 output stage
//!   (`f32(acc) * (f32(a_scale) * f32(w_scale[n])) + bias[n]`, then ReLU), allocation-free once its
//!   [`DynamicScratch`] is warm.
//! * [`PackedF16Weights`] and [`linear_fp16`]: FBGEMM's fp16 GEMM: each output is a chain of
//!   fused multiply-adds over blocks of [`F16_K_BLOCK`] K values, the block sums added in order,
//!   then the bias added and ReLU applied.
//!
//! ```
//! use qkernels::dynamic::{DynamicScratch, linear_dynamic};
//! use qkernels::gemm::{PackedWeights, WeightQParams};
//! // y = x W^T with W = [[1, 0], [0, -1]] * 0.5 (qint8 1 and -1 at scale 0.5).
//! let w = PackedWeights::new(&[2, 0, 0, -2], 2, 2, &WeightQParams::per_tensor(0.25), None)?;
//! let mut out = [0f32; 2];
//! let mut scratch = DynamicScratch::default();
//! let q = linear_dynamic(&[1.0, 2.0], 1, &w, false, false, &mut out, &mut scratch)?;
//! assert_eq!(q.zero_point, 0);
//! assert!((out[0] - 0.5).abs() < 0.01 && (out[1] + 1.0).abs() < 0.01);
//! # Ok::<(), qkernels::KernelError>(())
//! ```

use half::f16;
use qcore::PerTensor;
use qcore::dynamic::{DynamicQuantizer, check_range, choose_dynamic_qparams};

use crate::gemm::{Output, OutputPipeline, PackedWeights, gemm, mul, nonzero};
use crate::util::{SendPtr, check_len, par_rows};
use crate::{Isa, KernelResult};

/// K values per block of FBGEMM's fp16 GEMM (`PackedGemmMatrixFP16`'s block row size): each
/// block's products are summed from zero and the block sums added to the output in order.
pub const F16_K_BLOCK: usize = 512;

/// Output columns per packed fp16 weight panel.
const F16_NR: usize = 16;

/// `(min, max)` of `x` on `isa` (FBGEMM's `FindMinMax`, `(0, 0)` if empty); NaN or ±Inf is an
/// error.
pub fn min_max(x: &[f32], isa: Isa) -> KernelResult<(f32, f32)> {
    isa.ensure_supported()?;
    let Some(&first) = x.first() else { return Ok((0.0, 0.0)) };
    let (lo, hi, bad, done) = on_tier!(
        isa,
        scalar: (first, first, 0.0, 0),
        // The avx2 module is compiled with F16C (every AVX2 CPU has it; checked all the same).
        avx2: if crate::x86::has_f16c() { crate::x86::dynamic::avx2::min_max(x) } else { (first, first, 0.0, 0) },
        avx512: crate::x86::dynamic::avx512::min_max(x),
    );
    let (mut lo, mut hi, mut bad) = (lo, hi, bad);
    for &v in &x[done..] {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
        bad += v * 0.0;
    }
    Ok(check_range("qkernels::dynamic::min_max", lo, hi, bad)?)
}

/// Quantizes `x` into `out` with `q`'s rule on `isa` (lengths equal).
fn quantize_run(q: &DynamicQuantizer, x: &[f32], out: &mut [u8], isa: Isa) {
    let (inv, zp) = (q.inv_scale(), i32::from(q.zero_point()));
    let done = on_tier!(
        isa,
        scalar: 0,
        avx2: crate::x86::quant::avx2::quantize(inv, zp, x, out),
        avx512: crate::x86::quant::avx512::quantize(inv, zp, x, out),
    );
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        *o = q.quantize(v);
    }
}

/// The per-call activation quantizer of FBGEMM's dynamic linear: min / max of `x`, PyTorch's
/// qparams for them (`reduce_range` halves the range to [0, 127], as the nnqd modules ask), and
/// every element quantized into `out` (same length). Returns the qparams.
///
/// Errors: `out` of another length, NaN or infinite input, an unsupported tier.
pub fn quantize_activations(
    x: &[f32],
    reduce_range: bool,
    out: &mut [u8],
    isa: Isa,
) -> KernelResult<PerTensor> {
    check_len("quantize_activations", "output length", out.len(), x.len())?;
    let (lo, hi) = min_max(x, isa)?;
    let q = choose_dynamic_qparams(lo, hi, reduce_range)?;
    quantize_run(&DynamicQuantizer::new(q)?, x, out, isa);
    Ok(q)
}

/// Buffers [`linear_dynamic`] reuses from call to call: the quantized activations and the output
/// stage. Keep one per layer (or per thread); after the first call with a given shape no call
/// allocates.
#[derive(Debug, Default, Clone)]
pub struct DynamicScratch {
    a: Vec<u8>,
    pipeline: Option<OutputPipeline>,
}

/// PyTorch's `quantized::linear_dynamic` (`linear_relu_dynamic` with `relu`) on FBGEMM: `x` is
/// `m x k` row-major f32, `out` `m x n`; the activations are quantized per call
/// ([`quantize_activations`] over all of `x`), multiplied with the int8 weights and dequantized
/// with the bias. Returns the activation qparams. `m = 0` is an empty output.
///
/// Errors: lengths that do not match `m`, `w.k()` and `w.n()`, NaN or infinite input.
pub fn linear_dynamic(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    reduce_range: bool,
    relu: bool,
    out: &mut [f32],
    scratch: &mut DynamicScratch,
) -> KernelResult<PerTensor> {
    const OP: &str = "linear_dynamic";
    check_len(OP, "input length (m x k)", x.len(), mul(OP, "input length", m, w.k())?)?;
    check_len(OP, "output length (m x n)", out.len(), mul(OP, "output length", m, w.n())?)?;
    scratch.a.resize(x.len(), 0);
    let q = quantize_activations(x, reduce_range, &mut scratch.a, w.isa())?;
    if m == 0 {
        return Ok(q);
    }
    let zp = q.zero_point as u8;
    w.output_f32_into(&mut scratch.pipeline, q.scale, zp, relu)?;
    let pipeline = scratch.pipeline.as_ref().expect("output_f32_into fills the slot");
    gemm(&scratch.a, m, w, pipeline, Output::F32(out))?;
    Ok(q)
}

/// fp16 weights of PyTorch's `quantized::linear_dynamic_fp16`, packed once: each weight saturated
/// to ±65504 and rounded to fp16 ([`qcore::dynamic::f16_weight`]), stored K-major in panels of 16
/// output columns (zero padded), plus the f32 bias.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedF16Weights {
    isa: Isa,
    n: usize,
    k: usize,
    /// `[panel][k][16]` fp16 bits.
    data: Vec<u16>,
    bias: Option<Vec<f32>>,
    saturated: bool,
}

impl PackedF16Weights {
    /// Packs `weights`, `n x k` row-major f32 (PyTorch's `[out_features, in_features]`), for
    /// [`Isa::active`].
    ///
    /// Errors: zero sizes, a weight or bias of the wrong length.
    pub fn new(weights: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> KernelResult<Self> {
        Self::with_isa(weights, n, k, bias, Isa::active())
    }

    /// As [`PackedF16Weights::new`], for an explicit tier (an error if this CPU lacks it).
    pub fn with_isa(
        weights: &[f32],
        n: usize,
        k: usize,
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> KernelResult<Self> {
        const OP: &str = "PackedF16Weights";
        isa.ensure_supported()?;
        nonzero(OP, "output features", n)?;
        nonzero(OP, "input features (K)", k)?;
        check_len(OP, "weight length", weights.len(), mul(OP, "weight length", n, k)?)?;
        if let Some(b) = bias {
            check_len(OP, "bias length", b.len(), n)?;
        }
        let panels = n.div_ceil(F16_NR);
        let mut data = vec![0u16; panels * k * F16_NR];
        let mut saturated = false;
        for (j, row) in weights.chunks_exact(k).enumerate() {
            for (kk, &v) in row.iter().enumerate() {
                let (h, sat) = qcore::dynamic::f16_weight(v);
                saturated |= sat;
                data[((j / F16_NR) * k + kk) * F16_NR + j % F16_NR] = h.to_bits();
            }
        }
        Ok(Self { isa, n, k, data, bias: bias.map(<[f32]>::to_vec), saturated })
    }

    /// Output features N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The tier every call with these weights runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// True if some weight lay beyond ±65504 and was saturated (PyTorch warns "FOUND weight out of
    /// range").
    pub fn saturated(&self) -> bool {
        self.saturated
    }

    /// Weight `(j, kk)` as f32.
    pub fn weight(&self, j: usize, kk: usize) -> f32 {
        f16::from_bits(self.data[((j / F16_NR) * self.k + kk) * F16_NR + j % F16_NR]).to_f32()
    }
}

/// PyTorch's `quantized::linear_dynamic_fp16` (`linear_relu_dynamic_fp16` with `relu`): `x` is
/// `m x k` row-major f32, `out` `m x n`. Each output is FBGEMM's `cblas_gemm_compute` order: for
/// each block of [`F16_K_BLOCK`] K values a fused multiply-add chain from 0, the block sums added
/// in order; then `+ bias[n]` and ReLU. `m = 0` is an empty output.
///
/// Errors: lengths that do not match `m`, `w.k()` and `w.n()`.
pub fn linear_fp16(
    x: &[f32],
    m: usize,
    w: &PackedF16Weights,
    relu: bool,
    out: &mut [f32],
) -> KernelResult<()> {
    const OP: &str = "linear_fp16";
    check_len(OP, "input length (m x k)", x.len(), mul(OP, "input length", m, w.k)?)?;
    check_len(OP, "output length (m x n)", out.len(), mul(OP, "output length", m, w.n)?)?;
    let isa = w.isa;
    // The vector tiers need F16C, which every AVX-512 CPU has.
    #[cfg(target_arch = "x86_64")]
    let vector = match isa {
        Isa::Scalar => false,
        Isa::Avx2 => crate::x86::has_f16c(),
        Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => true,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    if vector {
        // Threads take disjoint ranges of 16-column panels; each output's order is unchanged.
        let dst = SendPtr(out.as_mut_ptr());
        par_rows(w.n.div_ceil(F16_NR), m * w.k * F16_NR, |p0, p1| {
            on_tier!(
                isa,
                scalar: unreachable!("the scalar tier takes gemm_f16_scalar"),
                // SAFETY: `out` holds m x n floats; the panel ranges of the tasks are disjoint.
                avx2: crate::x86::dynamic::avx2::gemm_f16(x, m, w.k, F16_K_BLOCK, w.n, &w.data, dst.get(), p0..p1),
                avx512: crate::x86::dynamic::avx512::gemm_f16(x, m, w.k, F16_K_BLOCK, w.n, &w.data, dst.get(), p0..p1),
            )
        });
    } else {
        gemm_f16_scalar(x, m, w, out);
    }
    for row in out.chunks_exact_mut(w.n) {
        for (j, o) in row.iter_mut().enumerate() {
            if let Some(b) = &w.bias {
                *o += b[j];
            }
            // `relu_()` keeps NaN (and -0.0); only negatives become 0.
            if relu && *o < 0.0 {
                *o = 0.0;
            }
        }
    }
    Ok(())
}

/// The scalar fp16 GEMM without bias: the order every tier reproduces.
fn gemm_f16_scalar(x: &[f32], m: usize, w: &PackedF16Weights, out: &mut [f32]) {
    let k = w.k;
    for i in 0..m {
        let a = &x[i * k..][..k];
        for j in 0..w.n {
            let mut c = 0.0f32;
            for (b, block) in a.chunks(F16_K_BLOCK).enumerate() {
                let k0 = b * F16_K_BLOCK;
                let mut acc = 0.0f32;
                for (t, &av) in block.iter().enumerate() {
                    acc = av.mul_add(w.weight(j, k0 + t), acc);
                }
                c = if b == 0 { acc } else { c + acc };
            }
            out[i * w.n + j] = c;
        }
    }
}
