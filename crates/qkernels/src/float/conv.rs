//! Convolution (1-3 D, groups, dilation): im2col + GEMM, 1x1 without im2col, one GEMM per kernel
//! tap for wide layers (`shifted_conv2d`), a direct depthwise path; each output's summation order
//! is fixed by the layer's shape (docs/NUMERICS.md §9.1).

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::{Gemm, Matrix};
use crate::dispatch::run_tiered;
use crate::util::{SendPtr, Tiered, check_len, invalid, numel};
use crate::{Isa, KernelResult};

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

thread_local! {
    static CONV_SCRATCH: RefCell<ConvScratch> = RefCell::default();
}

impl ConvScratch {
    /// Runs `f` with this thread's scratch, kept across calls (a fresh one if a convolution on
    /// this thread is already using it), so that callers without a scratch of their own do not
    /// allocate and zero-fill one per call.
    ///
    /// ```
    /// use qkernels::Isa;
    /// use qkernels::float::{ConvParams, ConvScratch, conv};
    /// let mut out = [0.0];
    /// ConvScratch::with_thread_local(|scratch| {
    ///     conv::<2>(&[2.0], &[1, 1, 1, 1], &[3.0], &[1, 1, 1, 1], None, &ConvParams::default(), &mut out,
    ///         scratch, Isa::Scalar)
    /// })?;
    /// assert_eq!(out, [6.0]);
    /// # Ok::<(), qkernels::KernelError>(())
    /// ```
    pub fn with_thread_local<R>(f: impl FnOnce(&mut ConvScratch) -> R) -> R {
        crate::util::with_thread_local(&CONV_SCRATCH, f)
    }
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
pub(super) fn checked_geometry<const D: usize>(
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
/// (`P[c][ry][rx][i][j] = xpad[c][i * s + ry][j * s + rx]`, [`PhaseGrid`]). Output pixel `(oy, ox)` of tap
/// `(ky, kx)` then reads phase `((ky d) mod s, (kx d) mod s)` at `(oy + ky d / s, ox + kx d / s)`,
/// so with the output laid out on the phase grid (row length `Wq`), every tap is one GEMM
/// `acc (og x L) += W_tap (og x cg) * P_shifted (cg x L)` with unit column stride. The `Wq - OW`
/// extra columns per row are computed and dropped when the result is copied out.
#[allow(clippy::too_many_arguments)]
pub(super) fn shifted_conv2d(
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
    let grid = PhaseGrid::new([ih, iw], [s[1], s[2]], [p[1], p[2]]);
    let (wq, channel) = (grid.wq, grid.len());
    let (len, kk) = ((oh - 1) * wq + ow, kh * kw);
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && og * len * cg * kk >= PAR_CONV_MACS;
    grow(&mut scratch.col, cg * channel);
    grow(&mut scratch.tmp, og * oh * wq);
    let buf = &mut scratch.col[..cg * channel];
    // The phases of each input channel, `channel` values apart: zeroed, then filled.
    let fill = |c: usize, dst: &mut [f32]| {
        dst.fill(0.0);
        grid.split(&x[c * ih * iw..(c + 1) * ih * iw], dst);
    };
    if parallel {
        buf.par_chunks_mut(channel).with_min_len(4).enumerate().for_each(|(c, dst)| fill(c, dst));
    } else {
        buf.chunks_mut(channel).enumerate().for_each(|(c, dst)| fill(c, dst));
    }
    let buf = &*buf;
    // Output element (o, oy, ox) sits at column oy * wq + ox of row o of `acc`. Each task owns a
    // range of those columns: it starts them from their bias, runs every tap over them in order
    // (each tap over the input channels in order), and copies the ones inside the output rows.
    let ldc = oh * wq;
    let (acc, out) = (SendPtr(scratch.tmp.as_mut_ptr()), SendPtr(y.as_mut_ptr()));
    let run = |cols: std::ops::Range<usize>| {
        if let Some(bias) = bias {
            for (o, &bv) in bias.iter().enumerate() {
                // SAFETY: row o of `acc` holds `ldc >= len` elements; this task owns `cols`.
                unsafe { acc.offset(o * ldc).slice(cols.start, cols.end) }.fill(bv);
            }
        }
        for ky in 0..kh {
            for kx in 0..kw {
                // Tap (ky, kx) reads phase (ry, rx) of every channel from (qy, qx) on; its last
                // element, (cg - 1) * channel + base + len - 1, stays inside that phase of the
                // last channel because (oh - 1 + qy) * wq + ow - 1 + qx <= (hq - 1) * wq + wq - 1.
                let base = grid.tap_offset((ky, kx), [d[1], d[2]]);
                let tap = Gemm {
                    m: og,
                    n: len,
                    k: cg,
                    a: Matrix { data: &w[ky * kw + kx..], row_stride: cg * kk, col_stride: kk },
                    b: Matrix::row_major(&buf[base..], channel),
                    accumulate: bias.is_some() || ky + kx > 0,
                };
                // SAFETY: `acc` holds og rows of ldc >= len elements (grown above), and this
                // task is the only one touching columns `cols` of them.
                unsafe { tap.run_columns(acc, ldc, cols.clone(), isa) };
            }
        }
        for o in 0..og {
            for oy in cols.start / wq..cols.end.div_ceil(wq).min(oh) {
                let (lo, hi) = (cols.start.max(oy * wq), cols.end.min(oy * wq + ow));
                if lo < hi {
                    let at = (o * oh + oy) * ow + lo - oy * wq;
                    // SAFETY: columns lo..hi of row o are this task's and were computed above;
                    // output (o, oy, lo - oy * wq..hi - oy * wq) lies in `y` (og x oh x ow) and
                    // belongs to this task's columns only.
                    unsafe {
                        out.slice(at, at + hi - lo).copy_from_slice(acc.offset(o * ldc).slice(lo, hi));
                    }
                }
            }
        }
    };
    if parallel {
        // Column ranges in whole multiples of every tier's panel width.
        let chunks = len.div_ceil(COLUMN_CHUNK);
        let parts = threads.min(chunks);
        (0..parts).into_par_iter().for_each(|t| {
            run(t * chunks / parts * COLUMN_CHUNK..((t + 1) * chunks / parts * COLUMN_CHUNK).min(len))
        });
    } else {
        run(0..len);
    }
}

/// Multiply-adds from which [`shifted_conv2d`] splits its work over the rayon pool.
const PAR_CONV_MACS: usize = 1 << 18;
/// The unit of the column ranges [`shifted_conv2d`] gives its tasks: a multiple of the vector
/// tiers' panel widths (48 and 16), so that no panel straddles two tasks.
const COLUMN_CHUNK: usize = 48;

/// Sets the first `len` elements of each row of `rows` (rows `stride` apart) to its bias, when
/// there is one.
fn fill_rows(rows: &mut [f32], stride: usize, len: usize, bias: Option<&[f32]>) {
    if let Some(bias) = bias {
        for (row, &bv) in rows.chunks_mut(stride).zip(bias) {
            row[..len].fill(bv);
        }
    }
}

/// The stride phases of a zero-padded input plane: `P[ry][rx][i][j] = xpad[i * sy + ry][j * sx +
/// rx]`, phase `(ry, rx)` a plane of `hq x wq` values at `(ry * sx + rx) * hq * wq`.
#[derive(Debug, Clone, Copy)]
struct PhaseGrid {
    /// Input rows and columns.
    input: [usize; 2],
    /// Stride (rows, columns).
    stride: [usize; 2],
    /// Padding (rows, columns).
    pad: [usize; 2],
    /// Rows and columns of a phase: the padded sizes divided by the stride, rounded up.
    hq: usize,
    wq: usize,
}

impl PhaseGrid {
    fn new(input: [usize; 2], stride: [usize; 2], pad: [usize; 2]) -> Self {
        let hq = (input[0] + 2 * pad[0]).div_ceil(stride[0]);
        let wq = (input[1] + 2 * pad[1]).div_ceil(stride[1]);
        Self { input, stride, pad, hq, wq }
    }

    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    fn len(&self) -> usize {
        self.stride[0] * self.stride[1] * self.plane()
    }

    /// Where kernel tap `(ky, kx)` at dilation `d` starts reading: phase `((ky d) mod s, (kx d)
    /// mod s)` at row `ky d / s`, column `kx d / s`, so that output pixel `(oy, ox)` reads the
    /// grid `oy * wq + ox` further on.
    fn tap_offset(&self, (ky, kx): (usize, usize), d: [usize; 2]) -> usize {
        let ([sy, sx], [dy, dx]) = (self.stride, d);
        let (ry, qy) = ((ky * dy) % sy, (ky * dy) / sy);
        let (rx, qx) = ((kx * dx) % sx, (kx * dx) / sx);
        (ry * sx + rx) * self.plane() + qy * self.wq + qx
    }

    /// Writes every value of the input plane `x` to its place in `phases` ([`PhaseGrid::len`]
    /// values), input row by input row; the padding entries are left as they are.
    #[inline(always)]
    fn split(&self, x: &[f32], phases: &mut [f32]) {
        let ([ih, iw], [sy, sx], [py, px]) = (self.input, self.stride, self.pad);
        let (plane, wq) = (self.plane(), self.wq);
        for (yy, row) in x[..ih * iw].chunks_exact(iw).enumerate() {
            let (ry, i) = ((yy + py) % sy, (yy + py) / sy);
            // Phase (ry, rx)'s row i starts at `base + rx * plane`.
            let base = ry * sx * plane + i * wq;
            match sx {
                1 => phases[base + px..base + px + iw].copy_from_slice(row),
                2 => {
                    // Input column k goes to phase (k + px) % 2 at (k + px) / 2: the pairs
                    // (2t, 2t + 1) to phase px % 2 at t + px / 2 and the other at
                    // t + (px + 1) / 2 (a deinterleave LLVM vectorises).
                    let (r0, r1) = phases[base..base + plane + wq].split_at_mut(plane);
                    let (first, second) = if px % 2 == 0 { (r0, &mut r1[..wq]) } else { (&mut r1[..wq], r0) };
                    let (oa, ob) = (px / 2, px.div_ceil(2));
                    let pairs = row.chunks_exact(2);
                    if let [last] = pairs.remainder() {
                        first[oa + iw / 2] = *last;
                    }
                    for ((a, b), pair) in first[oa..wq].iter_mut().zip(&mut second[ob..wq]).zip(pairs) {
                        *a = pair[0];
                        *b = pair[1];
                    }
                }
                _ => {
                    for (k, &v) in row.iter().enumerate() {
                        let (rx, j) = ((k + px) % sx, (k + px) / sx);
                        phases[base + rx * plane + j] = v;
                    }
                }
            }
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
pub(super) struct Geometry {
    pub(super) input: [usize; 3],
    pub(super) output: [usize; 3],
    pub(super) kernel: [usize; 3],
    pub(super) stride: [usize; 3],
    pub(super) padding: [usize; 3],
    pub(super) dilation: [usize; 3],
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
    grid: PhaseGrid,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    d: [usize; 2],
}

impl DwGeometry {
    fn scratch_len(&self) -> usize {
        self.grid.len() + self.oh * self.grid.wq
    }
}

impl Tiered for DepthwisePlanes<'_> {
    #[inline(always)]
    fn run(&self) {
        let g = self.g;
        let (grid, wq) = (g.grid, g.grid.wq);
        let in_plane = grid.input[0] * grid.input[1];
        // SAFETY: each task owns a disjoint `scratch_len` region of the scratch buffer.
        let buf = unsafe { self.scratch.slice(0, g.scratch_len()) };
        let (ph_buf, acc) = buf.split_at_mut(grid.len());
        let len = (g.oh - 1) * wq + g.ow;
        // Every plane writes the same entries of the phase grid, so the padding entries, zeroed
        // here, stay zero.
        ph_buf.fill(0.0);
        for pl in self.planes.0..self.planes.1 {
            let ch = pl % self.c;
            grid.split(&self.input[pl * in_plane..(pl + 1) * in_plane], ph_buf);
            let acc = &mut acc[..len];
            acc.fill(0.0);
            let w = &self.weight[ch * g.kh * g.kw..(ch + 1) * g.kh * g.kw];
            let base = |ky: usize, kx: usize| grid.tap_offset((ky, kx), g.d);
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
                for (v, &a) in y[oy * g.ow..(oy + 1) * g.ow].iter_mut().zip(&acc[oy * wq..oy * wq + g.ow]) {
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
    let g = DwGeometry {
        grid: PhaseGrid::new([isp[1], isp[2]], [s[1], s[2]], [p[1], p[2]]),
        oh: osp[1],
        ow: osp[2],
        kh: ksp[1],
        kw: ksp[2],
        d: [d[1], d[2]],
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
