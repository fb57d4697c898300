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

mod gemm;
pub(crate) mod microkernel;
mod onednn;
mod unary;

use rayon::prelude::*;

use crate::dispatch::run_tiered;
use crate::pool::Window;
use crate::util::{SendPtr, Tiered, check_len, for_chunks, invalid, numel};
use crate::{Isa, KernelError, KernelResult};
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

/// Convolution geometry over `D` spatial dimensions (PyTorch's `ConvNd` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams<const D: usize> {
    /// Stride.
    pub stride: [usize; D],
    /// Zero padding on both sides.
    pub padding: [usize; D],
    /// Dilation.
    pub dilation: [usize; D],
    /// Groups: input and output channels are split into this many independent convolutions.
    pub groups: usize,
}

impl<const D: usize> Default for ConvParams<D> {
    fn default() -> Self {
        Self { stride: [1; D], padding: [0; D], dilation: [1; D], groups: 1 }
    }
}

/// Reusable scratch for [`conv`] (the im2col buffer); grows to the largest layer and is kept.
#[derive(Debug, Default, Clone)]
pub struct ConvScratch {
    col: Vec<f32>,
    tmp: Vec<f32>,
}

fn pad3<const D: usize>(v: [usize; D], fill: usize) -> [usize; 3] {
    let mut r = [fill; 3];
    r[3 - D..].copy_from_slice(&v);
    r
}

/// The output shape of [`conv`]: `[N, O, out spatial...]`, or an error for inconsistent shapes.
pub fn conv_output_shape<const D: usize>(
    in_shape: &[usize],
    w_shape: &[usize],
    p: &ConvParams<D>,
) -> KernelResult<Vec<usize>> {
    const OP: &str = "conv";
    if !(1..=3).contains(&D) {
        return Err(invalid(OP, "spatial dimensions", D, "must be 1, 2 or 3"));
    }
    check_len(OP, "rank of the input (N, C, spatial...)", in_shape.len(), D + 2)?;
    check_len(OP, "rank of the weight (O, C / groups, kernel...)", w_shape.len(), D + 2)?;
    let (c, o, g) = (in_shape[1], w_shape[0], p.groups);
    if g == 0 || c % g != 0 || o % g != 0 {
        return Err(invalid(OP, "groups", g, "must be positive and divide the input and output channels"));
    }
    check_len(OP, "weight input channels", w_shape[1], c / g)?;
    if p.stride.contains(&0) || p.dilation.contains(&0) {
        return Err(invalid(OP, "stride / dilation", (p.stride, p.dilation), "must be positive"));
    }
    let mut out = vec![in_shape[0], o];
    for i in 0..D {
        let k = w_shape[2 + i];
        let span = p.dilation[i].checked_mul(k.max(1) - 1).and_then(|x| x.checked_add(1));
        let padded = p.padding[i].checked_mul(2).and_then(|x| x.checked_add(in_shape[2 + i]));
        match (span, padded) {
            (Some(span), Some(padded)) if k != 0 && padded >= span => {
                out.push((padded - span) / p.stride[i] + 1)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    OP,
                    "kernel size",
                    &w_shape[2..],
                    "the kernel is larger than the padded input",
                ));
            }
            _ => {
                let sizes = (&w_shape[2..], p.padding, p.dilation);
                return Err(invalid(OP, "(kernel, padding, dilation)", sizes, "the sizes overflow usize"));
            }
        }
    }
    Ok(out)
}

