//! The generic loop nests (GEMM block, depthwise rows) written once over [`Tier`], and the
//! [`Kernel`] a call runs: the loops instantiated for one tier (the scalar one here, the x86
//! ones, `#[target_feature]` entry points, in `crate::x86::gemm`).

use std::ops::Range;

use super::tier::{Scalar, Tier};
#[cfg(target_arch = "x86_64")]
use crate::x86::prefetch;

/// Where results go: the output matrix at row 0 of the current block, column 0.
#[derive(Clone, Copy)]
pub(crate) enum OutPtr {
    U8(*mut u8),
    I32(*mut i32),
    F32(*mut f32),
}

impl OutPtr {
    /// The pointer `elements` elements further (wrapping: valid only where it is used).
    pub(crate) fn wrapping_add(self, elements: usize) -> OutPtr {
        match self {
            OutPtr::U8(p) => OutPtr::U8(p.wrapping_add(elements)),
            OutPtr::I32(p) => OutPtr::I32(p.wrapping_add(elements)),
            OutPtr::F32(p) => OutPtr::F32(p.wrapping_add(elements)),
        }
    }
}

/// The output pipeline, per global column `n` (arrays padded by at least 64 past the last column).
#[derive(Clone, Copy)]
pub(crate) struct Epi {
    /// `-a_zp * colsum[n] + K * a_zp * w_zp[n]`, added to the raw accumulator.
    pub col_term: *const i32,
    /// `w_zp[n]`, multiplied by the row sum of A when `Block::rowsums` is not null.
    pub w_zp: *const i32,
    /// Requantization: bias term; dequantization: bias.
    pub bias: *const f32,
    /// Requantization: multiplier; dequantization: `a_scale * w_scale[n]`.
    pub scale: *const f32,
    pub zp: i32,
    /// Floor of the u8 output: `zp` with ReLU, else 0, or the pipeline's range.
    pub lo: i32,
    /// Ceiling of the u8 output: 255, or the pipeline's range.
    pub hi: i32,
    pub relu: bool,
}

/// One block of rows of A against a range of packed weight panels.
pub(crate) struct Block {
    /// Row 0 of the block; row `i` starts at `a + i * lda` and has `k` readable bytes.
    pub a: *const u8,
    pub lda: usize,
    pub rows: usize,
    pub k: usize,
    /// Readable bytes of each row (at least `k`; a scratch buffer's rows up to their stride).
    pub row_bytes: usize,
    /// The first panel of the range; panel `p` starts `p * panel_stride` bytes later and holds
    /// `ceil(k / 4) * NR * 4` bytes.
    pub panels: *const i8,
    pub panel_stride: usize,
    pub npanels: usize,
    /// Global column of the first panel's first column.
    pub n0: usize,
    /// Global column limit: columns at or past it are computed but not stored.
    pub n_end: usize,
    /// Row sums of A per block row (`rows` of them), or null when every weight zero point is 0.
    pub rowsums: *const i32,
    /// Output at block row 0, global column 0, with row stride `ldc`.
    pub out: OutPtr,
    pub ldc: usize,
}

/// Applies the output pipeline to one vector of zero-point-corrected accumulators of global
/// columns `n..n + count` and stores it at element offset `off` of `out`.
///
/// # Safety
/// The tier's features are enabled; `epi`'s arrays hold `n + LANES` elements; `out + off` is
/// writable for `count` elements.
#[inline(always)]
pub(crate) unsafe fn emit<T: Tier>(epi: &Epi, v: T::V, n: usize, out: OutPtr, off: usize, count: usize) {
    // SAFETY: guaranteed by the caller as documented above.
    unsafe {
        match out {
            OutPtr::U8(p) => {
                let bias = T::load_f32(epi.bias.add(n));
                let mult = T::load_f32(epi.scale.add(n));
                T::requant_store_u8(p.add(off), v, bias, mult, epi.zp, epi.lo, epi.hi, count)
            }
            OutPtr::F32(p) => {
                let y = T::dequant(v, T::load_f32(epi.scale.add(n)), T::load_f32(epi.bias.add(n)), epi.relu);
                T::store_f32(p.add(off), y, count)
            }
            OutPtr::I32(p) => T::store_i32(p.add(off), v, count),
        }
    }
}

