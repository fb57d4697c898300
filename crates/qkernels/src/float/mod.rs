//! f32 kernels for float models and calibration, in PyTorch's NCHW layout: GEMM ([`sgemm`]),
//! convolution (1-3 D, groups, dilation; im2col + GEMM, 1x1 without im2col, one GEMM per kernel
//! tap for wide layers, a direct depthwise path; [`conv2d_onednn`] in PyTorch's AVX-512 order),
//! batch norm (eval), activations, pooling and softmax.
//!
//! These follow PyTorch's definitions, not its bit patterns: sums run in a different order, so
//! results agree with PyTorch and with the naive references in the tests to a relative 1e-5 of
//! the sum of absolute terms. Our own bits, though, are the same on every CPU, tier and thread
//! count (`docs/NUMERICS.md` §9.1), so calibration gives the same int8 model everywhere: every
//! GEMM output is one chain of fused multiply-adds over `k` in order (see `gemm`), a convolution
//! output starts from its bias and runs over its reduction index in an order fixed by the layer's
//! shape, and the other kernels reduce sequentially, one output per thread, with the same
//! operations on every tier (no reassociation, no tier-specific contraction).

mod conv;
mod gemm;
pub(crate) mod microkernel;
mod onednn;
mod unary;

use rayon::prelude::*;

use crate::dispatch::run_tiered;
use crate::pool::Window;
use crate::util::{SendPtr, Tiered, check_len, for_chunks, invalid, numel};
use crate::{Isa, KernelError, KernelResult};
pub use conv::{ConvParams, ConvScratch, conv, conv_output_shape};
use gemm::Gemm;
pub use gemm::Matrix;
pub use onednn::{ONEDNN_CHANNEL_BLOCK, conv2d_onednn};
pub use unary::{
    PytorchCpuCapability, pytorch_cpu_capability, set_pytorch_cpu_capability, sigmoid, sigmoid_in_place,
    sigmoid_vector_len, tanh, tanh_in_place, tanh_value,
};

/// Single-precision GEMM: `c = a * b` (or `c += a * b` when `accumulate`), `a` `m x k`, `b`
/// `k x n` (any strides), `c` `m x n` row-major with row stride `ldc`. Each element of `c` is one
/// chain of fused multiply-adds over `k` in order, so the bits do not depend on the tier, the CPU
/// or the number of threads; large products run on the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Matrix<'_>,
    b: Matrix<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    isa: Isa,
) -> KernelResult<()> {
    const OP: &str = "sgemm";
    isa.ensure_supported()?;
    if ldc < n {
        return Err(invalid(OP, "row stride of c", ldc, "must be at least n"));
    }
    let c_view = Matrix { data: c, row_stride: ldc, col_stride: 1 };
    for (what, view, rows, cols) in
        [("length of a", a, m, k), ("length of b", b, k, n), ("length of c", c_view, m, n)]
    {
        let expected = view.needed(rows, cols).ok_or_else(|| {
            invalid(
                OP,
                "strides",
                (view.row_stride, view.col_stride),
                "address more than usize::MAX elements",
            )
        })?;
        if view.data.len() < expected {
            return Err(KernelError::ShapeMismatch { op: OP, what, got: view.data.len(), expected });
        }
    }
    Gemm { m, n, k, a, b, accumulate }.run(c, ldc, isa);
    Ok(())
}

/// Batch norm in eval mode (`F.batch_norm(training=False)`) on `[N, C, ...]`:
/// `y = x * alpha + beta` with `alpha = weight / sqrt(var + eps)`, `beta = bias - mean * alpha`
/// per channel, as PyTorch's CPU kernel folds it. `weight` / `bias` default to 1 / 0.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    input: &[f32],
    shape: &[usize],
    mean: &[f32],
    var: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    isa: Isa,
) -> KernelResult<()> {
    check_len("batch_norm", "output length", out.len(), input.len())?;
    batch_norm_into(Some(input), shape, mean, var, weight, bias, eps, out, isa)
}

