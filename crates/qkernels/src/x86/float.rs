//! The f32 GEMM microkernels of the x86 tiers (`crate::float::microkernel` describes the
//! [`Tier`] table they fill):
//!
//! * AVX-512: 8 rows x 48 columns (3 zmm per row, 24 accumulators).
//! * AVX2 + FMA: 6 rows x 16 columns (2 ymm per row, 12 accumulators).

use std::arch::x86_64::*;

use crate::float::microkernel::{Tier, Tile, TileFn};
use crate::x86::masks::mask16;

const AVX512_MR: usize = 8;
const AVX512_NR: usize = 48;
const AVX2_MR: usize = 6;
const AVX2_NR: usize = 16;

macro_rules! shapes {
    ($kernel:ident, [$($rows:literal)*], $vectors:tt) => {
        [$(shapes!(@row $kernel, $rows, $vectors)),*].as_flattened()
    };
    (@row $kernel:ident, $rows:literal, [$($v:literal)*]) => {
        [$($kernel::<$rows, $v> as TileFn),*]
    };
}

/// The AVX-512 tier: 8 x 48 tiles.
pub(crate) static AVX512: Tier =
    Tier { mr: AVX512_MR, nr: AVX512_NR, lanes: 16, kernels: shapes!(avx512, [1 2 3 4 5 6 7 8], [1 2 3]) };

/// The AVX2 + FMA tier: 6 x 16 tiles.
pub(crate) static AVX2: Tier =
    Tier { mr: AVX2_MR, nr: AVX2_NR, lanes: 8, kernels: shapes!(avx2, [1 2 3 4 5 6], [1 2]) };

/// `ROWS x (16 NV)` tile with AVX-512F.
///
/// # Safety
/// AVX-512F and FMA are available, and the tile is valid (see [`Tier::run`]) with
/// `cols <= 16 NV`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512<const ROWS: usize, const NV: usize>(t: &Tile) {
    let masks: [__mmask16; NV] = std::array::from_fn(|v| mask16(t.cols.saturating_sub(16 * v)));
    let at = |i: usize, v: usize| t.c.wrapping_add(i * t.ldc + 16 * v);
    let mut acc = [[_mm512_setzero_ps(); NV]; ROWS];
    if t.accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                // SAFETY: the mask keeps the lanes inside the tile's row; masked-off lanes are
                // not accessed.
                *x = unsafe { _mm512_maskz_loadu_ps(masks[v], at(i, v)) };
            }
        }
    }
    let (mut a, mut b) = (t.a, t.b);
    for _ in 0..t.kc {
        // SAFETY: B holds `kc` steps of `cols` values; the mask keeps the lanes inside them.
        let bv: [__m512; NV] =
            std::array::from_fn(|v| unsafe { _mm512_maskz_loadu_ps(masks[v], b.add(16 * v)) });
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: A holds ROWS rows of `kc` steps at its strides.
            let ai = _mm512_set1_ps(unsafe { *a.add(i * t.a_row) });
            for (x, &bj) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(ai, bj, *x);
            }
        }
        a = a.wrapping_add(t.a_step);
        b = b.wrapping_add(t.b_step);
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            // SAFETY: as for the load.
            unsafe { _mm512_mask_storeu_ps(at(i, v), masks[v], x) };
        }
    }
}

/// `ROWS x (8 NV)` tile with AVX2 and FMA.
///
/// # Safety
/// AVX2 and FMA are available, and the tile is valid (see [`Tier::run`]) with `cols <= 8 NV`.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<const ROWS: usize, const NV: usize>(t: &Tile) {
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; NV] = std::array::from_fn(|v| {
        let live = t.cols.saturating_sub(8 * v).min(8) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(live), lane)
    });
    let full = t.cols == 8 * NV;
    let at = |i: usize, v: usize| t.c.wrapping_add(i * t.ldc + 8 * v);
    let mut acc = [[_mm256_setzero_ps(); NV]; ROWS];
    if t.accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                // SAFETY: full tiles have 8 NV columns inside the row; otherwise the mask keeps
                // the lanes inside it and masked-off lanes are not accessed.
                *x = unsafe {
                    if full { _mm256_loadu_ps(at(i, v)) } else { _mm256_maskload_ps(at(i, v), masks[v]) }
                };
            }
        }
    }
    let (mut a, mut b) = (t.a, t.b);
    for _ in 0..t.kc {
        // SAFETY: B holds `kc` steps of `cols` values: full tiles load them all; otherwise the
        // mask keeps the lanes inside them and masked-off lanes are not accessed.
        let bv: [__m256; NV] = std::array::from_fn(|v| unsafe {
            if full { _mm256_loadu_ps(b.add(8 * v)) } else { _mm256_maskload_ps(b.add(8 * v), masks[v]) }
        });
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: A holds ROWS rows of `kc` steps at its strides.
            let ai = _mm256_set1_ps(unsafe { *a.add(i * t.a_row) });
            for (x, &bj) in row.iter_mut().zip(&bv) {
                *x = _mm256_fmadd_ps(ai, bj, *x);
            }
        }
        a = a.wrapping_add(t.a_step);
        b = b.wrapping_add(t.b_step);
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            // SAFETY: as for the load.
            unsafe {
                if full { _mm256_storeu_ps(at(i, v), x) } else { _mm256_maskstore_ps(at(i, v), masks[v], x) }
            }
        }
    }
}
