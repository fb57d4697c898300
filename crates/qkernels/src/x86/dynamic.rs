//! The vector tiers of dynamic quantization (`crate::dynamic`): min / max with a NaN / ±Inf flag
//! (over a prefix, whose length they return; the caller finishes with the scalar rule), and the
//! fp16-weight GEMM (`vcvtph2ps`, fused multiply-add chains per K block of [`F16_K_BLOCK`], block
//! sums added in order). The quantize itself is `crate::x86::quant`'s.

use crate::dynamic::F16_K_BLOCK;

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

/// The fp16 GEMM driver shared by the tiers. K is cut into blocks of [`F16_K_BLOCK`] (FBGEMM's
/// blocks: each block's sums start from zero and are added to the output, which holds the sum of
/// the blocks before); within a block each group of `NP` panels (weights that stay in cache)
/// meets every row tile of `MR` rows. `tile::<MR, NP>(x, i, k, n, data, p, out, k0, k1)` computes
/// one tile of one block. Row tiles have `$rows` (8 or 4) rows, then 4, then 1; `$big` is the
/// panel count of multi-row tiles, `$one` that of single rows.
macro_rules! f16_driver {
    ($tile:ident, $rows:expr, $big:expr, $one:expr, $x:expr, $m:expr, $k:expr, $n:expr, $data:expr, $out:expr) => {{
        let (x, m, k, n, data, out) = ($x, $m, $k, $n, $data, $out);
        let panels = n.div_ceil(NR);
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + F16_K_BLOCK).min(k);
            let mut p = 0;
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

/// AVX2 + FMA (+ F16C for the fp16 GEMM).
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{F16_K_BLOCK, NR, fold, store_block};

    /// Min, max and the NaN / ±Inf flag over the leading multiple of 8 elements.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn min_max(x: &[f32]) -> (f32, f32, f32, usize) {
        let n = x.len() / 8 * 8;
        if n == 0 {
            return (x[0], x[0], 0.0, 0);
        }
        let (mut lo, mut hi, mut bad) = (_mm256_set1_ps(x[0]), _mm256_set1_ps(x[0]), _mm256_setzero_ps());
        for c in x[..n].chunks_exact(8) {
            // SAFETY: the chunk holds 8 floats.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
            bad = _mm256_add_ps(bad, _mm256_sub_ps(v, v));
        }
        let (mut l, mut h, mut b) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        // SAFETY: each array holds 8 floats.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
            _mm256_storeu_ps(b.as_mut_ptr(), bad);
        }
        let (l, h, b) = fold(&l, &h, &b);
        (l, h, b, n)
    }

    /// One tile of one K block: `MR` rows from `i`, `NP` panels from `p`, K values `k0..k1`.
    ///
    /// # Safety
    /// As for the driver: the rows and panels exist; F16C is present.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NP: usize>(
        x: &[f32],
        i: usize,
        k: usize,
        n: usize,
        data: &[u16],
        p: usize,
        out: &mut [f32],
        k0: usize,
        k1: usize,
    ) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
        let (xp, wp) = (x.as_ptr(), data.as_ptr());
        for kk in k0..k1 {
            let mut w = [[_mm256_setzero_ps(); 2]; NP];
            for (q, wq) in w.iter_mut().enumerate() {
                // SAFETY: panel p + q holds k * 16 halves and kk < k: 32 bytes at h are readable.
                unsafe {
                    let h = wp.add(((p + q) * k + kk) * NR);
                    wq[0] = _mm256_cvtph_ps(_mm_loadu_si128(h.cast()));
                    wq[1] = _mm256_cvtph_ps(_mm_loadu_si128(h.add(8).cast()));
                }
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: row i + r of x exists and kk < k.
                let a = _mm256_set1_ps(unsafe { *xp.add((i + r) * k + kk) });
                for (q, acc_q) in acc_r.iter_mut().enumerate() {
                    acc_q[0] = _mm256_fmadd_ps(a, w[q][0], acc_q[0]);
                    acc_q[1] = _mm256_fmadd_ps(a, w[q][1], acc_q[1]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (q, acc_q) in acc_r.iter().enumerate() {
                let mut vals = [0f32; NR];
                // SAFETY: 16 floats in `vals`.
                unsafe {
                    _mm256_storeu_ps(vals.as_mut_ptr(), acc_q[0]);
                    _mm256_storeu_ps(vals.as_mut_ptr().add(8), acc_q[1]);
                }
                let col = (p + q) * NR;
                let cols = (n - col).min(NR);
                // SAFETY: row i + r of `out` holds n floats from col.
                unsafe { store_block(out.as_mut_ptr().add((i + r) * n + col), &vals, cols, k0 == 0) };
            }
        }
    }

    /// `out = x W^T` (no bias) with packed fp16 weights, in the scalar code's order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn gemm_f16(x: &[f32], m: usize, k: usize, n: usize, data: &[u16], out: &mut [f32]) {
        f16_driver!(tile, 4, 1, 2, x, m, k, n, data, out)
    }
}

