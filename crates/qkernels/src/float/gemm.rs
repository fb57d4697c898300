//! Single-precision GEMM whose summation order is fixed by construction.
//!
//! Every output element is one sequential chain of fused multiply-adds over `k = 0..K` in order,
//! starting from 0 (or from the output's value when accumulating):
//!
//! ```text
//! acc = 0 (or c[i, j]);  for k in 0..K { acc = fma(a[i, k], b[k, j], acc) };  c[i, j] = acc
//! ```
//!
//! Nothing else takes part in the rounding: vector lanes hold distinct output elements (K is
//! never split across lanes, threads or partial sums), K blocks store the running sums in the
//! output and reload them, and the blocking sizes are constants. So the bits are the same on
//! every tier, every CPU and every thread count, and the scalar tier is the oracle:
//! `f32::mul_add` in a triple loop. The vector tiers ([`super::microkernel`]) run register-blocked microkernels
//! on A and B in place where their K steps are contiguous rows / columns, else on packed panels;
//! rayon splits the output into tiles, never K.

use std::ops::Range;

use rayon::prelude::*;

use super::microkernel::{Tier, Tile};
use crate::Isa;
use crate::util::SendPtr;

/// Products above this many multiply-adds run on the rayon pool.
const PAR_GEMM_MACS: usize = 1 << 18;

/// K is processed in blocks of this many steps (the packed panels' depth).
const KC: usize = 256;
/// Output columns per packed block of B.
const NC: usize = 768;

/// A read-only f32 matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// A row-major matrix with leading dimension `ld`.
    pub fn row_major(data: &'a [f32], ld: usize) -> Self {
        Self { data, row_stride: ld, col_stride: 1 }
    }

    /// The transpose of a row-major matrix with leading dimension `ld` (columns are `ld` apart).
    pub fn transposed(data: &'a [f32], ld: usize) -> Self {
        Self { data, row_stride: 1, col_stride: ld }
    }

    /// The number of elements a `rows x cols` view needs (`None` on overflow).
    pub(crate) fn needed(&self, rows: usize, cols: usize) -> Option<usize> {
        if rows == 0 || cols == 0 {
            return Some(0);
        }
        (rows - 1)
            .checked_mul(self.row_stride)?
            .checked_add((cols - 1).checked_mul(self.col_stride)?)?
            .checked_add(1)
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// One GEMM: `c (m x n, row stride ldc) = a (m x k) * b (k x n)`, or `+=` when `accumulate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Matrix<'a>,
    pub b: Matrix<'a>,
    pub accumulate: bool,
}