/// No prefetch hint off x86-64.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn prefetch(_: *const u8) {}

/// How a block's rows are read and stored: block row `v` is row `row(v)` of A (at
/// `a + row(v) * lda`), its K byte `k` (for `k` a multiple of 4, and of 64 on AMX) at `at(k)` from
/// there, with the rest of its group or step after it; it is stored as output row `store(v)`
/// (`None`: computed, not stored).
pub(crate) struct RowMap<R, S, O> {
    pub row: R,
    pub at: S,
    pub store: O,
}

/// A GEMM block's own rows: row `v` of A, K byte `k` at `k`, stored as output row `v`.
pub(crate) fn plain_rows()
-> RowMap<impl Fn(usize) -> usize, impl Fn(usize) -> usize, impl Fn(usize) -> Option<usize>> {
    RowMap { row: |v| v, at: |k| k, store: Some }
}

/// One `MR x (NV * LANES)` tile: rows `row0..row0 + MR` of the block against panel `p`.
///
/// # Safety
/// As for [`mapped_block`], with `row0 + MR <= blk.rows` and `p < blk.npanels`.
#[inline(always)]
unsafe fn tile<T: Tier, const MR: usize, const NV: usize, R, S, O>(
    blk: &Block,
    epi: &Epi,
    map: &RowMap<R, S, O>,
    row0: usize,
    p: usize,
) where
    R: Fn(usize) -> usize,
    S: Fn(usize) -> usize,
    O: Fn(usize) -> Option<usize>,
{
    let lanes = T::LANES;
    let nr = NV * lanes;
    // SAFETY: `p < npanels`, so the panel lies inside the packed weights.
    let bp = unsafe { blk.panels.add(p * blk.panel_stride) };
    // Pointer arithmetic only: rows `row0..row0 + MR` exist in the block.
    let arow: [*const u8; MR] = std::array::from_fn(|i| blk.a.wrapping_add((map.row)(row0 + i) * blk.lda));
    // The accumulators start at the column term (the activation zero point's correction).
    let n = blk.n0 + p * nr;
    // SAFETY: the epilogue arrays are padded past every panel column; features are enabled.
    let init: [T::V; NV] = std::array::from_fn(|j| unsafe { T::load_i32(epi.col_term.add(n + j * lanes)) });
    let mut acc = [init; MR];
    let k4 = blk.k / 4;
    let mut q_start = 0;
    if MR == 1 {
        // One row (a matrix-vector product, such as a recurrent step): its NV accumulator chains
        // alone would wait on the dot product's latency, so four partial sums over interleaved K
        // groups run side by side and are added at the end (wrapping i32: the same result).
        // SAFETY: the tier's features are enabled.
        let zero = unsafe { T::zero() };
        let mut part = [[zero; NV]; 3];
        while q_start + 4 <= k4 {
            if q_start % 16 == 0 {
                prefetch(arow[0].wrapping_add((map.at)(4 * q_start) + 320));
            }
            for u in 0..4 {
                let q = q_start + u;
                // SAFETY: as in the loop below, for groups `q < k4`.
                let b: [T::B; NV] =
                    std::array::from_fn(|j| unsafe { T::prep_b(bp.add((q * nr + j * lanes) * 4)) });
                // SAFETY: the row's group q (K bytes 4q..4q + 4) is readable; features enabled.
                let a = unsafe { T::prep_a(arow[0].add((map.at)(4 * q)).cast::<u32>().read_unaligned()) };
                let sums = if u == 0 { &mut acc[0] } else { &mut part[u - 1] };
                for (sum, &bj) in sums.iter_mut().zip(&b) {
                    // SAFETY: the tier's features are enabled.
                    *sum = unsafe { T::dot(*sum, a, bj) };
                }
            }
            q_start += 4;
        }
        for sums in &part {
            for (total, &v) in acc[0].iter_mut().zip(sums) {
                // SAFETY: the tier's features are enabled.
                *total = unsafe { T::add(*total, v) };
            }
        }
    }
    for q in q_start..k4 {
        let at = (map.at)(4 * q);
        if q % 16 == 0 {
            for &row in &arow {
                prefetch(row.wrapping_add(at + 320));
            }
        }
        // SAFETY: the panel holds ceil(k/4) groups of NR * 4 bytes and q < ceil(k/4).
        let b: [T::B; NV] = std::array::from_fn(|j| unsafe { T::prep_b(bp.add((q * nr + j * lanes) * 4)) });
        for i in 0..MR {
            // SAFETY: the row's group q (K bytes 4q..4q + 4) is readable.
            let x = unsafe { arow[i].add(at).cast::<u32>().read_unaligned() };
            // SAFETY: the tier's features are enabled.
            let a = unsafe { T::prep_a(x) };
            for j in 0..NV {
                // SAFETY: the tier's features are enabled.
                acc[i][j] = unsafe { T::dot(acc[i][j], a, b[j]) };
            }
        }
    }
    let rem = blk.k % 4;
    if rem > 0 {
        // SAFETY: as above, for the last (zero-padded) group of the panel.
        let b: [T::B; NV] = std::array::from_fn(|j| unsafe { T::prep_b(bp.add((k4 * nr + j * lanes) * 4)) });
        let at = (map.at)(4 * k4);
        for i in 0..MR {
            let mut x = 0u32;
            for t in 0..rem {
                // SAFETY: K byte 4 * k4 + t < k of the row is readable.
                x |= u32::from(unsafe { arow[i].add(at + t).read() }) << (8 * t);
            }
            // SAFETY: the tier's features are enabled.
            let a = unsafe { T::prep_a(x) };
            for j in 0..NV {
                // SAFETY: the tier's features are enabled.
                acc[i][j] = unsafe { T::dot(acc[i][j], a, b[j]) };
            }
        }
    }
    let cols = blk.n_end.saturating_sub(n).min(nr);
    for (i, acc_row) in acc.iter().enumerate() {
        if let Some(out_row) = (map.store)(row0 + i) {
            // SAFETY: row0 + i < rows; the rest is forwarded from the caller.
            unsafe { store_row::<T, NV>(blk, epi, row0 + i, out_row, n, acc_row, cols) };
        }
    }
}