/// AVX-512 F/BW/VL/DQ.
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{F16_K_BLOCK, NR, fold, store_block};

    /// Min, max and the NaN / ±Inf flag over the leading multiple of 16 elements.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn min_max(x: &[f32]) -> (f32, f32, f32, usize) {
        let n = x.len() / 16 * 16;
        if n == 0 {
            return (x[0], x[0], 0.0, 0);
        }
        let (mut lo, mut hi, mut bad) = (_mm512_set1_ps(x[0]), _mm512_set1_ps(x[0]), _mm512_setzero_ps());
        for c in x[..n].chunks_exact(16) {
            // SAFETY: the chunk holds 16 floats.
            let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            bad = _mm512_add_ps(bad, _mm512_sub_ps(v, v));
        }
        let (mut l, mut h, mut b) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        // SAFETY: each array holds 16 floats.
        unsafe {
            _mm512_storeu_ps(l.as_mut_ptr(), lo);
            _mm512_storeu_ps(h.as_mut_ptr(), hi);
            _mm512_storeu_ps(b.as_mut_ptr(), bad);
        }
        let (l, h, b) = fold(&l, &h, &b);
        (l, h, b, n)
    }

    /// One tile of one K block: `MR` rows from `i`, `NP` panels from `p`, K values `k0..k1`.
    ///
    /// # Safety
    /// As for the driver: the rows and panels exist.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NP: usize>(
        x: &[f32],
        i: usize,
        k: usize,
        n: usize,
        data: &[u16],
        p: usize,
        out: &mut [f32],
        k0: usize,
        k1: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        let (xp, wp) = (x.as_ptr(), data.as_ptr());
        for kk in k0..k1 {
            let mut w = [_mm512_setzero_ps(); NP];
            for (q, wq) in w.iter_mut().enumerate() {
                // SAFETY: panel p + q holds k * 16 halves and kk < k: 32 bytes are readable.
                *wq = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(((p + q) * k + kk) * NR).cast())) };
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: row i + r of x exists and kk < k.
                let a = _mm512_set1_ps(unsafe { *xp.add((i + r) * k + kk) });
                for (q, acc_q) in acc_r.iter_mut().enumerate() {
                    *acc_q = _mm512_fmadd_ps(a, w[q], *acc_q);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (q, acc_q) in acc_r.iter().enumerate() {
                let mut vals = [0f32; NR];
                // SAFETY: 16 floats in `vals`.
                unsafe { _mm512_storeu_ps(vals.as_mut_ptr(), *acc_q) };
                let col = (p + q) * NR;
                let cols = (n - col).min(NR);
                // SAFETY: row i + r of `out` holds n floats from col.
                unsafe { store_block(out.as_mut_ptr().add((i + r) * n + col), &vals, cols, k0 == 0) };
            }
        }
    }

    /// `out = x W^T` (no bias) with packed fp16 weights, in the scalar code's order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn gemm_f16(x: &[f32], m: usize, k: usize, n: usize, data: &[u16], out: &mut [f32]) {
        f16_driver!(tile, 8, 2, 4, x, m, k, n, data, out)
    }
}