impl Gemm<'_> {
    /// Runs the product into `c` on `isa` (supported, checked by the caller), on the current
    /// rayon pool when the product is large. Panics if a view is shorter than the shape needs
    /// (callers validate shapes first).
    pub(crate) fn run(&self, c: &mut [f32], ldc: usize, isa: Isa) {
        let &Gemm { m, n, k, .. } = self;
        if m == 0 || n == 0 {
            return;
        }
        let c_len = (m - 1).checked_mul(ldc).and_then(|len| len.checked_add(n));
        assert!(ldc >= n && c_len.is_some_and(|len| len <= c.len()), "gemm: output view out of bounds");
        let parallel = rayon::current_num_threads() > 1 && m * n * k >= PAR_GEMM_MACS;
        match self.checked_tier(isa) {
            Some(tier) => self.blocked(tier, c, ldc, parallel),
            None if parallel => c
                .par_chunks_mut(ldc)
                .take(m)
                .enumerate()
                .for_each(|(i, out)| self.scalar_row(i, &mut out[..n], 0)),
            None => c
                .chunks_mut(ldc)
                .take(m)
                .enumerate()
                .for_each(|(i, out)| self.scalar_row(i, &mut out[..n], 0)),
        }
    }

    /// Columns `cols` of the product, on this thread, into the output at `c` (rows `ldc` apart):
    /// the same values [`Gemm::run`] computes there, so that threads can each run the same
    /// sequence of products on their own columns.
    ///
    /// # Safety
    /// `c` is valid for writes of `m` rows of `ldc` elements (the last row: of `n`), `cols` lies
    /// in `0..n`, and no other thread accesses those columns of the output during the call.
    pub(crate) unsafe fn run_columns(&self, c: SendPtr<f32>, ldc: usize, cols: Range<usize>, isa: Isa) {
        assert!(cols.end <= self.n && ldc >= self.n, "gemm: columns out of bounds");
        if self.m == 0 || cols.is_empty() {
            return;
        }
        match self.checked_tier(isa) {
            Some(tier) => self.block(tier, 0..self.m, cols, c, ldc),
            None => (0..self.m).for_each(|i| {
                // SAFETY: row `i`'s columns `cols` lie inside the output (caller), which only this
                // thread accesses.
                let out = unsafe { c.offset(i * ldc).slice(cols.start, cols.end) };
                self.scalar_row(i, out, cols.start);
            }),
        }
    }

    /// Checks that A and B hold the `m x k` and `k x n` views, and picks the vector tier of
    /// `isa` (`None` for the scalar tier, or when K is 0: the output is then 0, or kept when
    /// accumulating, which [`Gemm::scalar_row`] does).
    fn checked_tier(&self, isa: Isa) -> Option<&'static Tier> {
        let &Gemm { m, n, k, a, b, .. } = self;
        assert!(a.needed(m, k).is_some_and(|len| len <= a.data.len()), "gemm: a out of bounds");
        assert!(b.needed(k, n).is_some_and(|len| len <= b.data.len()), "gemm: b out of bounds");
        // Only a tier the CPU supports, which is what makes `Tier::run` sound.
        on_tier!(
            isa,
            scalar: None,
            avx2: Some(&crate::x86::float::AVX2),
            avx512: Some(&crate::x86::float::AVX512),
        )
        .filter(|_| isa.is_supported() && k > 0)
    }

    /// The scalar tier and oracle for row `i`, columns `j0..j0 + out.len()`:
    /// `out = fma(a[i, p], b[p, cols], out)` for `p` in order, which is the chain of the module
    /// doc for every element.
    fn scalar_row(&self, i: usize, out: &mut [f32], j0: usize) {
        let &Gemm { k, a, b, accumulate, .. } = self;
        let len = out.len();
        if !accumulate {
            out.fill(0.0);
        }
        for p in 0..k {
            let aip = a.at(i, p);
            if b.col_stride == 1 {
                let start = p * b.row_stride + j0;
                for (o, &bv) in out.iter_mut().zip(&b.data[start..start + len]) {
                    *o = aip.mul_add(bv, *o);
                }
            } else {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = aip.mul_add(b.at(p, j0 + j), *o);
                }
            }
        }
    }

    /// The vector tiers: the output split into `parts` tiles (one per thread), each computed by
    /// [`Gemm::block`] in K blocks.
    fn blocked(&self, tier: &'static Tier, c: &mut [f32], ldc: usize, parallel: bool) {
        let (m, n) = (self.m, self.n);
        let cp = SendPtr(c.as_mut_ptr());
        let parts = if parallel { rayon::current_num_threads() } else { 1 };
        let (col_panels, row_panels) = (n.div_ceil(tier.nr), m.div_ceil(tier.mr));
        if parts == 1 {
            self.block(tier, 0..m, 0..n, cp, ldc);
        } else if col_panels >= 2 * parts || col_panels >= row_panels {
            let parts = parts.min(col_panels);
            (0..parts).into_par_iter().for_each(|t| {
                let cols =
                    (t * col_panels / parts * tier.nr)..((t + 1) * col_panels / parts * tier.nr).min(n);
                self.block(tier, 0..m, cols, cp, ldc);
            });
        } else {
            let parts = parts.min(row_panels);
            (0..parts).into_par_iter().for_each(|t| {
                let rows =
                    (t * row_panels / parts * tier.mr)..((t + 1) * row_panels / parts * tier.mr).min(m);
                self.block(tier, rows, 0..n, cp, ldc);
            });
        }
    }

    /// Rows `rows` x columns `cols` of the output: for each K block in order, pack A's rows
    /// (`MR`-row panels) and B's columns (`NR`-column panels, `NC` at a time) unless they are
    /// read in place, and run the microkernel on every tile. Tiles of different tasks are
    /// disjoint.
    fn block(&self, tier: &Tier, rows: Range<usize>, cols: Range<usize>, c: SendPtr<f32>, ldc: usize) {
        let (mr, nr) = (tier.mr, tier.nr);
        let row_panels = rows.len().div_ceil(mr);
        // A with contiguous rows is read in place (one stream per tile row); otherwise packed.
        let a_in_place = self.a.col_stride == 1;
        let a_len = if a_in_place { 0 } else { row_panels * mr * KC };
        // B with contiguous columns is read in place (its K steps a row apart); otherwise packed.
        let b_in_place = self.b.col_stride == 1;
        let b_len = if b_in_place { 0 } else { NC.div_ceil(nr) * nr * KC };
        with_panels(a_len, b_len, |a_pack, b_pack| {
            for p0 in (0..self.k).step_by(KC) {
                let kc = KC.min(self.k - p0);
                if !a_in_place {
                    pack_a(self.a, rows.clone(), p0, kc, mr, a_pack);
                }
                for j0 in cols.clone().step_by(NC) {
                    let j1 = (j0 + NC).min(cols.end);
                    if !b_in_place {
                        pack_b(self.b, j0..j1, p0, kc, nr, b_pack);
                    }
                    for ir in 0..row_panels {
                        let i = rows.start + ir * mr;
                        let (a, a_row, a_step) = if a_in_place {
                            (self.a.data[i * self.a.row_stride + p0..].as_ptr(), self.a.row_stride, 1)
                        } else {
                            (a_pack[ir * mr * kc..].as_ptr(), 1, mr)
                        };
                        for jr in 0..(j1 - j0).div_ceil(nr) {
                            let j = j0 + jr * nr;
                            let (b, b_step) = if b_in_place {
                                (self.b.data[p0 * self.b.row_stride + j..].as_ptr(), self.b.row_stride)
                            } else {
                                (b_pack[jr * nr * kc..].as_ptr(), nr)
                            };
                            let tile = Tile {
                                kc,
                                a,
                                a_row,
                                a_step,
                                b,
                                b_step,
                                c: c.0.wrapping_add(i * ldc + j),
                                ldc,
                                rows: mr.min(rows.end - i),
                                cols: nr.min(j1 - j),
                                accumulate: self.accumulate || p0 > 0,
                            };
                            // SAFETY: the tier is supported (`run` only passes such a tier); the
                            // tile's rows and columns lie inside this task's part of
                            // `c` (checked against its length in `run`), which no other task
                            // writes; A's `rows x kc` block at its strides lies inside `a` (checked
                            // in `run`) or its packed panel, and so does B's `kc x cols` block
                            // (at its row stride, or the packed panel of `kc` steps of `nr`).
                            unsafe { tier.run(&tile) };
                        }
                    }
                }
            }
        });
    }
}

