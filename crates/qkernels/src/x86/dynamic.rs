//! The vector tiers of dynamic quantization (`crate::dynamic`): min / max with a NaN / ±Inf flag
//! (the quantize itself is `crate::x86::quant`'s), and the fp16-weight GEMM (`vcvtph2ps`, fused multiply-add chains per K block of
//! [`F16_K_BLOCK`], block sums added in order). Each min / max and quantize routine handles a
//! prefix and returns its length; the caller finishes with the scalar rule.

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

/// Stores the first `cols` of 16 results at `out` (a full panel, or the last partial one).
///
/// # Safety
/// `out` is writable for `cols <= 16` floats.
#[inline(always)]
unsafe fn store_cols(out: *mut f32, vals: &[f32; NR], cols: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), out, cols) }
}

/// The fp16 GEMM driver shared by the tiers: row tiles of 4 (then 1) rows, panel groups of `NP`
/// (then 1); `tile(x_row0, panel0, rows, panels)` computes one tile.
macro_rules! f16_driver {
    ($tile:ident, $x:expr, $m:expr, $k:expr, $n:expr, $data:expr, $out:expr) => {{
        let (x, m, k, n, data, out) = ($x, $m, $k, $n, $data, $out);
        let panels = n.div_ceil(NR);
        let mut i = 0;
        while i < m {
            let rows = if m - i >= 4 { 4 } else { 1 };
            let mut p = 0;
            while p < panels {
                let np = if rows == 1 && panels - p >= 4 { 4 } else if panels - p >= 2 { 2 } else { 1 };
                // SAFETY: rows i..i + rows of x (k floats each) and of out (n floats each) exist;
                // panels p..p + np lie in `data` (k * 16 halves each).
                unsafe {
                    match (rows, np) {
                        (4, 2) => $tile::<4, 2>(x, i, k, n, data, p, out),
                        (4, _) => $tile::<4, 1>(x, i, k, n, data, p, out),
                        (_, 4) => $tile::<1, 4>(x, i, k, n, data, p, out),
                        (_, 2) => $tile::<1, 2>(x, i, k, n, data, p, out),
                        _ => $tile::<1, 1>(x, i, k, n, data, p, out),
                    }
                }
                p += np;
            }
            i += rows;
        }
    }};
}

/// AVX2 + FMA (+ F16C for the fp16 GEMM).
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{F16_K_BLOCK, NR, fold, store_cols};

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

    /// One tile: `MR` rows from `i`, `NP` panels from `p`.
    ///
    /// # Safety
    /// As for the driver: the rows and panels exist; F16C is present.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const MR: usize, const NP: usize>(
        x: &[f32],
        i: usize,
        k: usize,
        n: usize,
        data: &[u16],
        p: usize,
        out: &mut [f32],
    ) {
        let mut c = [[[_mm256_setzero_ps(); 2]; NP]; MR];
        let mut k0 = 0;
        while k0 < k {
            let kend = (k0 + F16_K_BLOCK).min(k);
            let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
            for kk in k0..kend {
                let mut w = [[_mm256_setzero_ps(); 2]; NP];
                for (q, wq) in w.iter_mut().enumerate() {
                    // SAFETY: panel p + q holds k * 16 halves; kk < k.
                    let h = unsafe { data.as_ptr().add(((p + q) * k + kk) * NR) };
                    // SAFETY: 16 halves (32 bytes) at h.
                    unsafe {
                        wq[0] = _mm256_cvtph_ps(_mm_loadu_si128(h.cast()));
                        wq[1] = _mm256_cvtph_ps(_mm_loadu_si128(h.add(8).cast()));
                    }
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_ps(x[(i + r) * k + kk]);
                    for (q, acc_q) in acc_r.iter_mut().enumerate() {
                        acc_q[0] = _mm256_fmadd_ps(a, w[q][0], acc_q[0]);
                        acc_q[1] = _mm256_fmadd_ps(a, w[q][1], acc_q[1]);
                    }
                }
            }
            for r in 0..MR {
                for q in 0..NP {
                    for h in 0..2 {
                        c[r][q][h] = if k0 == 0 { acc[r][q][h] } else { _mm256_add_ps(c[r][q][h], acc[r][q][h]) };
                    }
                }
            }
            k0 = kend;
        }
        for (r, c_r) in c.iter().enumerate() {
            for (q, c_q) in c_r.iter().enumerate() {
                let col = (p + q) * NR;
                let mut vals = [0f32; NR];
                // SAFETY: 16 floats in `vals`; the row of `out` holds n floats from col.
                unsafe {
                    _mm256_storeu_ps(vals.as_mut_ptr(), c_q[0]);
                    _mm256_storeu_ps(vals.as_mut_ptr().add(8), c_q[1]);
                    store_cols(out.as_mut_ptr().add((i + r) * n + col), &vals, (n - col).min(NR));
                }
            }
        }
    }

    /// `out = x W^T` (no bias) with packed fp16 weights, in the scalar code's order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn gemm_f16(x: &[f32], m: usize, k: usize, n: usize, data: &[u16], out: &mut [f32]) {
        f16_driver!(tile, x, m, k, n, data, out)
    }
}

/// AVX-512 F/BW/VL/DQ.
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{F16_K_BLOCK, NR, fold, store_cols};

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

    /// One tile: `MR` rows from `i`, `NP` panels from `p`.
    ///
    /// # Safety
    /// As for the driver: the rows and panels exist.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    unsafe fn tile<const MR: usize, const NP: usize>(
        x: &[f32],
        i: usize,
        k: usize,
        n: usize,
        data: &[u16],
        p: usize,
        out: &mut [f32],
    ) {
        let mut c = [[_mm512_setzero_ps(); NP]; MR];
        let mut k0 = 0;
        while k0 < k {
            let kend = (k0 + F16_K_BLOCK).min(k);
            let mut acc = [[_mm512_setzero_ps(); NP]; MR];
            for kk in k0..kend {
                let mut w = [_mm512_setzero_ps(); NP];
                for (q, wq) in w.iter_mut().enumerate() {
                    // SAFETY: panel p + q holds k * 16 halves; kk < k: 32 bytes are readable.
                    *wq = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(data.as_ptr().add(((p + q) * k + kk) * NR).cast())) };
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(x[(i + r) * k + kk]);
                    for (q, acc_q) in acc_r.iter_mut().enumerate() {
                        *acc_q = _mm512_fmadd_ps(a, w[q], *acc_q);
                    }
                }
            }
            for r in 0..MR {
                for q in 0..NP {
                    c[r][q] = if k0 == 0 { acc[r][q] } else { _mm512_add_ps(c[r][q], acc[r][q]) };
                }
            }
            k0 = kend;
        }
        for (r, c_r) in c.iter().enumerate() {
            for (q, c_q) in c_r.iter().enumerate() {
                let col = (p + q) * NR;
                let mut vals = [0f32; NR];
                // SAFETY: 16 floats in `vals`; the row of `out` holds n floats from col.
                unsafe {
                    _mm512_storeu_ps(vals.as_mut_ptr(), *c_q);
                    store_cols(out.as_mut_ptr().add((i + r) * n + col), &vals, (n - col).min(NR));
                }
            }
        }
    }

    /// `out = x W^T` (no bias) with packed fp16 weights, in the scalar code's order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn gemm_f16(x: &[f32], m: usize, k: usize, n: usize, data: &[u16], out: &mut [f32]) {
        f16_driver!(tile, x, m, k, n, data, out)
    }
}
