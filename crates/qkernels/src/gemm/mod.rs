//! Int8 GEMM: u8 activations x pre-packed i8 weights, i32 accumulation, fused output pipeline.
//!
//! ```text
//! out[m, n] = pipeline( Σ_k (a[m, k] - a_zp) * (w[n, k] - w_zp[n]) )
//! ```
//!
//! * [`PackedWeights`] packs an `N x K` weight matrix (PyTorch's `[out_features, in_features]`)
//!   once, for one [`Isa`] tier: panels of `NR` columns with 4 consecutive K values per 32-bit lane
//!   (the `vpdpbusd` / `vpmaddubsw` operand layout), K zero-padded to a multiple of 4, plus the
//!   column sums, weight zero points, scales and bias.
//! * An [`OutputPipeline`], built once per layer from the packed weights and the activation (and
//!   output) quantization parameters, folds the activation zero point into a per-column term and
//!   holds the per-column requantization constants: to u8 with qcore's
//!   [`ConvRequant`] arithmetic (optionally ReLU, or clamped to any u8 range with
//!   [`OutputPipeline::with_range`], e.g. ReLU6), to f32
//!   (`fma(f32(acc), a_scale * w_scale[n], bias[n])`, optionally ReLU), or the raw i32 `acc`.
//! * [`gemm()`] multiplies; the zero-point corrections cost nothing in the inner loop: the
//!   activation zero point enters through the column term and, only when some weight zero point
//!   is not 0, the row sums of A are computed per block and multiplied by `w_zp[n]` in the
//!   epilogue.
//!
//! Every tier gives the same bits: the accumulation is exact (wrapping i32, as in PyTorch's
//! FBGEMM with i32 accumulation), and the pipeline is qcore's scalar arithmetic lane by lane.
//! The AVX2 tier uses `vpmaddubsw` only when its i16 pair sums cannot saturate (every weight in
//! [-64, 63], or every activation of the call <= 127), and an exact i16 `vpmaddwd` path otherwise.
//!
//! Work is split over the current rayon pool in coarse chunks (rows for large M, weight panels
//! for small M); each output element is computed by one thread in the same order, so the result
//! does not depend on the number of threads.

pub(crate) mod kernel;
pub(crate) mod tier;

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use qcore::requant::{BiasTerm, ConvRequant};
use rayon::prelude::*;

use crate::util::{check_len, invalid};
use crate::{Isa, KernelError, KernelResult};
use kernel::Block;
pub(crate) use kernel::{DwJob, Epi, Kernel, OutPtr, tap_coord};

/// Quantization parameters of qint8 weights.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightQParams {
    /// One scale and zero point for the whole tensor.
    PerTensor {
        /// Scale.
        scale: f64,
        /// Zero point, in -128..=127.
        zero_point: i32,
    },
    /// One scale and zero point per output channel (row of the weight matrix).
    PerChannel {
        /// Scales, one per output channel.
        scales: Vec<f64>,
        /// Zero points, one per output channel, each in -128..=127.
        zero_points: Vec<i32>,
    },
}

impl WeightQParams {
    /// Per-tensor symmetric weights: `scale`, zero point 0.
    pub fn per_tensor(scale: f64) -> Self {
        WeightQParams::PerTensor { scale, zero_point: 0 }
    }

    /// Per-channel symmetric weights (PyTorch's default for fbgemm/x86): zero points 0.
    pub fn per_channel(scales: Vec<f64>) -> Self {
        let zero_points = vec![0; scales.len()];
        WeightQParams::PerChannel { scales, zero_points }
    }
}

/// Which output an [`OutputPipeline`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// quint8, requantized as PyTorch's FBGEMM conv/linear do.
    U8,
    /// f32, dequantized with bias (dynamic quantization).
    F32,
    /// The zero-point-corrected i32 accumulator.
    I32,
}