/// The output stage of one tile row: `acc` holds the accumulators (column term included) of
/// block row `row`, global columns `n..n + NV * LANES`; subtracts `rowsum * w_zp` when the block
/// has row sums, and emits the first `cols` columns to output row `out_row`.
///
/// # Safety
/// As for [`block`], with `row < blk.rows` and columns `n..n + cols` of output row `out_row`
/// writable.
#[inline(always)]
pub(crate) unsafe fn store_row<T: Tier, const NV: usize>(
    blk: &Block,
    epi: &Epi,
    row: usize,
    out_row: usize,
    n: usize,
    acc: &[T::V; NV],
    cols: usize,
) {
    let lanes = T::LANES;
    // SAFETY: `rowsums`, when not null, holds `rows` entries and row < rows.
    let rowsum = if blk.rowsums.is_null() { None } else { Some(unsafe { blk.rowsums.add(row).read() }) };
    for (j, &v) in acc.iter().enumerate() {
        let c0 = j * lanes;
        if c0 >= cols {
            break;
        }
        let nn = n + c0;
        // SAFETY: the epilogue arrays are padded past every panel column; the output row has
        // `cols - c0` writable elements from column `nn`; the tier's features are enabled.
        unsafe {
            let mut v = v;
            if let Some(s) = rowsum {
                v = T::sub(v, T::mul(T::splat(s), T::load_i32(epi.w_zp.add(nn))));
            }
            emit::<T>(epi, v, nn, blk.out, out_row * blk.ldc + nn, (cols - c0).min(lanes));
        }
    }
}

