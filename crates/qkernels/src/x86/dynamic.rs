//! The vector tiers of dynamic quantization (`crate::dynamic`): min / max with a NaN / ±Inf flag
//! (over a prefix, whose length they return; the caller finishes with the scalar rule), and the
//! fp16-weight GEMM (`vcvtph2ps`, fused multiply-add chains per K block, block sums added in
//! order). The quantize itself is `crate::x86::quant`'s.

/// Columns of one packed fp16 panel.
const NR: usize = 16;

/// Folds lane values into `(lo, hi, bad)` with the scalar comparisons.
fn fold(lo: &[f32], hi: &[f32], bad: &[f32]) -> (f32, f32, f32) {
    let (mut l, mut h, mut s) = (lo[0], hi[0], 0.0f32);
    for i in 0..lo.len() {
        l = if lo[i] < l { lo[i] } else { l };
        h = if hi[i] > h { hi[i] } else { h };
        s += bad[i];
    }
    (l, h, s)
}

/// Writes the first `cols` of 16 block sums at `out` (a full panel, or the last partial one): the
/// first K block stores them, later blocks add them to what is there (FBGEMM's `beta = 1` for
/// every block after the first).
///
/// # Safety
/// `out` is readable and writable for `cols <= 16` floats.
#[inline(always)]
unsafe fn store_block(out: *mut f32, vals: &[f32; NR], cols: usize, first: bool) {
    for (j, &v) in vals.iter().enumerate().take(cols) {
        // SAFETY: j < cols, guaranteed writable by the caller.
        unsafe {
            let o = out.add(j);
            *o = if first { v } else { *o + v };
        }
    }
}

/// The fp16 GEMM driver shared by the tiers, over the panels `$panels` (a range; threads take
/// disjoint ranges, and each output's order of operations does not depend on them). K is cut
/// into blocks of `$kb` (FBGEMM's
/// blocks: each block's sums start from zero and are added to the output, which holds the sum of
/// the blocks before); within a block each group of `NP` panels (weights that stay in cache)
/// meets every row tile of `MR` rows. `tile::<MR, NP>(x, i, k, n, data, p, out, k0, k1)` computes
/// one tile of one block. Row tiles have `$rows` (8 or 4) rows, then 4, then 1; `$big` is the
/// panel count of multi-row tiles, `$one` that of single rows.
macro_rules! f16_driver {
    ($tile:ident, $rows:expr, $big:expr, $one:expr, $x:expr, $m:expr, $k:expr, $kb:expr, $n:expr, $data:expr, $out:expr, $panels:expr) => {{
        let (x, m, k, kb, n, data, out) = ($x, $m, $k, $kb, $n, $data, $out);
        let (first_panel, panels) = ($panels.start, $panels.end);
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + kb).min(k);
            let mut p = first_panel;
            while p < panels {
                // Groups of 4 panels for single rows, 2 (32 KiB of a K block: L1) for more.
                let group = if m >= 4 { 2 } else { 4 };
                let np = if panels - p >= group {
                    group
                } else if panels - p >= 2 {
                    2
                } else {
                    1
                };
                let mut i = 0;
                while i < m {
                    let rows = if m - i >= $rows {
                        $rows
                    } else if m - i >= 4 {
                        4
                    } else {
                        1
                    };
                    let widest: usize = if rows > 1 { $big } else { $one };
                    let mut q = 0;
                    while q < np {
                        let w = (np - q).min(widest);
                        // SAFETY: rows i..i + rows of x (k floats each) and of out (n floats
                        // each) exist; panels p + q..p + q + w lie in `data` (k * 16 halves
                        // each); k0 < k1 <= k.
                        unsafe {
                            match (rows, w) {
                                (8, 2) => $tile::<8, 2>(x, i, k, n, data, p + q, out, k0, k1),
                                (8, _) => $tile::<8, 1>(x, i, k, n, data, p + q, out, k0, k1),
                                (4, 2) => $tile::<4, 2>(x, i, k, n, data, p + q, out, k0, k1),
                                (4, _) => $tile::<4, 1>(x, i, k, n, data, p + q, out, k0, k1),
                                (_, 4) => $tile::<1, 4>(x, i, k, n, data, p + q, out, k0, k1),
                                (_, 2) => $tile::<1, 2>(x, i, k, n, data, p + q, out, k0, k1),
                                _ => $tile::<1, 1>(x, i, k, n, data, p + q, out, k0, k1),
                            }
                        }
                        q += w;
                    }
                    i += rows;
                }
                p += np;
            }
            k0 = k1;
        }
    }};
}