/// The destination of a GEMM or convolution, row-major `M x N` (or NHWC for a convolution).
#[derive(Debug)]
pub enum Output<'a> {
    /// For an [`OutputKind::U8`] pipeline.
    U8(&'a mut [u8]),
    /// For an [`OutputKind::F32`] pipeline.
    F32(&'a mut [f32]),
    /// For an [`OutputKind::I32`] pipeline.
    I32(&'a mut [i32]),
    /// For an [`OutputKind::U8`] pipeline: the output is appended to the vector, computed
    /// straight into its spare capacity (reserved if short). Nothing is zero-filled first, and
    /// the threads that compute the output are the first to touch its memory.
    ///
    /// ```
    /// use qkernels::gemm::{Output, PackedWeights, WeightQParams, gemm};
    /// let w = PackedWeights::new(&[1, 2, 3, 4, 5, 6], 2, 3, &WeightQParams::per_tensor(1.0), None)?;
    /// let mut out = Vec::new();
    /// gemm(&[1, 1, 1], 1, &w, &w.output_u8(1.0, 0, 1.0, 0, false)?, Output::AppendU8(&mut out))?;
    /// assert_eq!(out, [6, 15]);
    /// # Ok::<(), qkernels::KernelError>(())
    /// ```
    AppendU8(&'a mut Vec<u8>),
}

impl Output<'_> {
    fn kind(&self) -> OutputKind {
        match self {
            Output::U8(_) | Output::AppendU8(_) => OutputKind::U8,
            Output::F32(_) => OutputKind::F32,
            Output::I32(_) => OutputKind::I32,
        }
    }

    /// Checks that the output holds `len` elements, or reserves them past an appended vector's
    /// end.
    fn fit(&mut self, op: &'static str, len: usize) -> KernelResult<()> {
        let got = match self {
            Output::U8(s) => s.len(),
            Output::F32(s) => s.len(),
            Output::I32(s) => s.len(),
            Output::AppendU8(v) => {
                return v.try_reserve(len).map_err(|_| KernelError::InvalidArgument {
                    op,
                    what: "output length",
                    value: len.to_string(),
                    reason: "the appended output vector cannot grow by that many bytes",
                });
            }
        };
        check_len(op, "output buffer length", got, len)
    }

    /// Where the output's first element goes.
    pub(crate) fn ptr(&mut self) -> OutPtr {
        match self {
            Output::U8(s) => OutPtr::U8(s.as_mut_ptr()),
            Output::F32(s) => OutPtr::F32(s.as_mut_ptr()),
            Output::I32(s) => OutPtr::I32(s.as_mut_ptr()),
            Output::AppendU8(v) => OutPtr::U8(v.spare_capacity_mut().as_mut_ptr().cast()),
        }
    }

    /// Marks the `len` elements a kernel wrote from [`Output::ptr`] as initialized.
    ///
    /// # Safety
    ///
    /// The output was checked by [`OutputPipeline::check`] with `len`, and every one of the `len`
    /// elements from [`Output::ptr`] has been written.
    pub(crate) unsafe fn written(self, len: usize) {
        if let Output::AppendU8(v) = self {
            // SAFETY: `check` reserved `len` bytes past the end, and the caller wrote all of them.
            unsafe { v.set_len(v.len() + len) }
        }
    }
}

/// Per-output-channel data shared by GEMM and depthwise weights.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Channels {
    /// Output channels (all groups).
    pub n: usize,
    /// Reduction length of one output channel.
    pub k: usize,
    pub w_scale: Vec<f64>,
    pub w_zp: Vec<i32>,
    /// `Σ_k w[n, k]`.
    pub colsum: Vec<i32>,
    pub bias: Option<Vec<f32>>,
    pub per_channel: bool,
    /// Identifies the packed weights an [`OutputPipeline`] was built for.
    pub id: u64,
}

/// Padding of the per-column pipeline arrays past the last column (a whole panel and more).
const PAD: usize = 64;

impl Channels {
    /// Validates the quantization parameters and bias of `n` output channels whose weights
    /// (`n` rows of `k`) are `weights`.
    pub(crate) fn new(
        op: &'static str,
        weights: &[i8],
        n: usize,
        k: usize,
        qparams: &WeightQParams,
        bias: Option<&[f32]>,
    ) -> KernelResult<Self> {
        let check_zp = |zp: i32| {
            if (-128..=127).contains(&zp) {
                Ok(())
            } else {
                Err(KernelError::InvalidArgument {
                    op,
                    what: "weight zero point",
                    value: zp.to_string(),
                    reason: "qint8 zero points lie in -128..=127",
                })
            }
        };
        let (w_scale, w_zp, per_channel) = match qparams {
            WeightQParams::PerTensor { scale, zero_point } => {
                qcore::inverse_scale(op, *scale)?;
                check_zp(*zero_point)?;
                (vec![*scale; n], vec![*zero_point; n], false)
            }
            WeightQParams::PerChannel { scales, zero_points } => {
                check_len(op, "per-channel weight scales", scales.len(), n)?;
                check_len(op, "per-channel weight zero points", zero_points.len(), n)?;
                for (&s, &z) in scales.iter().zip(zero_points) {
                    qcore::inverse_scale(op, s)?;
                    check_zp(z)?;
                }
                (scales.clone(), zero_points.clone(), true)
            }
        };
        if let Some(b) = bias {
            check_len(op, "bias length", b.len(), n)?;
        }
        let colsum = weights
            .chunks_exact(k)
            .map(|row| row.iter().fold(0i32, |s, &w| s.wrapping_add(i32::from(w))))
            .collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Self {
            n,
            k,
            w_scale,
            w_zp,
            colsum,
            bias: bias.map(<[f32]>::to_vec),
            per_channel,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn has_w_zp(&self) -> bool {
        self.w_zp.iter().any(|&z| z != 0)
    }

    /// `-a_zp * colsum[n] + K * a_zp * w_zp[n]`, wrapping.
    fn col_term(&self, n: usize, za: i32) -> i32 {
        let k = self.k as i32;
        (-za).wrapping_mul(self.colsum[n]).wrapping_add(k.wrapping_mul(za).wrapping_mul(self.w_zp[n]))
    }

    fn pipeline(&self, kind: OutputKind, a_zp: u8, out_zp: u8, relu: bool) -> OutputPipeline {
        let za = i32::from(a_zp);
        let mut col_term: Vec<i32> = (0..self.n).map(|n| self.col_term(n, za)).collect();
        col_term.resize(self.n + PAD, 0);
        let mut w_zp = self.w_zp.clone();
        w_zp.resize(self.n + PAD, 0);
        OutputPipeline {
            id: self.id,
            kind,
            a_zp: za,
            col_term,
            w_zp,
            bias: vec![0.0; self.n + PAD],
            scale: vec![0.0; self.n + PAD],
            zp: i32::from(out_zp),
            lo: if relu { i32::from(out_zp) } else { 0 },
            hi: 255,
            relu,
        }
    }

    pub(crate) fn output_u8(
        &self,
        a_scale: f64,
        a_zp: u8,
        out_scale: f64,
        out_zp: u8,
        relu: bool,
    ) -> KernelResult<OutputPipeline> {
        let mut p = self.pipeline(OutputKind::U8, a_zp, out_zp, relu);
        let mode = if self.per_channel { BiasTerm::Division } else { BiasTerm::Reciprocal };
        for n in 0..self.n {
            let r = ConvRequant::new(a_scale, self.w_scale[n], out_scale)?;
            p.scale[n] = r.multiplier();
            p.bias[n] = self.bias.as_ref().map_or(0.0, |b| r.bias_term(b[n], mode));
        }
        Ok(p)
    }

    pub(crate) fn output_f32(&self, a_scale: f64, a_zp: u8, relu: bool) -> KernelResult<OutputPipeline> {
        qcore::inverse_scale("output_f32", a_scale)?;
        let mut p = self.pipeline(OutputKind::F32, a_zp, 0, relu);
        for n in 0..self.n {
            p.scale[n] = a_scale as f32 * self.w_scale[n] as f32;
            p.bias[n] = self.bias.as_ref().map_or(0.0, |b| b[n]);
        }
        Ok(p)
    }

    /// [`Channels::output_f32`] written into `slot`, reusing its buffers when it already holds an
    /// f32 pipeline of these weights (no allocation then).
    pub(crate) fn output_f32_into(
        &self,
        slot: &mut Option<OutputPipeline>,
        a_scale: f64,
        a_zp: u8,
        relu: bool,
    ) -> KernelResult<()> {
        match slot {
            Some(p) if p.id == self.id && p.kind == OutputKind::F32 => {
                qcore::inverse_scale("output_f32", a_scale)?;
                let za = i32::from(a_zp);
                for n in 0..self.n {
                    p.col_term[n] = self.col_term(n, za);
                    p.scale[n] = a_scale as f32 * self.w_scale[n] as f32;
                }
                p.a_zp = za;
                p.relu = relu;
            }
            _ => *slot = Some(self.output_f32(a_scale, a_zp, relu)?),
        }
        Ok(())
    }

    pub(crate) fn output_i32(&self, a_zp: u8) -> OutputPipeline {
        self.pipeline(OutputKind::I32, a_zp, 0, false)
    }
}

/// The output stage of a GEMM or convolution for one layer: the activation zero point folded into
/// a per-column term, and the per-column requantization (or dequantization) constants. Built by
/// [`PackedWeights::output_u8`] and friends; valid only with the weights it was built from.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPipeline {
    id: u64,
    kind: OutputKind,
    a_zp: i32,
    col_term: Vec<i32>,
    w_zp: Vec<i32>,
    bias: Vec<f32>,
    scale: Vec<f32>,
    zp: i32,
    lo: i32,
    hi: i32,
    relu: bool,
}

impl OutputPipeline {
    /// The output this pipeline produces.
    pub fn kind(&self) -> OutputKind {
        self.kind
    }

    /// The activation zero point it was built with.
    pub fn activation_zero_point(&self) -> u8 {
        self.a_zp as u8
    }

    /// The u8 output clamped to `lo..=hi` instead of `[0, 255]` (or `[zero point, 255]` with
    /// ReLU): a bounded activation fused into the output stage, e.g. ReLU6 as
    /// `with_range(out_zero_point, quantized 6.0)`. The clamp follows the requantization, so each
    /// value is `min(max(requantized, lo), hi)`, on every tier.
    ///
    /// Errors: a pipeline that is not [`OutputKind::U8`], or `lo > hi`.
    ///
    /// ```
    /// use qkernels::gemm::{Output, PackedWeights, WeightQParams, gemm};
    /// let w = PackedWeights::new(&[1, -1], 2, 1, &WeightQParams::per_tensor(1.0), None)?;
    /// // Output scale 1, zero point 10: acc 100 -> 110 and -100 -> 0, clamped to [10, 16].
    /// let p = w.output_u8(1.0, 0, 1.0, 10, false)?.with_range(10, 16)?;
    /// let mut out = [0u8; 2];
    /// gemm(&[100], 1, &w, &p, Output::U8(&mut out))?;
    /// assert_eq!(out, [16, 10]);
    /// # Ok::<(), qkernels::KernelError>(())
    /// ```
    pub fn with_range(mut self, lo: u8, hi: u8) -> KernelResult<Self> {
        const OP: &str = "OutputPipeline::with_range";
        if self.kind != OutputKind::U8 {
            return Err(invalid(
                OP,
                "output kind",
                self.kind,
                "only u8 output pipelines clamp to a u8 range",
            ));
        }
        if lo > hi {
            return Err(invalid(OP, "range", (lo, hi), "the lower bound must not exceed the upper bound"));
        }
        (self.lo, self.hi) = (i32::from(lo), i32::from(hi));
        Ok(self)
    }

    /// The u8 output range: `(lo, hi)`.
    pub fn range(&self) -> (u8, u8) {
        (self.lo as u8, self.hi as u8)
    }

    pub(crate) fn epi(&self) -> Epi {
        Epi {
            col_term: self.col_term.as_ptr(),
            w_zp: self.w_zp.as_ptr(),
            bias: self.bias.as_ptr(),
            scale: self.scale.as_ptr(),
            zp: self.zp,
            lo: self.lo,
            hi: self.hi,
            relu: self.relu,
        }
    }

    /// Checks that the pipeline belongs to `channels` and that `out` (of `len` elements needed)
    /// matches its kind; reserves an appended output.
    pub(crate) fn check(
        &self,
        op: &'static str,
        channels: &Channels,
        out: &mut Output<'_>,
        len: usize,
    ) -> KernelResult<()> {
        if self.id != channels.id {
            return Err(KernelError::InvalidArgument {
                op,
                what: "output pipeline",
                value: format!("{:?}", self.kind),
                reason: "it was built for other packed weights; build it from these weights",
            });
        }
        if out.kind() != self.kind {
            return Err(KernelError::InvalidArgument {
                op,
                what: "output buffer",
                value: format!("{:?}", out.kind()),
                reason: "its element type must match the pipeline's OutputKind",
            });
        }
        out.fit(op, len)
    }
}

/// `InvalidArgument` for a zero size.
pub(crate) fn nonzero(op: &'static str, what: &'static str, v: usize) -> KernelResult<usize> {
    if v == 0 {
        Err(KernelError::InvalidArgument { op, what, value: "0".into(), reason: "it must be at least 1" })
    } else {
        Ok(v)
    }
}

/// `a * b`, or a `InvalidArgument` if it overflows.
pub(crate) fn mul(op: &'static str, what: &'static str, a: usize, b: usize) -> KernelResult<usize> {
    a.checked_mul(b).ok_or_else(|| KernelError::InvalidArgument {
        op,
        what,
        value: format!("{a} x {b}"),
        reason: "the size overflows usize",
    })
}

/// `u8 x i8` weights packed for one tier: see the [module documentation](self).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeights {
    isa: Isa,
    /// The tier whose micro-kernels run: `isa`, or VNNI for AMX weights too small for tiles
    /// ([`amx_pays`]).
    kernel_isa: Isa,
    groups: usize,
    n_per_group: usize,
    /// K groups of 4 per panel (`ceil(k / 4)`, or more when the kernel pads K: `Kernel::k_block`).
    kq: usize,
    nr: usize,
    panels_per_group: usize,
    /// `[group][panel][kq][nr][4]`.
    data: Vec<i8>,
    weights_7bit: bool,
    pub(crate) channels: Channels,
}

/// The micro-kernels of `isa` for one call: on AVX2, the `vpmaddubsw` kernel when `fast()` says
/// its i16 pair sums cannot saturate (asked only there), else the exact one.
pub(crate) fn kernel_for(isa: Isa, fast: impl FnOnce() -> bool) -> Kernel {
    on_tier!(
        isa,
        scalar: kernel::SCALAR,
        avx2: if fast() { crate::x86::gemm::AVX2_FAST } else { crate::x86::gemm::AVX2_EXACT },
        avx512: crate::x86::gemm::AVX512,
        avx512vnni: crate::x86::gemm::VNNI,
        amx: crate::x86::amx::AMX,
    )
}

/// True if AMX tiles beat VNNI for `n` output columns (per group) over reduction `k`: below 128
/// K bytes or 32 columns, padding K to a multiple of 64 and N to a panel of 32 wastes most of
/// each tile, and the tile setup and output stage outweigh the faster dot products (measured
/// on MobileNetV2's small pointwise layers, 2026-12-06).
fn amx_pays(n: usize, k: usize) -> bool {
    k >= 128 && n >= 32
}

impl PackedWeights {
    /// Packs `weights`, an `n x k` row-major qint8 matrix (PyTorch's linear weight
    /// `[out_features, in_features]`), for [`Isa::active`].
    pub fn new(
        weights: &[i8],
        n: usize,
        k: usize,
        qparams: &WeightQParams,
        bias: Option<&[f32]>,
    ) -> KernelResult<Self> {
        Self::with_isa(weights, n, k, qparams, bias, Isa::active())
    }

    /// As [`PackedWeights::new`], for an explicit tier (an error if this CPU lacks it).
    pub fn with_isa(
        weights: &[i8],
        n: usize,
        k: usize,
        qparams: &WeightQParams,
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> KernelResult<Self> {
        Self::grouped("PackedWeights", weights, 1, n, k, qparams, bias, isa)
    }

    /// `groups` independent `n_per_group x k` matrices, stored one after the other.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grouped(
        op: &'static str,
        weights: &[i8],
        groups: usize,
        n_per_group: usize,
        k: usize,
        qparams: &WeightQParams,
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> KernelResult<Self> {
        isa.ensure_supported()?;
        nonzero(op, "output channels", n_per_group)?;
        nonzero(op, "K (reduction length)", k)?;
        nonzero(op, "groups", groups)?;
        let n = mul(op, "output channels", groups, n_per_group)?;
        check_len(op, "weight length", weights.len(), mul(op, "weight length", n, k)?)?;
        let channels = Channels::new(op, weights, n, k, qparams, bias)?;
        let kernel_isa = if isa == Isa::Amx && !amx_pays(n_per_group, k) { Isa::Avx512Vnni } else { isa };
        let kernel = kernel_for(kernel_isa, || false);
        let nr = kernel.nr;
        let kq = k.next_multiple_of(kernel.k_block) / 4;
        let panels_per_group = n_per_group.div_ceil(nr);
        let panel = kq * nr * 4;
        let mut data = vec![0i8; groups * panels_per_group * panel];
        for g in 0..groups {
            for j in 0..n_per_group {
                let row = &weights[(g * n_per_group + j) * k..][..k];
                let base = (g * panels_per_group + j / nr) * panel + (j % nr) * 4;
                for (kk, &w) in row.iter().enumerate() {
                    data[base + (kk / 4) * nr * 4 + kk % 4] = w;
                }
            }
        }
        let weights_7bit = weights.iter().all(|&w| (-64..=63).contains(&w));
        Ok(Self {
            isa,
            kernel_isa,
            groups,
            n_per_group,
            kq,
            nr,
            panels_per_group,
            data,
            weights_7bit,
            channels,
        })
    }

    /// The tier the weights were packed for, which every call with them runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Output columns N.
    pub fn n(&self) -> usize {
        self.channels.n
    }

    /// Reduction length K.
    pub fn k(&self) -> usize {
        self.channels.k
    }

    /// True if every weight lies in [-64, 63], so the AVX2 `vpmaddubsw` path is exact.
    pub fn weights_7bit(&self) -> bool {
        self.weights_7bit
    }

    /// A u8 output stage: PyTorch's conv/linear requantization for activations of `a_scale`,
    /// `a_zero_point` and output `out_scale`, `out_zero_point`, with optional ReLU.
    pub fn output_u8(
        &self,
        a_scale: f64,
        a_zero_point: u8,
        out_scale: f64,
        out_zero_point: u8,
        relu: bool,
    ) -> KernelResult<OutputPipeline> {
        self.channels.output_u8(a_scale, a_zero_point, out_scale, out_zero_point, relu)
    }

    /// An f32 output stage: `fma(f32(acc), f32(a_scale) * f32(w_scale[n]), bias[n])` (FBGEMM's
    /// AVX2 `requantizeForFloatAvx2`, which AVX-512 CPUs run too, its multiply and add contracted
    /// into one rounding in PyTorch's build; without a bias 0.0 is added), floored at 0 with
    /// `relu`.
    pub fn output_f32(&self, a_scale: f64, a_zero_point: u8, relu: bool) -> KernelResult<OutputPipeline> {
        self.channels.output_f32(a_scale, a_zero_point, relu)
    }

    /// As [`PackedWeights::output_f32`], written into `slot`; when `slot` already holds an f32
    /// pipeline of these weights its buffers are reused, so a warm slot allocates nothing (the
    /// per-call path of dynamic quantization).
    pub fn output_f32_into(
        &self,
        slot: &mut Option<OutputPipeline>,
        a_scale: f64,
        a_zero_point: u8,
        relu: bool,
    ) -> KernelResult<()> {
        self.channels.output_f32_into(slot, a_scale, a_zero_point, relu)
    }

    /// An i32 output stage: `Σ_k (a - a_zero_point)(w - w_zp)`, wrapping.
    pub fn output_i32(&self, a_zero_point: u8) -> OutputPipeline {
        self.channels.output_i32(a_zero_point)
    }

    /// The block of `rows` against panels `panels` of group `g`, writing `out` (at the block's
    /// row 0, global column 0; rows `ldc` apart).
    pub(crate) fn block(
        &self,
        g: usize,
        panels: Range<usize>,
        rows: RowsAt,
        out: OutPtr,
        ldc: usize,
    ) -> Block {
        let panel = self.kq * self.nr * 4;
        let group_n0 = g * self.n_per_group;
        Block {
            a: rows.a,
            lda: rows.lda,
            rows: rows.rows,
            k: self.k(),
            row_bytes: rows.row_bytes,
            // Pointer arithmetic only: the panel index is inside the packed data when
            // `panels.start < panels_per_group`, which every caller's range satisfies.
            panels: self.data.as_ptr().wrapping_add((g * self.panels_per_group + panels.start) * panel),
            panel_stride: panel,
            npanels: panels.len(),
            n0: group_n0 + panels.start * self.nr,
            n_end: group_n0 + self.n_per_group,
            rowsums: rows.rowsums,
            out,
            ldc,
        }
    }

    /// Weight panels per group.
    pub(crate) fn panels_per_group(&self) -> usize {
        self.panels_per_group
    }

    /// True if some weight zero point is not 0 (the GEMM then needs the row sums of A).
    pub(crate) fn has_w_zp(&self) -> bool {
        self.channels.has_w_zp()
    }

    /// The micro-kernels a call runs; `acts_7bit` (asked only on AVX2) says whether every
    /// activation of the call is below 128.
    pub(crate) fn kernel(&self, acts_7bit: impl FnOnce() -> bool) -> Kernel {
        kernel_for(self.kernel_isa, || self.weights_7bit || acts_7bit())
    }
}

/// `C = pipeline(A x W^T)`: `a` is `m x k` row-major u8 (activations with the zero point the
/// pipeline was built with), `out` is `m x n` row-major of the pipeline's kind. Runs on the
/// weights' tier, split over the current rayon pool.
///
/// ```
/// use qkernels::gemm::{Output, PackedWeights, WeightQParams, gemm};
/// // Two output channels over K = 3, per-channel scales, a bias.
/// let w = PackedWeights::new(&[1, 2, 3, -1, -2, -3], 2, 3, &WeightQParams::per_channel(vec![0.01, 0.02]), Some(&[0.5, -0.5]))?;
/// let a = [130u8, 128, 126]; // one row, activation zero point 128: (2, 0, -2)
/// let mut raw = [0i32; 2];
/// gemm(&a, 1, &w, &w.output_i32(128), Output::I32(&mut raw))?;
/// assert_eq!(raw, [2 - 6, -2 + 6]);
/// // u8: round((acc + bias / (0.1 * w_scale)) * (0.1 * w_scale / 0.05)) + 64:
/// // (-4 + 500) * 0.02 = 9.92 -> 74 and (4 - 250) * 0.04 = -9.84 -> 54.
/// let mut out = [0u8; 2];
/// gemm(&a, 1, &w, &w.output_u8(0.1, 128, 0.05, 64, false)?, Output::U8(&mut out))?;
/// assert_eq!(out, [74, 54]);
/// # Ok::<(), qkernels::KernelError>(())
/// ```
pub fn gemm(
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    pipeline: &OutputPipeline,
    mut out: Output<'_>,
) -> KernelResult<()> {
    const OP: &str = "gemm";
    nonzero(OP, "M (rows of A)", m)?;
    if w.groups != 1 {
        return Err(KernelError::InvalidArgument {
            op: OP,
            what: "groups",
            value: w.groups.to_string(),
            reason: "grouped weights are packed by the convolution and run only there",
        });
    }
    let k = w.k();
    check_len(OP, "A length (m x k)", a.len(), mul(OP, "A length", m, k)?)?;
    let len = mul(OP, "output length", m, w.n())?;
    pipeline.check(OP, &w.channels, &mut out, len)?;
    let kernel = w.kernel(|| all_7bit(a));
    let src = DirectA { a: a.as_ptr(), lda: k, group_stride: 0 };
    let ldc = w.n();
    // SAFETY: `a` holds m x k bytes and `out` m x n elements (checked above); the pipeline was
    // built from these weights (checked), the kernel is supported (packing checked the tier).
    // `run_gemm` writes every one of the m x n outputs.
    unsafe {
        run_gemm(w, kernel, m, &src, pipeline, out.ptr(), ldc);
        out.written(len);
    }
    Ok(())
}

/// True if every byte is below 128: an OR over 4 KiB chunks (vectorised), stopping at the first
/// chunk with a high bit.
pub(crate) fn all_7bit(a: &[u8]) -> bool {
    a.chunks(4096).all(|chunk| chunk.iter().fold(0u8, |acc, &x| acc | x) < 128)
}

/// Rows of A for one block.
pub(crate) trait ASource: Sync {
    /// Rows `r0..r0 + rows` of group `g`: a pointer to row `r0` and the row stride. May fill
    /// `buf` and point into it.
    fn rows(&self, g: usize, r0: usize, rows: usize, kq: usize, buf: &mut Vec<u8>) -> (*const u8, usize);

    /// Readable bytes of each row that [`ASource::rows`] returned with stride `lda`: `k` for a
    /// matrix in memory (its rows may end at the end of the data), more for a scratch buffer.
    fn row_bytes(&self, k: usize, _lda: usize) -> usize {
        k
    }
}

/// A matrix in memory: row `r` of group `g` at `a + r * lda + g * group_stride`.
pub(crate) struct DirectA {
    pub a: *const u8,
    pub lda: usize,
    pub group_stride: usize,
}

// SAFETY: `DirectA` only reads through its pointer, and the slice it points into outlives every
// use (it is borrowed by the calling function for the whole parallel section).
unsafe impl Sync for DirectA {}

impl ASource for DirectA {
    fn rows(&self, g: usize, r0: usize, _rows: usize, _kq: usize, _buf: &mut Vec<u8>) -> (*const u8, usize) {
        (self.a.wrapping_add(r0 * self.lda + g * self.group_stride), self.lda)
    }
}

/// The rows of A a block reads: row `i` at `a + i * lda`, `row_bytes` readable bytes each; their
/// sums when the weights have zero points (`rows` of them), else null.
pub(crate) struct RowsAt {
    pub a: *const u8,
    pub lda: usize,
    pub rows: usize,
    pub row_bytes: usize,
    pub rowsums: *const i32,
}

/// Per-thread scratch, reused across calls: im2col rows, row sums, depthwise taps.
#[derive(Default)]
pub(crate) struct Scratch {
    pub a: Vec<u8>,
    pub rowsums: Vec<i32>,
    pub taps: Vec<(usize, usize)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (a fresh one if it is already in use).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    crate::util::with_thread_local(&SCRATCH, f)
}

/// An output pointer shared by the threads of one call, which write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub OutPtr);

impl SharedOut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn get(&self) -> OutPtr {
        self.0
    }
}
// SAFETY: every thread writes a disjoint set of output elements (distinct rows or columns), and
// the buffer outlives the parallel section.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// The dimension a GEMM call is split along.
#[derive(Debug, Clone, Copy)]
enum Dim {
    Rows,
    Panels,
    Groups,
}

/// One thread's share: groups, rows and panels (per group).
#[derive(Debug, Clone)]
struct Task {
    groups: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
}

/// Part `i` of `0..len` split into `parts(len, parts, unit)` contiguous ranges whose starts are
/// multiples of `unit`; together the parts cover `0..len` without overlap.
pub(crate) fn split_part(len: usize, parts: usize, unit: usize, i: usize) -> std::ops::Range<usize> {
    let units = len.div_ceil(unit);
    ((units * i / parts) * unit).min(len)..((units * (i + 1) / parts) * unit).min(len)
}

/// The number of parts [`split_part`] uses: at most `parts`, at least 1, at most one per unit.
pub(crate) fn split_count(len: usize, parts: usize, unit: usize) -> usize {
    parts.clamp(1, len.div_ceil(unit).max(1))
}

/// Rows of A per cache block: about 32 KiB of A, so that an im2col block stays in L1 while the
/// kernel reads it (at least one tile, at most 512 rows; on AMX 12% faster than 128 KiB on
/// ResNet-18's 56x56 3x3 layer, the same on VNNI).
fn block_rows(kq: usize, mr: usize) -> usize {
    ((32 * 1024 / (kq * 4)).clamp(mr, 512) / mr) * mr
}

/// The parallel GEMM driver shared by [`gemm`] and the convolutions. Writes every one of the
/// `m x w.n()` outputs (columns past `w.n()` of a row are not touched).
///
/// # Safety
/// `src` yields `m` valid rows of `w.k()` bytes for every group; `out` is valid for `m` rows of
/// `ldc >= w.n()` elements of the pipeline's kind; the pipeline was built from `w`; `kernel` is
/// supported by the CPU and matches `w`'s panel width.
pub(crate) unsafe fn run_gemm(
    w: &PackedWeights,
    kernel: Kernel,
    m: usize,
    src: &dyn ASource,
    pipeline: &OutputPipeline,
    out: OutPtr,
    ldc: usize,
) {
    let mr = kernel.mr;
    let threads = rayon::current_num_threads();
    let macs = m as f64 * w.n() as f64 * w.k() as f64;
    // The split, as a dimension and a part count; task `i` is computed from its index, so no
    // list of tasks is allocated per call.
    let (dim, len, unit, parts) = if threads <= 1 || macs < 2.0e6 {
        (Dim::Rows, m, mr, 1)
    } else if m >= threads * 64 || (w.panels_per_group < threads && w.groups < threads) {
        // Rows; several chunks per thread when there are many, so that a worker that starts
        // late (waking takes tens of microseconds in a VM) still takes its share.
        (Dim::Rows, m, mr, if m >= threads * 4 * 64 { threads * 4 } else { threads })
    } else if w.panels_per_group >= threads {
        // Small M: weight panels, so each thread streams its own part of the weights.
        (Dim::Panels, w.panels_per_group, 1, threads)
    } else {
        (Dim::Groups, w.groups, 1, threads)
    };
    let ntasks = split_count(len, parts, unit);
    let task = |i: usize| {
        let part = split_part(len, ntasks, unit, i);
        let mut t = Task { groups: 0..w.groups, rows: 0..m, panels: 0..w.panels_per_group };
        match dim {
            Dim::Rows => t.rows = part,
            Dim::Panels => t.panels = part,
            Dim::Groups => t.groups = part,
        }
        t
    };
    let out = SharedOut(out);
    let epi = pipeline.epi();
    let epi = SharedEpi(epi);
    let run = |i: usize| {
        let task = task(i);
        // SAFETY: forwarded from the caller; tasks cover disjoint output elements.
        with_scratch(|scratch| unsafe { run_task(w, kernel, &task, src, epi.get(), out.get(), ldc, scratch) })
    };
    if ntasks == 1 {
        run(0);
    } else {
        (0..ntasks).into_par_iter().for_each(run);
    }
}

/// The pipeline's pointers, shared read-only by the threads of one call.
pub(crate) struct SharedEpi(pub Epi);

impl SharedEpi {
    /// The epilogue (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn get(&self) -> &Epi {
        &self.0
    }
}
// SAFETY: the epilogue arrays are only read, and the pipeline outlives the parallel section.
unsafe impl Sync for SharedEpi {}