/// Convolution in NCHW (`torch.nn.functional.conv1d/2d/3d`): `input` `[N, C, spatial...]`,
/// `weight` `[O, C / groups, kernel...]`, optional `bias` `[O]`, `out` of
/// [`conv_output_shape`]. Depthwise 2-D layers (groups = C = O) run a direct kernel; 1x1 layers
/// with stride 1 and no padding are one GEMM per group; wide 2-D layers one GEMM per kernel tap;
/// the rest im2col + GEMM. The path, and with it the summation order of every output (from its
/// bias, `docs/NUMERICS.md` §9.1), depends on the shapes only.
#[allow(clippy::too_many_arguments)]
pub fn conv<const D: usize>(
    input: &[f32],
    in_shape: &[usize],
    weight: &[f32],
    w_shape: &[usize],
    bias: Option<&[f32]>,
    params: &ConvParams<D>,
    out: &mut [f32],
    scratch: &mut ConvScratch,
    isa: Isa,
) -> KernelResult<Vec<usize>> {
    let (oshape, geo) = checked_geometry(input, in_shape, weight, w_shape, bias, params, out, isa)?;
    let (n, c, o, g) = (in_shape[0], in_shape[1], w_shape[0], params.groups);
    let Geometry { input: isp, output: osp, kernel: ksp, stride: s, padding: p, .. } = geo;
    let (cg, og) = (c / g, o / g);
    let (in_plane, out_plane): (usize, usize) = (isp.iter().product(), osp.iter().product());
    let kvol: usize = ksp.iter().product();
    if out.is_empty() {
        return Ok(oshape);
    }
    if g == c && o == c && D == 2 {
        depthwise(input, weight, bias, out, n * c, c, geo, scratch, isa);
        return Ok(oshape);
    }
    let pointwise = kvol == 1 && s == [1; 3] && p == [0; 3];
    let rows = cg * kvol;
    // Wide 2-D layers skip im2col: one GEMM per kernel tap on a padded, stride-phase-split copy
    // of the input (the unfolded matrix would be kernel-size times the input and spill to L3).
    let shifted = D == 2 && !pointwise && cg >= SHIFTED_MIN_CHANNELS && osp[2] >= SHIFTED_MIN_WIDTH;
    if !pointwise && !shifted {
        grow(&mut scratch.col, rows * out_plane);
    }
    for b in 0..n {
        for gi in 0..g {
            let x = &input[(b * c + gi * cg) * in_plane..(b * c + (gi + 1) * cg) * in_plane];
            let w = &weight[gi * og * rows..(gi + 1) * og * rows];
            let y = &mut out[(b * o + gi * og) * out_plane..(b * o + (gi + 1) * og) * out_plane];
            let bias = bias.map(|bias| &bias[gi * og..(gi + 1) * og]);
            if shifted {
                shifted_conv2d(x, w, bias, y, scratch, cg, og, geo, isa);
                continue;
            }
            let columns = if pointwise {
                x
            } else {
                let col = &mut scratch.col[..rows * out_plane];
                im2col(x, col, cg, geo);
                &*col
            };
            fill_rows(y, out_plane, out_plane, bias);
            let product = Gemm {
                m: og,
                n: out_plane,
                k: rows,
                a: Matrix::row_major(w, rows),
                b: Matrix::row_major(columns, out_plane),
                accumulate: bias.is_some(),
            };
            product.run(y, out_plane, isa);
        }
    }
    Ok(oshape)
}

/// Checks the arguments of [`conv`] (and [`conv2d_onednn`]): the tier, the shapes and the
/// lengths of every slice; returns the output shape and the geometry padded to three dimensions.
#[allow(clippy::too_many_arguments)]
fn checked_geometry<const D: usize>(
    input: &[f32],
    in_shape: &[usize],
    weight: &[f32],
    w_shape: &[usize],
    bias: Option<&[f32]>,
    params: &ConvParams<D>,
    out: &[f32],
    isa: Isa,
) -> KernelResult<(Vec<usize>, Geometry)> {
    const OP: &str = "conv";
    isa.ensure_supported()?;
    let oshape = conv_output_shape(in_shape, w_shape, params)?;
    check_len(OP, "input length", input.len(), numel(OP, in_shape)?)?;
    check_len(OP, "weight length", weight.len(), numel(OP, w_shape)?)?;
    check_len(OP, "output length", out.len(), numel(OP, &oshape)?)?;
    if let Some(b) = bias {
        check_len(OP, "bias length", b.len(), w_shape[0])?;
    }
    let isp = pad3::<D>(in_shape[2..].try_into().expect("rank checked"), 1);
    let osp = pad3::<D>(oshape[2..].try_into().expect("rank checked"), 1);
    let ksp = pad3::<D>(w_shape[2..].try_into().expect("rank checked"), 1);
    let (s, p, d) = (pad3(params.stride, 1), pad3(params.padding, 0), pad3(params.dilation, 1));
    Ok((oshape, Geometry { input: isp, output: osp, kernel: ksp, stride: s, padding: p, dilation: d }))
}