/// The min / max routine and the fp16 GEMM of one tier, written once over the tier's helpers:
/// `V` (a vector of `$lanes` floats) with `splat`, `zero`, `load`, `vmin`, `vmax`, `vadd`,
/// `vmul`, `store`, and the 16-column panel `P` with `pzero`, `pload` (16 halves converted),
/// `pfma(a, w, acc)` (`fma(a, w, acc)` lane by lane) and `pstore`.
macro_rules! tier {
    ($features:literal, $lanes:literal, rows: $rows:literal, big: $big:literal, one: $one:literal) => {
        /// Min, max and the NaN / ±Inf flag over the leading multiple of the lane count.
        #[target_feature(enable = $features)]
        pub(crate) fn min_max(x: &[f32]) -> (f32, f32, f32, usize) {
            let n = x.len() / $lanes * $lanes;
            if n == 0 {
                return (x[0], x[0], 0.0, 0);
            }
            let (mut lo, mut hi, mut bad) = (splat(x[0]), splat(x[0]), zero());
            for c in x[..n].chunks_exact($lanes) {
                // SAFETY: the chunk holds one vector of floats.
                let v = unsafe { load(c.as_ptr()) };
                lo = vmin(lo, v);
                hi = vmax(hi, v);
                bad = vadd(bad, vmul(v, zero()));
            }
            let (mut l, mut h, mut b) = ([0f32; $lanes], [0f32; $lanes], [0f32; $lanes]);
            // SAFETY: each array holds one vector of floats.
            unsafe {
                store(l.as_mut_ptr(), lo);
                store(h.as_mut_ptr(), hi);
                store(b.as_mut_ptr(), bad);
            }
            let (l, h, b) = fold(&l, &h, &b);
            (l, h, b, n)
        }

        /// One tile of one K block: `MR` rows from `i`, `NP` panels from `p`, K values `k0..k1`.
        ///
        /// # Safety
        /// As for the driver: the rows and panels exist.
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile<const MR: usize, const NP: usize>(
            x: &[f32],
            i: usize,
            k: usize,
            n: usize,
            data: &[u16],
            p: usize,
            out: *mut f32,
            k0: usize,
            k1: usize,
        ) {
            let mut acc = [[pzero(); NP]; MR];
            let (xp, wp) = (x.as_ptr(), data.as_ptr());
            for kk in k0..k1 {
                let mut w = [pzero(); NP];
                for (q, wq) in w.iter_mut().enumerate() {
                    // SAFETY: panel p + q holds k * 16 halves and kk < k: 16 halves are readable.
                    *wq = unsafe { pload(wp.add(((p + q) * k + kk) * NR)) };
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    // SAFETY: row i + r of x exists and kk < k.
                    let a = splat(unsafe { *xp.add((i + r) * k + kk) });
                    for (q, acc_q) in acc_r.iter_mut().enumerate() {
                        *acc_q = pfma(a, w[q], *acc_q);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (q, acc_q) in acc_r.iter().enumerate() {
                    let vals = pstore(*acc_q);
                    let col = (p + q) * NR;
                    let cols = (n - col).min(NR);
                    // SAFETY: row i + r of `out` holds n floats from col; this call owns panel
                    // p + q's columns.
                    unsafe { store_block(out.add((i + r) * n + col), &vals, cols, k0 == 0) };
                }
            }
        }

        /// The columns of `panels` of `out = x W^T` (no bias) with packed fp16 weights, K blocks
        /// of `kb`, in the scalar code's order.
        ///
        /// # Safety
        /// `out` is valid for `m x n` floats; no other thread touches these panels' columns.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn gemm_f16(
            x: &[f32],
            m: usize,
            k: usize,
            kb: usize,
            n: usize,
            data: &[u16],
            out: *mut f32,
            panels: std::ops::Range<usize>,
        ) {
            f16_driver!(tile, $rows, $big, $one, x, m, k, kb, n, data, out, panels)
        }
    };
}

/// AVX2 + FMA + F16C (the fp16 GEMM runs here only when F16C is present; `min_max` never uses it).
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{NR, fold, store_block};

    type V = __m256;
    /// A 16-column panel: two vectors.
    type P = [__m256; 2];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn splat(v: f32) -> V {
        _mm256_set1_ps(v)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn zero() -> V {
        _mm256_setzero_ps()
    }
    /// # Safety
    /// 8 floats are readable at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f32) -> V {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm256_loadu_ps(p) }
    }
    /// # Safety
    /// 8 floats are writable at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store(p: *mut f32, v: V) {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn vmin(a: V, b: V) -> V {
        _mm256_min_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn vmax(a: V, b: V) -> V {
        _mm256_max_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn vadd(a: V, b: V) -> V {
        _mm256_add_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn vmul(a: V, b: V) -> V {
        _mm256_mul_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pzero() -> P {
        [_mm256_setzero_ps(); 2]
    }
    /// # Safety
    /// 16 halves are readable at `h`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pload(h: *const u16) -> P {
        // SAFETY: guaranteed by the caller.
        unsafe {
            [_mm256_cvtph_ps(_mm_loadu_si128(h.cast())), _mm256_cvtph_ps(_mm_loadu_si128(h.add(8).cast()))]
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pfma(a: V, w: P, acc: P) -> P {
        [_mm256_fmadd_ps(a, w[0], acc[0]), _mm256_fmadd_ps(a, w[1], acc[1])]
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pstore(v: P) -> [f32; NR] {
        let mut out = [0f32; NR];
        // SAFETY: 16 floats in `out`.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), v[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), v[1]);
        }
        out
    }

    tier!("avx2,fma,f16c", 8, rows: 4, big: 1, one: 2);
}

/// AVX-512 F/BW/VL/DQ.
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{NR, fold, store_block};

    type V = __m512;
    /// A 16-column panel: one vector.
    type P = __m512;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn splat(v: f32) -> V {
        _mm512_set1_ps(v)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn zero() -> V {
        _mm512_setzero_ps()
    }
    /// # Safety
    /// 16 floats are readable at `p`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    unsafe fn load(p: *const f32) -> V {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm512_loadu_ps(p) }
    }
    /// # Safety
    /// 16 floats are writable at `p`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    unsafe fn store(p: *mut f32, v: V) {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn vmin(a: V, b: V) -> V {
        _mm512_min_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn vmax(a: V, b: V) -> V {
        _mm512_max_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn vadd(a: V, b: V) -> V {
        _mm512_add_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn vmul(a: V, b: V) -> V {
        _mm512_mul_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn pzero() -> P {
        _mm512_setzero_ps()
    }
    /// # Safety
    /// 16 halves are readable at `h`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    unsafe fn pload(h: *const u16) -> P {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(h.cast())) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn pfma(a: V, w: P, acc: P) -> P {
        _mm512_fmadd_ps(a, w, acc)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn pstore(v: P) -> [f32; NR] {
        let mut out = [0f32; NR];
        // SAFETY: 16 floats in `out`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    tier!("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma", 16, rows: 8, big: 2, one: 4);
}