/// `A[rows, p0..p0 + kc]` as panels of `mr` rows: `panel[p * mr + r]`, zero past the last row.
fn pack_a(a: Matrix<'_>, rows: Range<usize>, p0: usize, kc: usize, mr: usize, out: &mut [f32]) {
    for (ir, panel) in out.chunks_exact_mut(mr * kc).take(rows.len().div_ceil(mr)).enumerate() {
        let i0 = rows.start + ir * mr;
        let live = mr.min(rows.end - i0);
        for (p, step) in panel.chunks_exact_mut(mr).enumerate() {
            for (r, v) in step.iter_mut().enumerate() {
                *v = if r < live { a.at(i0 + r, p0 + p) } else { 0.0 };
            }
        }
    }
}

/// `B[p0..p0 + kc, cols]` as panels of `nr` columns: `panel[p * nr + j]`, zero past the last
/// column.
fn pack_b(b: Matrix<'_>, cols: Range<usize>, p0: usize, kc: usize, nr: usize, out: &mut [f32]) {
    for (jr, panel) in out.chunks_exact_mut(nr * kc).take(cols.len().div_ceil(nr)).enumerate() {
        let j0 = cols.start + jr * nr;
        let live = nr.min(cols.end - j0);
        for (p, step) in panel.chunks_exact_mut(nr).enumerate() {
            for (j, v) in step[..live].iter_mut().enumerate() {
                *v = b.at(p0 + p, j0 + j);
            }
            step[live..].fill(0.0);
        }
    }
}

thread_local! {
    static PANELS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's packing buffers for A and B, grown to the given lengths.
fn with_panels(a_len: usize, b_len: usize, f: impl FnOnce(&mut [f32], &mut [f32])) {
    let run = |(a, b): &mut (Vec<f32>, Vec<f32>)| {
        if a.len() < a_len {
            a.resize(a_len, 0.0);
        }
        if b.len() < b_len {
            b.resize(b_len, 0.0);
        }
        f(&mut a[..a_len], &mut b[..b_len]);
    };
    crate::util::with_thread_local(&PANELS, run);
}