/// [`batch_norm`] overwriting its input `data`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_in_place(
    data: &mut [f32],
    shape: &[usize],
    mean: &[f32],
    var: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
    isa: Isa,
) -> KernelResult<()> {
    batch_norm_into(None, shape, mean, var, weight, bias, eps, data, isa)
}

/// [`batch_norm`] from `input`, or in place when it is `None`.
#[allow(clippy::too_many_arguments)]
fn batch_norm_into(
    input: Option<&[f32]>,
    shape: &[usize],
    mean: &[f32],
    var: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    isa: Isa,
) -> KernelResult<()> {
    const OP: &str = "batch_norm";
    isa.ensure_supported()?;
    if shape.len() < 2 {
        return Err(invalid(OP, "shape", shape, "needs at least (N, C)"));
    }
    check_len(OP, "input length", input.map_or(out.len(), <[f32]>::len), numel(OP, shape)?)?;
    let c = shape[1];
    for (what, v) in [
        ("mean length", Some(mean)),
        ("var length", Some(var)),
        ("weight length", weight),
        ("bias length", bias),
    ] {
        if let Some(v) = v {
            check_len(OP, what, v.len(), c)?;
        }
    }
    let inner: usize = shape[2..].iter().product();
    if inner == 0 || out.is_empty() {
        return Ok(());
    }
    let ptr = SendPtr(out.as_mut_ptr());
    let planes = shape[0] * c;
    let run = |a: usize, b: usize| {
        let k = Affine { input, out: ptr, planes: (a, b), c, inner, mean, var, weight, bias, eps };
        run_tiered(&k, isa);
    };
    if planes * inner > 1 << 16 && rayon::current_num_threads() > 1 {
        let per = ((1 << 16) / inner).max(1);
        (0..planes.div_ceil(per)).into_par_iter().for_each(|t| run(t * per, ((t + 1) * per).min(planes)));
    } else {
        run(0, planes);
    }
    Ok(())
}

struct Affine<'a> {
    /// The input, or `None` to read `out` itself.
    input: Option<&'a [f32]>,
    out: SendPtr<f32>,
    planes: (usize, usize),
    c: usize,
    inner: usize,
    mean: &'a [f32],
    var: &'a [f32],
    weight: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    eps: f64,
}

impl Tiered for Affine<'_> {
    #[inline(always)]
    fn run(&self) {
        for plane in self.planes.0..self.planes.1 {
            let ch = plane % self.c;
            let invstd = (1.0 / (f64::from(self.var[ch]) + self.eps).sqrt()) as f32;
            let alpha = invstd * self.weight.map_or(1.0, |w| w[ch]);
            let beta = self.bias.map_or(0.0, |b| b[ch]) - self.mean[ch] * alpha;
            let (a, b) = (plane * self.inner, (plane + 1) * self.inner);
            // SAFETY: planes are disjoint ranges of `out`.
            let y = unsafe { self.out.slice(a, b) };
            map_into(y, self.input.map(|x| &x[a..b]), |x| x * alpha + beta);
        }
    }
}

/// A float activation, PyTorch's definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `min(max(x, min), max)`.
    Hardtanh {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `x * min(max(x + 3, 0), 6) / 6`.
    Hardswish,
    /// `x <= threshold ? value : x` (NaN stays NaN).
    Threshold {
        /// Values at or below it are replaced.
        threshold: f32,
        /// The replacement.
        value: f32,
    },
    /// `min(max(x + 3, 0), 6) / 6`: a division by 6, as ATen's CPU kernel computes it in both its
    /// vector and scalar loops (not a multiplication by 1/6, which rounds differently).
    Hardsigmoid,
    /// `1 / (1 + exp(-x))`: [`activation`] computes PyTorch's bits ([`sigmoid`]).
    Sigmoid,
    /// `tanh(x)`: [`activation`] computes [`tanh`].
    Tanh,
    /// `x > 0 ? x : x * negative_slope`.
    LeakyRelu {
        /// Slope for negative inputs.
        negative_slope: f32,
    },
    /// `x > 0 ? x : alpha * (exp(x) - 1)`.
    Elu {
        /// `alpha`.
        alpha: f32,
    },
}