/// Input channels per group from which 2-D convolutions use [`shifted_conv2d`] instead of im2col.
const SHIFTED_MIN_CHANNELS: usize = 32;
/// Output width from which [`shifted_conv2d`] pays: narrower rows waste too many phase-grid
/// columns and give the per-tap GEMMs too few columns (measured: 56 and 28 gain, 7 loses).
const SHIFTED_MIN_WIDTH: usize = 20;

/// 2-D convolution of one group as a sum of GEMMs, one per kernel tap, without im2col.
///
/// The input is copied once, zero-padded and split into `s x s` stride phases
/// (`P[ry][rx][c][i][j] = xpad[c][i * s + ry][j * s + rx]`). Output pixel `(oy, ox)` of tap
/// `(ky, kx)` then reads phase `((ky d) mod s, (kx d) mod s)` at `(oy + ky d / s, ox + kx d / s)`,
/// so with the output laid out on the phase grid (row length `Wq`), every tap is one GEMM
/// `acc (og x L) += W_tap (og x cg) * P_shifted (cg x L)` with unit column stride. The `Wq - OW`
/// extra columns per row are computed and dropped when the result is copied out.
#[allow(clippy::too_many_arguments)]
fn shifted_conv2d(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut ConvScratch,
    cg: usize,
    og: usize,
    geo: Geometry,
    isa: Isa,
) {
    let Geometry { input: isp, output: osp, kernel: ksp, stride: s, padding: p, dilation: d } = geo;
    let ([_, ih, iw], [_, oh, ow], [_, kh, kw]) = (isp, osp, ksp);
    let (sy, sx) = (s[1], s[2]);
    let (hp, wp) = (ih + 2 * p[1], iw + 2 * p[2]);
    let (hq, wq) = (hp.div_ceil(sy), wp.div_ceil(sx));
    let plane = hq * wq;
    let phases = sy * sx;
    grow(&mut scratch.col, phases * cg * plane);
    grow(&mut scratch.tmp, og * oh * wq);
    let buf = &mut scratch.col[..phases * cg * plane];
    // Fill the phases: zero, then scatter each input row.
    let fill = |ph: usize, dst: &mut [f32]| {
        let (ry, rx) = (ph / sx, ph % sx);
        dst.fill(0.0);
        for c in 0..cg {
            let src = &x[c * ih * iw..(c + 1) * ih * iw];
            for i in 0..hq {
                let yy = (i * sy + ry).wrapping_sub(p[1]);
                if yy >= ih {
                    continue;
                }
                let row = &src[yy * iw..(yy + 1) * iw];
                let out = &mut dst[(c * hq + i) * wq..(c * hq + i + 1) * wq];
                scatter_row(row, out, sx, rx, p[2]);
            }
        }
    };
    if phases > 1 && rayon::current_num_threads() > 1 {
        buf.par_chunks_mut(cg * plane).enumerate().for_each(|(ph, dst)| fill(ph, dst));
    } else {
        buf.chunks_mut(cg * plane).enumerate().for_each(|(ph, dst)| fill(ph, dst));
    }
    // Each output element starts from its bias and runs over the taps in order, each tap over
    // the input channels in order.
    let (len, kk) = ((oh - 1) * wq + ow, kh * kw);
    let acc = &mut scratch.tmp[..og * oh * wq];
    fill_rows(acc, oh * wq, len, bias);
    let buf = &*buf;
    for ky in 0..kh {
        for kx in 0..kw {
            let (ry, qy) = ((ky * d[1]) % sy, (ky * d[1]) / sy);
            let (rx, qx) = ((kx * d[2]) % sx, (kx * d[2]) / sx);
            // Tap (ky, kx) reads phase (ry, rx) from (qy, qx) on; its last element,
            // (cg - 1) * plane + base + len - 1, stays inside that phase because
            // (oh - 1 + qy) * wq + ow - 1 + qx <= (hq - 1) * wq + wq - 1.
            let base = (ry * sx + rx) * cg * plane + qy * wq + qx;
            let tap = Gemm {
                m: og,
                n: len,
                k: cg,
                a: Matrix { data: &w[ky * kw + kx..], row_stride: cg * kk, col_stride: kk },
                b: Matrix::row_major(&buf[base..], plane),
                accumulate: bias.is_some() || ky + kx > 0,
            };
            tap.run(acc, oh * wq, isa);
        }
    }
    for o in 0..og {
        for oy in 0..oh {
            let src = &acc[o * oh * wq + oy * wq..o * oh * wq + oy * wq + ow];
            y[(o * oh + oy) * ow..(o * oh + oy + 1) * ow].copy_from_slice(src);
        }
    }
}

