//! The register-blocked microkernels of the f32 GEMM ([`super::gemm`]): one output tile of up to
//! `MR x NR` elements, `kc` steps of `acc = fma(a, b, acc)`, each vector lane one output element.
//!
//! The tiers themselves (`crate::x86::float`: AVX-512 8 x 48, AVX2 + FMA 6 x 16) are tables of
//! [`TileFn`]s in a [`Tier`]; [`super::gemm`] picks one with `on_tier!`.
//!
//! Each tier is compiled once per tile shape (rows x vectors) so edge tiles run only the vectors
//! they need; columns past the tile's end are masked out of the output's load and store.

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
    /// B: the tile's `cols` columns of `kc` steps, `b_step` apart (a packed panel: `NR`, its
    /// columns past `cols` zero; or B itself, which is not read past `cols`).
    pub b: *const f32,
    /// Distance between B's K steps.
    pub b_step: usize,
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
pub(crate) type TileFn = unsafe fn(&Tile);

/// A vector tier's microkernels, indexed by `(rows - 1) * vectors + (vectors needed - 1)`.
pub(crate) struct Tier {
    /// Rows per tile.
    pub mr: usize,
    /// Columns per tile.
    pub nr: usize,
    /// f32 lanes per vector.
    pub lanes: usize,
    /// The microkernels, indexed as above.
    pub kernels: &'static [TileFn],
}

impl Tier {
    /// Computes `tile`.
    ///
    /// # Safety
    /// The CPU has the tier's target features (the tier came from `on_tier!` behind a supported
    /// tier); the tile's `rows x cols` output elements (rows `ldc` apart) must be valid for reads and
    /// writes and touched by no one else meanwhile; A must hold `rows x kc` values at its strides
    /// and B `kc` steps of `cols` values at its stride; `1 <= rows <= mr` and `1 <= cols <= nr`.
    pub(crate) unsafe fn run(&self, tile: &Tile) {
        debug_assert!((1..=self.mr).contains(&tile.rows) && (1..=self.nr).contains(&tile.cols));
        let vectors = self.nr / self.lanes;
        let kernel = self.kernels[(tile.rows - 1) * vectors + tile.cols.div_ceil(self.lanes) - 1];
        // SAFETY: the CPU supports the tier (this function's contract); the tile is valid by this
        // function's contract.
        unsafe { kernel(tile) }
    }
}