impl Activation {
    /// The activation of one value with the C library's `expf` / `tanhf`: what the quantized
    /// lookup tables are built from. [`activation`] computes sigmoid and tanh as PyTorch's float
    /// kernels do instead ([`sigmoid`], [`tanh`]).
    #[inline(always)]
    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            // NaN propagates, as in PyTorch (`f32::max` would turn it into the bound).
            Activation::Relu => relu(x),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Hardtanh { min, max } => {
                if x.is_nan() {
                    x
                } else {
                    x.max(min).min(max)
                }
            }
            Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Threshold { threshold, value } => {
                if x <= threshold {
                    value
                } else {
                    x
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::LeakyRelu { negative_slope } => {
                if x > 0.0 {
                    x
                } else {
                    x * negative_slope
                }
            }
            Activation::Elu { alpha } => {
                if x > 0.0 {
                    x
                } else {
                    alpha * x.exp_m1()
                }
            }
        }
    }
}

/// `max(x, 0)` keeping NaN, as `torch.relu`.
#[inline(always)]
fn relu(x: f32) -> f32 {
    if x.is_nan() { x } else { x.max(0.0) }
}

struct ActRange<'a> {
    act: Activation,
    /// The input, or `None` to read `out` itself.
    input: Option<&'a [f32]>,
    out: SendPtr<f32>,
    range: (usize, usize),
}

impl Tiered for ActRange<'_> {
    #[inline(always)]
    fn run(&self) {
        let (a, b) = self.range;
        // SAFETY: ranges are disjoint parts of `out`.
        let y = unsafe { self.out.slice(a, b) };
        let x = self.input.map(|x| &x[a..b]);
        // One loop per op so the clamping ones vectorise.
        match self.act {
            Activation::Relu => map_into(y, x, relu),
            Activation::Relu6 => map_into(y, x, |v| v.clamp(0.0, 6.0)),
            act => map_into(y, x, |v| act.apply(v)),
        }
    }
}

/// `y[i] = f(x[i])`, with `x` the input or, when it is `None`, `y` itself.
#[inline(always)]
fn map_into(y: &mut [f32], x: Option<&[f32]>, f: impl Fn(f32) -> f32) {
    match x {
        Some(x) => y.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v)),
        None => y.iter_mut().for_each(|o| *o = f(*o)),
    }
}

/// `out = act(input)` element by element.
pub fn activation(act: Activation, input: &[f32], out: &mut [f32], isa: Isa) -> KernelResult<()> {
    check_len("activation", "output length", out.len(), input.len())?;
    activation_into(act, Some(input), out, isa)
}

/// `data = act(data)` element by element.
pub fn activation_in_place(act: Activation, data: &mut [f32], isa: Isa) -> KernelResult<()> {
    match act {
        // The lookup-table activations read their input as a slice of its own.
        Activation::Sigmoid | Activation::Tanh => {
            let input = data.to_vec();
            activation(act, &input, data, isa)
        }
        _ => activation_into(act, None, data, isa),
    }
}

/// [`activation`] from `input`, or in place when it is `None` (not for sigmoid and tanh).
fn activation_into(act: Activation, input: Option<&[f32]>, out: &mut [f32], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    if let Activation::Hardtanh { min, max } = act
        && (min.is_nan() || max.is_nan() || min > max)
    {
        return Err(invalid("hardtanh", "(min, max)", (min, max), "needs min <= max"));
    }
    match (act, input) {
        (Activation::Sigmoid, Some(input)) => return sigmoid(input, out, isa),
        (Activation::Tanh, Some(input)) => return tanh(input, out, isa),
        _ => {}
    }
    let ptr = SendPtr(out.as_mut_ptr());
    for_chunks(out.len(), |a, b| run_tiered(&ActRange { act, input, out: ptr, range: (a, b) }, isa));
    Ok(())
}