/// Every tile of a block: panels outer (each panel stays in L1 across the block's rows), row
/// tiles inner, with MR-specialised tiles for the row remainder.
///
/// # Safety
/// The tier's features are enabled; every pointer of `blk` and `epi` is valid as documented on
/// [`Block`] and [`Epi`]; `NV * T::LANES` is the panel width the weights were packed with.
#[inline(always)]
pub(crate) unsafe fn block<T: Tier, const MR: usize, const NV: usize>(blk: &Block, epi: &Epi) {
    // SAFETY: the plain map reads and stores the block's own rows; forwarded from the caller.
    unsafe { mapped_block::<T, MR, NV, _, _, _>(blk, epi, &plain_rows()) }
}

/// An implicit-GEMM convolution block ([`ImplicitRows`]) on a vector tier.
///
/// # Safety
/// As for [`ImplicitFn`], with the tier's features enabled and the weights packed with panels of
/// `NV * T::LANES` columns.
#[inline(always)]
pub(crate) unsafe fn implicit<T: Tier, const MR: usize, const NV: usize>(
    blk: &Block,
    epi: &Epi,
    conv: &ImplicitRows<'_>,
) {
    // SAFETY: the caller guarantees every step of every row readable and the stored rows writable.
    unsafe { mapped_block::<T, MR, NV, _, _, _>(blk, epi, &conv.dense_map()) }
}

/// [`block`] with rows read and stored through `map`.
///
/// # Safety
/// As for [`block`], with `map` addressing readable K bytes of every row and writable output
/// rows.
#[inline(always)]
unsafe fn mapped_block<T: Tier, const MR: usize, const NV: usize, R, S, O>(
    blk: &Block,
    epi: &Epi,
    map: &RowMap<R, S, O>,
) where
    R: Fn(usize) -> usize,
    S: Fn(usize) -> usize,
    O: Fn(usize) -> Option<usize>,
{
    for p in 0..blk.npanels {
        let mut r = 0;
        while r + MR <= blk.rows {
            // SAFETY: rows r..r + MR exist; p < npanels.
            unsafe { tile::<T, MR, NV, R, S, O>(blk, epi, map, r, p) };
            r += MR;
        }
        // SAFETY: exactly `blk.rows - r` (< MR <= 8) rows remain.
        unsafe {
            match blk.rows - r {
                1 => tile::<T, 1, NV, R, S, O>(blk, epi, map, r, p),
                2 => tile::<T, 2, NV, R, S, O>(blk, epi, map, r, p),
                3 => tile::<T, 3, NV, R, S, O>(blk, epi, map, r, p),
                4 if MR > 4 => tile::<T, 4, NV, R, S, O>(blk, epi, map, r, p),
                5 if MR > 5 => tile::<T, 5, NV, R, S, O>(blk, epi, map, r, p),
                6 if MR > 6 => tile::<T, 6, NV, R, S, O>(blk, epi, map, r, p),
                7 if MR > 7 => tile::<T, 7, NV, R, S, O>(blk, epi, map, r, p),
                _ => {}
            }
        }
    }
}

/// A depthwise convolution (one input channel per output channel) over NDHWC input.
pub(crate) struct DwJob {
    pub input: *const u8,
    /// Input `[D, H, W]`, channels `c`.
    pub in_dims: [usize; 3],
    pub c: usize,
    pub out_dims: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub dilation: [usize; 3],
    pub reflect: bool,
    /// `(w - w_zp)` as i32, `[tap][cpad]`, `cpad` a multiple of 16.
    pub weights: *const i32,
    pub cpad: usize,
    pub a_zp: i32,
    /// Output at pixel 0, channel 0 (pixel stride `c`).
    pub out: OutPtr,
}

/// Maps output coordinate `o` and tap `t` of one axis to an input coordinate, or `None` for a
/// zero-padding tap. Reflect padding needs `pad < len` (checked at construction).
#[inline(always)]
pub(crate) fn tap_coord(
    o: usize,
    t: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    len: usize,
    reflect: bool,
) -> Option<usize> {
    let i = (o * stride + t * dil) as isize - pad as isize;
    if i >= 0 && (i as usize) < len {
        Some(i as usize)
    } else if reflect {
        let last = len as isize - 1;
        let r = if i < 0 { -i } else { 2 * last - i };
        Some(r.clamp(0, last) as usize)
    } else {
        None
    }
}