/// Sets the first `len` elements of each row of `rows` (rows `stride` apart) to its bias, when
/// there is one.
fn fill_rows(rows: &mut [f32], stride: usize, len: usize, bias: Option<&[f32]>) {
    if let Some(bias) = bias {
        for (row, &bv) in rows.chunks_mut(stride).zip(bias) {
            row[..len].fill(bv);
        }
    }
}

/// `dst[j] = row[j * s + r - pad]` where that index is inside `row`; other entries untouched.
#[inline(always)]
fn scatter_row(row: &[f32], dst: &mut [f32], s: usize, r: usize, pad: usize) {
    // Valid j: pad <= j * s + r < row.len() + pad.
    let lo = if pad > r { (pad - r).div_ceil(s) } else { 0 };
    let hi = if row.len() + pad > r { (row.len() + pad - r).div_ceil(s).min(dst.len()) } else { 0 };
    if lo >= hi {
        return;
    }
    let start = lo * s + r - pad;
    if s == 1 {
        dst[lo..hi].copy_from_slice(&row[start..start + hi - lo]);
    } else if s == 2 {
        // Pairs (a deinterleave LLVM vectorises), then the last odd element.
        let n = hi - lo;
        let pairs = (row.len() - start) / 2;
        let m = n.min(pairs);
        for (v, pair) in dst[lo..lo + m].iter_mut().zip(row[start..start + 2 * m].chunks_exact(2)) {
            *v = pair[0];
        }
        if m < n {
            dst[lo + m] = row[start + 2 * m];
        }
    } else {
        for (v, &x) in dst[lo..hi].iter_mut().zip(row[start..].iter().step_by(s)) {
            *v = x;
        }
    }
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// The spatial geometry of one convolution, each part padded to three dimensions.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    input: [usize; 3],
    output: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
}