/// Softmax along `dim` of a row-major tensor of `shape`: `exp(x - max) / sum(exp(x - max))`.
pub fn softmax(input: &[f32], shape: &[usize], dim: usize, out: &mut [f32], isa: Isa) -> KernelResult<()> {
    const OP: &str = "softmax";
    isa.ensure_supported()?;
    if dim >= shape.len() {
        return Err(invalid(OP, "dim", dim, "must be less than the rank"));
    }
    check_len(OP, "input length", input.len(), numel(OP, shape)?)?;
    check_len(OP, "output length", out.len(), input.len())?;
    let (len, inner) = (shape[dim], shape[dim + 1..].iter().product::<usize>());
    let outer: usize = shape[..dim].iter().product();
    if input.is_empty() {
        return Ok(());
    }
    let block = len * inner;
    let one = |o: usize, y: &mut [f32]| {
        let x = &input[o * block..(o + 1) * block];
        for i in 0..inner {
            let mut m = f32::NEG_INFINITY;
            for j in 0..len {
                m = m.max(x[j * inner + i]);
            }
            let mut sum = 0.0f32;
            for j in 0..len {
                let e = (x[j * inner + i] - m).exp();
                y[j * inner + i] = e;
                sum += e;
            }
            for j in 0..len {
                y[j * inner + i] /= sum;
            }
        }
    };
    if outer > 1 && block * outer > 1 << 15 {
        out.par_chunks_mut(block).enumerate().for_each(|(o, y)| one(o, y));
    } else {
        out.chunks_mut(block).enumerate().for_each(|(o, y)| one(o, y));
    }
    Ok(())
}

/// How a float pooling op reduces its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum (NaN propagates, as in PyTorch).
    Max,
    /// Average; `count_include_pad` and `divisor_override` as in `F.avg_pool2d`.
    Avg {
        /// Count padding positions in the divisor.
        count_include_pad: bool,
        /// Divide by this instead (non-zero).
        divisor_override: Option<i64>,
    },
}

/// 2-D max or average pooling of an NCHW f32 tensor. Returns the output shape.
pub fn pool2d(
    input: &[f32],
    shape: &[usize],
    window: &Window<2>,
    kind: PoolKind,
    out: &mut [f32],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "pool2d";
    isa.ensure_supported()?;
    check_len(OP, "rank of the input (N, C, H, W)", shape.len(), 4)?;
    check_len(OP, "input length", input.len(), numel(OP, shape)?)?;
    if let PoolKind::Avg { divisor_override: Some(0), .. } = kind {
        return Err(invalid(OP, "divisor_override", 0, "must be non-zero"));
    }
    if matches!(kind, PoolKind::Avg { .. }) && window.dilation != [1, 1] {
        return Err(invalid(OP, "dilation", window.dilation, "average pooling has no dilation"));
    }
    let (ih, iw) = (shape[2], shape[3]);
    let [oh, ow] = window.output_size(OP, [ih, iw])?;
    let oshape = vec![shape[0], shape[1], oh, ow];
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    let w = *window;
    let full = |ox: usize| w.taps_inside(1, ox, iw) == (0..w.kernel[1]);
    let lo = (0..ow).find(|&ox| full(ox)).unwrap_or(ow);
    let inner = lo..(lo..ow).find(|&ox| !full(ox)).unwrap_or(ow);
    let plane = |pl: usize, y: &mut [f32]| {
        let x = &input[pl * ih * iw..(pl + 1) * ih * iw];
        let (count_include_pad, divisor_override) = match kind {
            PoolKind::Max => return max_plane(x, y, [ih, iw], [oh, ow], &w, inner.clone()),
            PoolKind::Avg { count_include_pad, divisor_override } => (count_include_pad, divisor_override),
        };
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * w.stride[0]) as i64 - w.padding[0] as i64;
                let x0 = (ox * w.stride[1]) as i64 - w.padding[1] as i64;
                let y1 = (y0 + w.kernel[0] as i64).min((ih + w.padding[0]) as i64);
                let x1 = (x0 + w.kernel[1] as i64).min((iw + w.padding[1]) as i64);
                let pool = (y1 - y0) * (x1 - x0);
                let (ya, xa, yb, xb) = (y0.max(0), x0.max(0), y1.min(ih as i64), x1.min(iw as i64));
                let mut sum = 0.0f32;
                for yy in ya..yb {
                    for xx in xa..xb {
                        sum += x[yy as usize * iw + xx as usize];
                    }
                }
                let div =
                    divisor_override.unwrap_or(if count_include_pad { pool } else { (yb - ya) * (xb - xa) });
                y[oy * ow + ox] = sum / div as f32;
            }
        }
    };
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(pl, y)| plane(pl, y));
    Ok(oshape)
}