/// The output coordinates of one axis whose taps all fall inside the input: `lo..hi`.
fn interior(out: usize, len: usize, k: usize, s: usize, p: usize, d: usize) -> (usize, usize) {
    let lo = p.div_ceil(s);
    let span = d * (k - 1);
    let hi = if len + p > span { ((len + p - span - 1) / s + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// Interior output pixels `xs..xe` of one output row, channels `c0..c0 + V * LANES` (the last
/// vector holding `count` channels), with `N` taps whose weights stay in registers across the row.
///
/// # Safety
/// Every tap of these pixels lies inside the input (`base` is the first tap's input pixel of
/// output `x = 0`, possibly out of range itself but never dereferenced unless in range);
/// `c0 + V * LANES <= cpad`; the rest as for [`depthwise`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_interior<T: Tier, const N: usize, const V: usize>(
    job: &DwJob,
    epi: &Epi,
    offs: &[usize; N],
    base: *const u8,
    xstep: usize,
    out_row: usize,
    xs: usize,
    xe: usize,
    c0: usize,
    count: usize,
) {
    let lanes = T::LANES;
    // SAFETY: weights hold N x cpad entries with c0 + V * lanes <= cpad; every tap of the pixels
    // xs..xe is an input pixel with `c >= c0 + (V - 1) * lanes + count` channels; the epilogue
    // arrays are padded; the output row holds the pixels' channels; the features are enabled.
    unsafe {
        let w: [[T::V; V]; N] = std::array::from_fn(|t| {
            std::array::from_fn(|v| T::load_i32(job.weights.add(t * job.cpad + c0 + v * lanes)))
        });
        let init: [T::V; V] = std::array::from_fn(|v| T::load_i32(epi.col_term.add(c0 + v * lanes)));
        for x in xs..xe {
            let p = base.wrapping_add(x * xstep + c0);
            let mut acc = init;
            for t in 0..N {
                for v in 0..V {
                    let n = if v + 1 == V { count } else { lanes };
                    let a = T::load_u8(p.add(offs[t] + v * lanes), n);
                    acc[v] = T::add(acc[v], T::mul_u16(a, w[t][v]));
                }
            }
            let out_off = (out_row + x) * job.c + c0;
            for (v, &acc) in acc.iter().enumerate() {
                let n = if v + 1 == V { count } else { lanes };
                emit::<T>(epi, acc, c0 + v * lanes, job.out, out_off + v * lanes, n);
            }
        }
    }
}

/// The interior pixels `xs..xe` of one row, every channel, for `N` taps.
///
/// # Safety
/// As for [`dw_interior`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_interior_row<T: Tier, const N: usize>(
    job: &DwJob,
    epi: &Epi,
    offs: &[usize; N],
    base: *const u8,
    xstep: usize,
    out_row: usize,
    xs: usize,
    xe: usize,
) {
    let lanes = T::LANES;
    let c = job.c;
    let mut c0 = 0;
    // SAFETY: forwarded; every block stays below c <= cpad.
    unsafe {
        if N <= 12 {
            while c0 + 2 * lanes <= c {
                dw_interior::<T, N, 2>(job, epi, offs, base, xstep, out_row, xs, xe, c0, lanes);
                c0 += 2 * lanes;
            }
        }
        while c0 < c {
            let count = (c - c0).min(lanes);
            dw_interior::<T, N, 1>(job, epi, offs, base, xstep, out_row, xs, xe, c0, count);
            c0 += lanes;
        }
    }
}

/// One output pixel with some taps in the padding: sums `(a - a_zp) * (w - w_zp)` over the taps
/// that exist (zero padding) or their mirrors (reflect).
///
/// # Safety
/// As for [`depthwise`].
#[inline(always)]
unsafe fn dw_border<T: Tier>(job: &DwJob, epi: &Epi, coords: [usize; 4], taps: &mut Vec<(usize, usize)>) {
    let [b, z, y, x] = coords;
    let [od, oh, ow] = job.out_dims;
    let [id, ih, iw] = job.in_dims;
    let (c, lanes) = (job.c, T::LANES);
    taps.clear();
    let mut t = 0;
    for kd in 0..job.kernel[0] {
        let zi = tap_coord(z, kd, job.stride[0], job.pad[0], job.dilation[0], id, job.reflect);
        for kh in 0..job.kernel[1] {
            let yi = tap_coord(y, kh, job.stride[1], job.pad[1], job.dilation[1], ih, job.reflect);
            for kw in 0..job.kernel[2] {
                let xi = tap_coord(x, kw, job.stride[2], job.pad[2], job.dilation[2], iw, job.reflect);
                if let (Some(zi), Some(yi), Some(xi)) = (zi, yi, xi) {
                    taps.push(((((b * id + zi) * ih + yi) * iw + xi) * c, t));
                }
                t += 1;
            }
        }
    }
    let out_off = (((b * od + z) * oh + y) * ow + x) * c;
    let mut c0 = 0;
    while c0 < c {
        let count = (c - c0).min(lanes);
        // SAFETY: every tap offset is a pixel of the input, which holds `c` channels from it;
        // the weights hold `cpad >= c0 + lanes` entries per tap; the tier's features are
        // enabled; the output pixel has `c` writable elements.
        unsafe {
            let za = T::splat(job.a_zp);
            let mut acc = T::zero();
            for &(off, t) in taps.iter() {
                let a = T::sub(T::load_u8(job.input.add(off + c0), count), za);
                acc = T::add(acc, T::mul(a, T::load_i32(job.weights.add(t * job.cpad + c0))));
            }
            emit::<T>(epi, acc, c0, job.out, out_off + c0, count);
        }
        c0 += lanes;
    }
}

/// Depthwise rows: output pixels `pixels` (flattened over batch and `out_dims`).
///
/// Interior pixels (every tap inside the input) take the fast path: fixed tap offsets,
/// `col_term[c] + Σ_t a_t * (w_t - w_zp)` with the activation zero point folded into the
/// pipeline's column term (`-a_zp * Σ_t (w_t - w_zp)`), weights held in registers along a row
/// for 3x3 and 5x5 kernels. Border pixels list their valid (or mirrored) taps and sum
/// `(a_t - a_zp) * (w_t - w_zp)`.
///
/// # Safety
/// The tier's features are enabled; `job`'s pointers are valid for the whole tensors they
/// describe; `epi` was built for these weights; `taps` is only scratch.
#[inline(always)]
pub(crate) unsafe fn depthwise<T: Tier>(
    job: &DwJob,
    epi: &Epi,
    pixels: Range<usize>,
    taps: &mut Vec<(usize, usize)>,
) {
    let [od, oh, ow] = job.out_dims;
    let [id, ih, iw] = job.in_dims;
    let c = job.c;
    let ranges: [(usize, usize); 3] = std::array::from_fn(|ax| {
        let len = job.in_dims[ax];
        interior(job.out_dims[ax], len, job.kernel[ax], job.stride[ax], job.pad[ax], job.dilation[ax])
    });
    // Interior tap offsets relative to the pixel's first tap, in tap order.
    // Interior tap offsets for the fast paths (at most 27 taps; larger kernels use the generic
    // per-pixel path), on the stack: no allocation per call.
    const MAX_TAPS: usize = 27;
    let ntaps = job.kernel.iter().product::<usize>();
    let mut offs_buf = [0usize; MAX_TAPS];
    if ntaps <= MAX_TAPS {
        let mut t = 0;
        for kd in 0..job.kernel[0] {
            for kh in 0..job.kernel[1] {
                for kw in 0..job.kernel[2] {
                    offs_buf[t] =
                        ((kd * job.dilation[0] * ih + kh * job.dilation[1]) * iw + kw * job.dilation[2]) * c;
                    t += 1;
                }
            }
        }
    }
    let offs = &offs_buf[..ntaps.min(MAX_TAPS)];
    let xstep = job.stride[2] * c;
    let mut pix = pixels.start;
    while pix < pixels.end {
        let (b, rest) = (pix / (od * oh * ow), pix % (od * oh * ow));
        let (z, y, x) = (rest / (oh * ow), rest / ow % oh, rest % ow);
        let xe = (x + pixels.end - pix).min(ow);
        let row_inside = ranges[0].0 <= z && z < ranges[0].1 && ranges[1].0 <= y && y < ranges[1].1;
        let (ilo, ihi) = if row_inside {
            let (lo, hi) = (ranges[2].0.max(x), ranges[2].1.min(xe));
            if lo < hi { (lo, hi) } else { (xe, xe) }
        } else {
            (xe, xe)
        };
        for xb in (x..ilo).chain(ihi..xe) {
            // SAFETY: forwarded from the caller.
            unsafe { dw_border::<T>(job, epi, [b, z, y, xb], taps) };
        }
        if ilo < ihi {
            let (zi, yi) = (z * job.stride[0] - job.pad[0], y * job.stride[1] - job.pad[1]);
            // The input pixel of output x = 0's first tap; x * xstep - pad_w * c is added per
            // pixel, so start `pad_w * c` bytes before the row (wrapping: never dereferenced).
            let row = (((b * id + zi) * ih + yi) * iw) * c;
            let base = job.input.wrapping_add(row).wrapping_sub(job.pad[2] * c);
            let out_row = pix - x;
            // SAFETY: pixels ilo..ihi are interior, so every tap is inside the input.
            unsafe {
                match ntaps {
                    9 => {
                        let o: &[usize; 9] = offs[..].try_into().unwrap_or(&[0; 9]);
                        dw_interior_row::<T, 9>(job, epi, o, base, xstep, out_row, ilo, ihi)
                    }
                    25 => {
                        let o: &[usize; 25] = offs[..].try_into().unwrap_or(&[0; 25]);
                        dw_interior_row::<T, 25>(job, epi, o, base, xstep, out_row, ilo, ihi)
                    }
                    3 => {
                        let o: &[usize; 3] = offs[..].try_into().unwrap_or(&[0; 3]);
                        dw_interior_row::<T, 3>(job, epi, o, base, xstep, out_row, ilo, ihi)
                    }
                    27 => {
                        let o: &[usize; 27] = offs[..].try_into().unwrap_or(&[0; 27]);
                        dw_interior_row::<T, 27>(job, epi, o, base, xstep, out_row, ilo, ihi)
                    }
                    _ => {
                        for xb in ilo..ihi {
                            dw_border::<T>(job, epi, [b, z, y, xb], taps);
                        }
                    }
                }
            }
        }
        pix += xe - x;
    }
}

/// Runs one GEMM block.
///
/// # Safety
/// The CPU supports the kernel's tier; `blk` and `epi` are valid as documented on their types, and
/// the weights were packed with the kernel's panel width.
pub(crate) type BlockFn = unsafe fn(&Block, &Epi);

/// Runs depthwise output pixels.
///
/// # Safety
/// As for [`BlockFn`], with the job valid as documented on [`DwJob`].
pub(crate) type DepthwiseFn = unsafe fn(&DwJob, &Epi, Range<usize>, &mut Vec<(usize, usize)>);

/// Channel bytes of one K step of an implicit-GEMM convolution: one AMX tile row.
pub(crate) const IMPLICIT_STEP: usize = 64;

/// The rows of an implicit-GEMM convolution block (stride 1, no im2col): `Block::a` holds
/// zero-point-padded input rows of `row_len` pixels of `Block::lda` channel bytes, and the output
/// pixel whose window starts at padded pixel `v` reads K step `s` (64 channel bytes of one kernel
/// tap) at `a + v * lda + step_offsets[s]`, for every pixel alike. The block's rows are its
/// output pixels, `Block::rows` of them (whole output rows of `row_valid` pixels): output pixel
/// `i` starts at padded pixel `(i / row_valid) * row_len + i % row_valid`.
pub(crate) struct ImplicitRows<'a> {
    /// Byte offset of each 64-byte K step from its row's start (`Block::k / 64` of them).
    pub step_offsets: &'a [usize],
    /// Padded input width.
    pub row_len: usize,
    /// Output width.
    pub row_valid: usize,
}

