//! The register-blocked microkernels of the f32 GEMM ([`super::gemm`]): one output tile of up to
//! `MR x NR` elements, `kc` steps of `acc = fma(a, b, acc)`, each vector lane one output element.
//!
//! * AVX-512: 8 rows x 48 columns (3 zmm per row, 24 accumulators).
//! * AVX2 + FMA: 6 rows x 16 columns (2 ymm per row, 12 accumulators).
//!
//! Each tier is compiled once per tile shape (rows x vectors) so edge tiles run only the vectors
//! they need; columns past the tile's end are masked out of the output's load and store.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::Isa;

/// One output tile.
pub(crate) struct Tile {
    /// K steps.
    pub kc: usize,
    /// A: element `(i, p)` of the tile's rows at `a + i * a_row + p * a_step` (a packed panel:
    /// `a_row = 1`, `a_step = MR`; or A itself when its columns are contiguous).
    pub a: *const f32,
    /// Distance between A's rows.
    pub a_row: usize,
    /// Distance between A's K steps.
    pub a_step: usize,
    /// Packed B panel: `kc` steps of `NR` values (columns past `cols` are zero).
    pub b: *const f32,
    /// The tile's first output element; rows are `ldc` apart.
    pub c: *mut f32,
    /// Output row stride.
    pub ldc: usize,
    /// Live rows, 1..=MR.
    pub rows: usize,
    /// Live columns, 1..=NR.
    pub cols: usize,
    /// Start from the output's values instead of 0.
    pub accumulate: bool,
}

/// A microkernel for one tile shape.
type TileFn = unsafe fn(&Tile);

/// A vector tier's microkernels, indexed by `(rows - 1) * vectors + (vectors needed - 1)`.
pub(crate) struct Tier {
    /// Rows per tile.
    pub mr: usize,
    /// Columns per tile.
    pub nr: usize,
    lanes: usize,
    kernels: &'static [TileFn],
}

impl Tier {
    /// The microkernels of `isa`, or `None` for the scalar tier. Never returns a tier the CPU
    /// lacks, which is what makes [`Tier::run`] sound.
    pub(crate) fn for_isa(isa: Isa) -> Option<&'static Tier> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa.is_supported() => Some(&x86::AVX2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni if isa.is_supported() => Some(&x86::AVX512),
            _ => None,
        }
    }

    /// Computes `tile`.
    ///
    /// # Safety
    /// The tile's `rows x cols` output elements (rows `ldc` apart) must be valid for reads and
    /// writes and touched by no one else meanwhile; A must hold `rows x kc` values at its strides
    /// and the B panel `kc` steps of `nr` values; `1 <= rows <= mr` and `1 <= cols <= nr`.
    pub(crate) unsafe fn run(&self, tile: &Tile) {
        debug_assert!((1..=self.mr).contains(&tile.rows) && (1..=self.nr).contains(&tile.cols));
        let vectors = self.nr / self.lanes;
        let kernel = self.kernels[(tile.rows - 1) * vectors + tile.cols.div_ceil(self.lanes) - 1];
        // SAFETY: `for_isa` hands out a tier only when the CPU supports it; the tile is valid by
        // this function's contract.
        unsafe { kernel(tile) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Tier, Tile, TileFn};
    use crate::masks::mask16;

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

    pub(super) static AVX512: Tier = Tier {
        mr: AVX512_MR,
        nr: AVX512_NR,
        lanes: 16,
        kernels: shapes!(avx512, [1 2 3 4 5 6 7 8], [1 2 3]),
    };

    pub(super) static AVX2: Tier =
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
            // SAFETY: the B panel holds `kc` steps of 48 >= 16 NV values.
            let bv: [__m512; NV] = std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b.add(16 * v)) });
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: A holds ROWS rows of `kc` steps at its strides.
                let ai = _mm512_set1_ps(unsafe { *a.add(i * t.a_row) });
                for (x, &bj) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(ai, bj, *x);
                }
            }
            a = a.wrapping_add(t.a_step);
            b = b.wrapping_add(AVX512_NR);
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
            // SAFETY: the B panel holds `kc` steps of 16 >= 8 NV values.
            let bv: [__m256; NV] = std::array::from_fn(|v| unsafe { _mm256_loadu_ps(b.add(8 * v)) });
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: A holds ROWS rows of `kc` steps at its strides.
                let ai = _mm256_set1_ps(unsafe { *a.add(i * t.a_row) });
                for (x, &bj) in row.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(ai, bj, *x);
                }
            }
            a = a.wrapping_add(t.a_step);
            b = b.wrapping_add(AVX2_NR);
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                // SAFETY: as for the load.
                unsafe {
                    if full {
                        _mm256_storeu_ps(at(i, v), x)
                    } else {
                        _mm256_maskstore_ps(at(i, v), masks[v], x)
                    }
                }
            }
        }
    }
}