/// Max pooling of one `[ih, iw]` plane into `y` (`[oh, ow]`): per output pixel, the taps
/// inside the input in `(ky, kx)` order, each replacing the maximum when greater or NaN
/// (PyTorch's rule: a NaN propagates, of equal values the first stays). The output columns
/// `inner`, whose taps all lie inside the input, go a row at a time, tap by tap across the row,
/// the same order per pixel.
fn max_plane(
    x: &[f32],
    y: &mut [f32],
    [ih, iw]: [usize; 2],
    [oh, ow]: [usize; 2],
    w: &Window<2>,
    inner: std::ops::Range<usize>,
) {
    let take = |m: f32, v: f32| if v > m || v.is_nan() { v } else { m };
    let [s, p, d] = [w.stride, w.padding, w.dilation];
    let (lo, hi) = (inner.start, inner.end);
    for (oy, row) in y.chunks_exact_mut(ow).take(oh).enumerate() {
        let rows = w.taps_inside(0, oy, ih).map(|ky| {
            let yy = oy * s[0] + ky * d[0] - p[0];
            &x[yy * iw..(yy + 1) * iw]
        });
        for ox in (0..lo).chain(hi..ow) {
            row[ox] = rows.clone().fold(f32::NEG_INFINITY, |m, src| {
                w.taps_inside(1, ox, iw).fold(m, |m, kx| take(m, src[ox * s[1] + kx * d[1] - p[1]]))
            });
        }
        if lo == hi {
            continue;
        }
        let inner = &mut row[lo..hi];
        inner.fill(f32::NEG_INFINITY);
        for src in rows {
            for kx in 0..w.kernel[1] {
                // Interior pixels: `lo * s + kx * d >= p`.
                let taps = src[lo * s[1] + kx * d[1] - p[1]..].iter().step_by(s[1]);
                for (m, &v) in inner.iter_mut().zip(taps) {
                    *m = take(*m, v);
                }
            }
        }
    }
}

/// Adaptive average pooling of an NCHW f32 tensor to `output_size` (PyTorch's start/end index
/// rule: `floor(o * in / out) .. ceil((o + 1) * in / out)`).
pub fn adaptive_avg_pool2d(
    input: &[f32],
    shape: &[usize],
    output_size: [usize; 2],
    out: &mut [f32],
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "adaptive_avg_pool2d";
    isa.ensure_supported()?;
    check_len(OP, "rank of the input (N, C, H, W)", shape.len(), 4)?;
    check_len(OP, "input length", input.len(), numel(OP, shape)?)?;
    let (ih, iw) = (shape[2], shape[3]);
    let [oh, ow] = output_size;
    if oh == 0 || ow == 0 || ih == 0 || iw == 0 {
        return Err(invalid(OP, "output_size", output_size, "input and output sizes must be positive"));
    }
    let oshape = vec![shape[0], shape[1], oh, ow];
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(pl, y)| {
        let x = &input[pl * ih * iw..(pl + 1) * ih * iw];
        for oy in 0..oh {
            let (y0, y1) = (oy * ih / oh, ((oy + 1) * ih).div_ceil(oh));
            for ox in 0..ow {
                let (x0, x1) = (ox * iw / ow, ((ox + 1) * iw).div_ceil(ow));
                let mut sum = 0.0f32;
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        sum += x[yy * iw + xx];
                    }
                }
                y[oy * ow + ox] = sum / ((y1 - y0) * (x1 - x0)) as f32;
            }
        }
    });
    Ok(oshape)
}