/// Unfolds `x` (`cg` channels of `isp`) into `col`: row `(ch, kz, ky, kx)`, column = output pixel.
fn im2col(x: &[f32], col: &mut [f32], cg: usize, geo: Geometry) {
    let Geometry { input: isp, output: osp, kernel: ksp, stride: s, padding: p, dilation: d } = geo;
    let out_plane: usize = osp.iter().product();
    let kvol: usize = ksp.iter().product();
    let in_plane: usize = isp.iter().product();
    let fill_row = |r: usize, dst: &mut [f32]| {
        let ch = r / kvol;
        let kk = r % kvol;
        let (kz, ky, kx) = (kk / (ksp[1] * ksp[2]), kk / ksp[2] % ksp[1], kk % ksp[2]);
        let src = &x[ch * in_plane..(ch + 1) * in_plane];
        // Output x range whose input column lies inside the image: ix = ox*s - p + kx*d.
        let off = kx * d[2];
        let lo = if off >= p[2] { 0 } else { (p[2] - off).div_ceil(s[2]) };
        let hi = if isp[2] + p[2] > off { ((isp[2] + p[2] - off - 1) / s[2] + 1).min(osp[2]) } else { 0 };
        for oz in 0..osp[0] {
            let iz = (oz * s[0] + kz * d[0]).wrapping_sub(p[0]);
            for oy in 0..osp[1] {
                let iy = (oy * s[1] + ky * d[1]).wrapping_sub(p[1]);
                let o = &mut dst[(oz * osp[1] + oy) * osp[2]..(oz * osp[1] + oy + 1) * osp[2]];
                if iz >= isp[0] || iy >= isp[1] || lo >= hi {
                    o.fill(0.0);
                    continue;
                }
                let row = &src[(iz * isp[1] + iy) * isp[2]..(iz * isp[1] + iy + 1) * isp[2]];
                o[..lo].fill(0.0);
                o[hi..].fill(0.0);
                if s[2] == 1 {
                    let start = lo + off - p[2];
                    o[lo..hi].copy_from_slice(&row[start..start + hi - lo]);
                } else {
                    for (ox, v) in o[lo..hi].iter_mut().enumerate() {
                        *v = row[(ox + lo) * s[2] + off - p[2]];
                    }
                }
            }
        }
    };
    let rows = cg * kvol;
    if rows * out_plane >= 1 << 16 && rayon::current_num_threads() > 1 {
        col[..rows * out_plane].par_chunks_mut(out_plane).enumerate().for_each(|(r, dst)| fill_row(r, dst));
    } else {
        for (r, dst) in col[..rows * out_plane].chunks_mut(out_plane).enumerate() {
            fill_row(r, dst);
        }
    }
}

struct DepthwisePlanes<'a> {
    input: &'a [f32],
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    out: SendPtr<f32>,
    planes: (usize, usize),
    c: usize,
    g: DwGeometry,
    /// This task's scratch: the phase-split padded plane, then the phase-grid accumulator.
    scratch: SendPtr<f32>,
}

/// The phase-grid geometry of a depthwise layer (see [`shifted_conv2d`] for the scheme).
#[derive(Debug, Clone, Copy)]
struct DwGeometry {
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    s: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
    hq: usize,
    wq: usize,
}

impl DwGeometry {
    fn scratch_len(&self) -> usize {
        self.s[0] * self.s[1] * self.hq * self.wq + self.oh * self.wq
    }
}