impl ImplicitRows<'_> {
    /// K byte `k`'s offset from its padded pixel.
    fn at(&self, k: usize) -> usize {
        self.step_offsets[k / IMPLICIT_STEP] + k % IMPLICIT_STEP
    }

    /// The output pixels as block rows (for kernels that address each row on its own).
    pub(crate) fn dense_map(
        &self,
    ) -> RowMap<impl Fn(usize) -> usize, impl Fn(usize) -> usize + '_, impl Fn(usize) -> Option<usize>> {
        let (len, valid) = (self.row_len, self.row_valid);
        RowMap { row: move |i| i / valid * len + i % valid, at: move |k| self.at(k), store: Some }
    }

    /// Every padded pixel from the first output pixel's to the last's as a block row, rows `1`
    /// apart (for tiles of evenly spaced rows): of each `row_len` the first `row_valid` are output
    /// pixels, the rest straddle the padded row's end and are computed, not stored. There are
    /// [`Self::padded_rows`] of them.
    pub(crate) fn padded_map(
        &self,
    ) -> RowMap<impl Fn(usize) -> usize, impl Fn(usize) -> usize + '_, impl Fn(usize) -> Option<usize>> {
        let (len, valid) = (self.row_len, self.row_valid);
        RowMap {
            row: |v| v,
            at: move |k| self.at(k),
            store: move |v| (v % len < valid).then(|| v / len * valid + v % len),
        }
    }

    /// The padded pixels spanned by `outputs` output pixels (whole output rows).
    pub(crate) fn padded_rows(&self, outputs: usize) -> usize {
        padded_rows(outputs / self.row_valid, self.row_len, self.row_valid)
    }
}