/// One task, block by block.
///
/// # Safety
/// As for [`run_gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn run_task(
    w: &PackedWeights,
    kernel: Kernel,
    task: &Task,
    src: &dyn ASource,
    epi: &Epi,
    out: OutPtr,
    ldc: usize,
    scratch: &mut Scratch,
) {
    let k = w.k();
    let mc = block_rows(w.kq, kernel.mr);
    let has_wzp = w.has_w_zp();
    for g in task.groups.clone() {
        let mut r0 = task.rows.start;
        while r0 < task.rows.end {
            let rows = mc.min(task.rows.end - r0);
            let (a, lda) = src.rows(g, r0, rows, w.kq, &mut scratch.a);
            let rowsums = if has_wzp {
                scratch.rowsums.clear();
                scratch.rowsums.extend((0..rows).map(|i| {
                    // SAFETY: the source yields `rows` rows of `k` readable bytes.
                    let row = unsafe { std::slice::from_raw_parts(a.add(i * lda), k) };
                    row.iter().fold(0i32, |s, &x| s.wrapping_add(i32::from(x)))
                }));
                scratch.rowsums.as_ptr()
            } else {
                std::ptr::null()
            };
            let rows_at = RowsAt { a, lda, rows, row_bytes: src.row_bytes(k, lda), rowsums };
            let blk = w.block(g, task.panels.clone(), rows_at, out.wrapping_add(r0 * ldc), ldc);
            // SAFETY: forwarded from the caller: valid rows, output and pipeline.
            unsafe { kernel.block(&blk, epi) };
            r0 += rows;
        }
    }
}