impl Tiered for DepthwisePlanes<'_> {
    #[inline(always)]
    fn run(&self) {
        let g = self.g;
        let plane = g.hq * g.wq;
        let phases = g.s[0] * g.s[1];
        // SAFETY: each task owns a disjoint `scratch_len` region of the scratch buffer.
        let buf = unsafe { self.scratch.slice(0, g.scratch_len()) };
        let (ph_buf, acc) = buf.split_at_mut(phases * plane);
        let len = (g.oh - 1) * g.wq + g.ow;
        for pl in self.planes.0..self.planes.1 {
            let ch = pl % self.c;
            let x = &self.input[pl * g.ih * g.iw..(pl + 1) * g.ih * g.iw];
            ph_buf.fill(0.0);
            for ph in 0..phases {
                let (ry, rx) = (ph / g.s[1], ph % g.s[1]);
                for i in 0..g.hq {
                    let yy = (i * g.s[0] + ry).wrapping_sub(g.p[0]);
                    if yy >= g.ih {
                        continue;
                    }
                    let row = &x[yy * g.iw..(yy + 1) * g.iw];
                    let dst = &mut ph_buf[ph * plane + i * g.wq..ph * plane + (i + 1) * g.wq];
                    scatter_row(row, dst, g.s[1], rx, g.p[1]);
                }
            }
            let acc = &mut acc[..len];
            acc.fill(0.0);
            let w = &self.weight[ch * g.kh * g.kw..(ch + 1) * g.kh * g.kw];
            let base = |ky: usize, kx: usize| {
                let (ry, qy) = ((ky * g.d[0]) % g.s[0], (ky * g.d[0]) / g.s[0]);
                let (rx, qx) = ((kx * g.d[1]) % g.s[1], (kx * g.d[1]) / g.s[1]);
                (ry * g.s[1] + rx) * plane + qy * g.wq + qx
            };
            for ky in 0..g.kh {
                let mut kx = 0;
                // Three taps per pass over the accumulator (one load and store for three FMAs).
                while kx + 3 <= g.kw {
                    let (w0, w1, w2) = (w[ky * g.kw + kx], w[ky * g.kw + kx + 1], w[ky * g.kw + kx + 2]);
                    let (b0, b1, b2) = (base(ky, kx), base(ky, kx + 1), base(ky, kx + 2));
                    let (r0, r1, r2) = (&ph_buf[b0..b0 + len], &ph_buf[b1..b1 + len], &ph_buf[b2..b2 + len]);
                    for (((a, &v0), &v1), &v2) in acc.iter_mut().zip(r0).zip(r1).zip(r2) {
                        *a += w0 * v0 + w1 * v1 + w2 * v2;
                    }
                    kx += 3;
                }
                for kx in kx..g.kw {
                    let wv = w[ky * g.kw + kx];
                    let b = base(ky, kx);
                    for (a, &v) in acc.iter_mut().zip(&ph_buf[b..b + len]) {
                        *a += wv * v;
                    }
                }
            }
            // SAFETY: planes are disjoint ranges of `out`, one task each.
            let y = unsafe { self.out.slice(pl * g.oh * g.ow, (pl + 1) * g.oh * g.ow) };
            let bv = self.bias.map_or(0.0, |b| b[ch]);
            for oy in 0..g.oh {
                for (v, &a) in y[oy * g.ow..(oy + 1) * g.ow].iter_mut().zip(&acc[oy * g.wq..oy * g.wq + g.ow])
                {
                    *v = a + bv;
                }
            }
        }
    }
}

/// Depthwise 2-D convolution (groups = C = O), plane by plane: each plane is zero-padded and
/// split into stride phases, and each kernel tap is one contiguous multiply-add over the
/// phase grid, so the inner loops are long and vectorise fully.
#[allow(clippy::too_many_arguments)]
fn depthwise(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    planes: usize,
    c: usize,
    geo: Geometry,
    scratch: &mut ConvScratch,
    isa: Isa,
) {
    let Geometry { input: isp, output: osp, kernel: ksp, stride: s, padding: p, dilation: d } = geo;
    let (hp, wp) = (isp[1] + 2 * p[1], isp[2] + 2 * p[2]);
    let g = DwGeometry {
        ih: isp[1],
        iw: isp[2],
        oh: osp[1],
        ow: osp[2],
        kh: ksp[1],
        kw: ksp[2],
        s: [s[1], s[2]],
        p: [p[1], p[2]],
        d: [d[1], d[2]],
        hq: hp.div_ceil(s[1]),
        wq: wp.div_ceil(s[2]),
    };
    let tasks = planes.min(4 * rayon::current_num_threads()).max(1);
    let per = g.scratch_len();
    grow(&mut scratch.col, tasks * per);
    let ptr = SendPtr(out.as_mut_ptr());
    let sptr = SendPtr(scratch.col.as_mut_ptr());
    let run = |t: usize| {
        let (a, b) = (t * planes / tasks, (t + 1) * planes / tasks);
        // Task t's scratch region [t * per, (t + 1) * per) lies inside `scratch.col` (grown to
        // tasks * per above) and no other task uses it.
        let scratch = sptr.offset(t * per);
        let k = DepthwisePlanes { input, weight, bias, out: ptr, planes: (a, b), c, g, scratch };
        run_tiered(&k, isa);
    };
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        run(0);
    }
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
    const OP: &str = "batch_norm";
    isa.ensure_supported()?;
    if shape.len() < 2 {
        return Err(invalid(OP, "shape", shape, "needs at least (N, C)"));
    }
    check_len(OP, "input length", input.len(), numel(OP, shape)?)?;
    check_len(OP, "output length", out.len(), input.len())?;
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
    if inner == 0 || input.is_empty() {
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
    input: &'a [f32],
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
            for (o, &x) in y.iter_mut().zip(&self.input[a..b]) {
                *o = x * alpha + beta;
            }
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
    input: &'a [f32],
    out: SendPtr<f32>,
    range: (usize, usize),
}