/// The padded pixels from the first to the last output pixel of `out_rows` output rows of
/// `row_valid` pixels, in padded rows of `row_len` pixels.
pub(crate) fn padded_rows(out_rows: usize, row_len: usize, row_valid: usize) -> usize {
    out_rows.saturating_sub(1) * row_len + row_valid
}

/// Runs one implicit-GEMM convolution block.
///
/// # Safety
/// As for [`BlockFn`], with `Block::rows` a multiple of `row_valid` and at least 16 padded rows
/// ([`ImplicitRows::padded_rows`]), `Block::k` a multiple of 64, no row sums, and every step of
/// every padded row (`a + v * lda + step_offsets[s] .. + 64`) readable.
pub(crate) type ImplicitFn = unsafe fn(&Block, &Epi, &ImplicitRows<'_>);

/// The micro-kernels of one tier (two for AVX2: `vpmaddubsw` where it is exact, and the exact
/// i16 path), chosen once per call by `gemm::kernel_for`.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    /// Rows per tile (`MR`).
    pub mr: usize,
    /// Columns per weight panel (`NR`), which the weights are packed with.
    pub nr: usize,
    /// The packed K of each panel is a multiple of this many bytes (zero-padded): 4 for the
    /// vector tiers, a whole AMX tile row (64) for AMX.
    pub k_block: usize,
    /// One GEMM block.
    pub block: BlockFn,
    /// Depthwise output pixels.
    pub depthwise: DepthwiseFn,
    /// Implicit-GEMM convolution blocks.
    pub implicit: ImplicitFn,
}

impl Kernel {
    /// Runs one GEMM block.
    ///
    /// # Safety
    /// As for [`BlockFn`].
    #[inline]
    pub(crate) unsafe fn block(&self, blk: &Block, epi: &Epi) {
        // SAFETY: forwarded from the caller.
        unsafe { (self.block)(blk, epi) }
    }

    /// Runs depthwise output pixels.
    ///
    /// # Safety
    /// As for [`DepthwiseFn`].
    #[inline]
    pub(crate) unsafe fn depthwise(
        &self,
        job: &DwJob,
        epi: &Epi,
        pixels: Range<usize>,
        taps: &mut Vec<(usize, usize)>,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { (self.depthwise)(job, epi, pixels, taps) }
    }
}

/// The scalar tier: 4 x 4 tiles.
pub(crate) const SCALAR: Kernel = Kernel {
    mr: 4,
    nr: 4,
    k_block: 4,
    block: block::<Scalar, 4, 4>,
    depthwise: depthwise::<Scalar>,
    implicit: implicit::<Scalar, 4, 4>,
};