impl Tiered for ActRange<'_> {
    #[inline(always)]
    fn run(&self) {
        let (a, b) = self.range;
        // SAFETY: ranges are disjoint parts of `out`.
        let y = unsafe { self.out.slice(a, b) };
        let x = &self.input[a..b];
        // One loop per op so the clamping ones vectorise.
        match self.act {
            Activation::Relu => y.iter_mut().zip(x).for_each(|(o, &v)| *o = relu(v)),
            Activation::Relu6 => y.iter_mut().zip(x).for_each(|(o, &v)| *o = v.clamp(0.0, 6.0)),
            act => y.iter_mut().zip(x).for_each(|(o, &v)| *o = act.apply(v)),
        }
    }
}

/// `out = act(input)` element by element.
pub fn activation(act: Activation, input: &[f32], out: &mut [f32], isa: Isa) -> KernelResult<()> {
    isa.ensure_supported()?;
    check_len("activation", "output length", out.len(), input.len())?;
    if let Activation::Hardtanh { min, max } = act
        && (min.is_nan() || max.is_nan() || min > max)
    {
        return Err(invalid("hardtanh", "(min, max)", (min, max), "needs min <= max"));
    }
    match act {
        Activation::Sigmoid => return sigmoid(input, out, isa),
        Activation::Tanh => return tanh(input, out, isa),
        _ => {}
    }
    let ptr = SendPtr(out.as_mut_ptr());
    for_chunks(input.len(), |a, b| run_tiered(&ActRange { act, input, out: ptr, range: (a, b) }, isa));
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
    let plane = |pl: usize, y: &mut [f32]| {
        let x = &input[pl * ih * iw..(pl + 1) * ih * iw];
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * w.stride[0]) as i64 - w.padding[0] as i64;
                let x0 = (ox * w.stride[1]) as i64 - w.padding[1] as i64;
                y[oy * ow + ox] = match kind {
                    PoolKind::Max => {
                        let mut m = f32::NEG_INFINITY;
                        for ky in w.taps_inside(0, oy, ih) {
                            let yy = y0 + (ky * w.dilation[0]) as i64;
                            for kx in w.taps_inside(1, ox, iw) {
                                let xx = x0 + (kx * w.dilation[1]) as i64;
                                let v = x[yy as usize * iw + xx as usize];
                                if v > m || v.is_nan() {
                                    m = v;
                                }
                            }
                        }
                        m
                    }
                    PoolKind::Avg { count_include_pad, divisor_override } => {
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
                        let div = divisor_override.unwrap_or(if count_include_pad {
                            pool
                        } else {
                            (yb - ya) * (xb - xa)
                        });
                        sum / div as f32
                    }
                };
            }
        }
    };
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(pl, y)| plane(pl, y));
    Ok(oshape)
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
