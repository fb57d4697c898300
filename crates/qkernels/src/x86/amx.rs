//! The AMX tier of the int8 GEMM: `tdpbusd` on tiles of 16 rows x 64 bytes.
//!
//! A block runs in tiles of 32 rows x 32 columns (one weight panel): two A tiles (16 rows x 64
//! K bytes, loaded straight from the rows of A), two B tiles (16 K groups x 16 columns x 4 bytes
//! of the panel, VNNI's layout read with the panel's 128-byte row stride) and four C tiles of
//! i32 sums. Panels are packed with K zero-padded to a multiple of 64 (`Kernel::k_block`), so the
//! last K step reads whole B tiles; its A bytes come from the rows themselves when they have room
//! (im2col's scratch rows), else from a zero-padded copy of the rows' tails, so no load passes the
//! end of a row. The sums are exact (wrapping i32, as on every tier); the C
//! tiles are stored to a small buffer and go through the VNNI tier's output stage. The rows past
//! the last whole pair of row tiles are covered by tiles ending at the block's last row, which
//! overlap rows already done (recomputed to the same values: integer sums, the same output
//! stage). Blocks of fewer than 16 rows (recurrent steps, say) run the VNNI kernel.
//!
//! Tile registers: `tmm0..tmm3` hold C (`tmm(2 * r + c)` for row tile `r`, column tile `c`),
//! `tmm4`/`tmm5` the A tiles, `tmm6`/`tmm7` the B tiles. The instructions are written with `asm!`
//! (the assembler knows them whatever the target features); each block configures the tiles on
//! its thread and releases them when done. Built with `--cfg qkernels_emulate_amx`, the same code
//! runs on a software model of those instructions instead (`amx_emulated`), so that its tests run
//! on CPUs without AMX.

#[cfg(not(qkernels_emulate_amx))]
use std::arch::asm;

use crate::gemm::kernel::{Block, Epi, ImplicitRows, Kernel, RowMap, plain_rows, store_row};
use crate::gemm::tier::Tier;
use crate::small_copy::{copy_small, fill_small};
use crate::x86::gemm::{Vnni, block_vnni, depthwise_avx512};

/// Rows of a tile.
const TILE_ROWS: usize = 16;
/// Bytes of a tile row: 64 K values of A, 16 K groups x 4 of B, 16 i32 of C.
const TILE_BYTES: usize = 64;
/// Columns per weight panel: two C tiles side by side.
const NR: usize = 32;
/// Bytes per K group row of a panel (`NR` columns x 4).
const PANEL_ROW: usize = NR * 4;

/// AMX: 32 x 32 tiles, K padded to 64.
pub(crate) const AMX: Kernel = Kernel {
    mr: 2 * TILE_ROWS,
    nr: NR,
    k_block: TILE_BYTES,
    block: block_amx,
    depthwise: depthwise_avx512,
    implicit: implicit_amx,
};

/// The tile configuration: palette 1, tiles 0..8 of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        // Bytes per row (`colsb`, u16 at 16 + 2t) and rows (u8 at 48 + t) of tile t.
        c[16 + 2 * t] = TILE_BYTES as u8;
        c[48 + t] = TILE_ROWS as u8;
        t += 1;
    }
    TileConfig(c)
};

/// This thread's tiles, configured; released on drop.
struct Tiles;

impl Tiles {
    /// Loads [`CONFIG`] (which zeroes every tile).
    ///
    /// # Safety
    /// The CPU has AMX-TILE and the OS granted this process the tile data (`Isa::Amx` supported).
    unsafe fn configure() -> Tiles {
        #[cfg(not(qkernels_emulate_amx))]
        // SAFETY: the caller guarantees AMX; `CONFIG` is a valid 64-byte, 64-aligned palette-1
        // configuration, only read.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags))
        };
        #[cfg(qkernels_emulate_amx)]
        crate::x86::amx_emulated::configure(&CONFIG.0);
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(not(qkernels_emulate_amx))]
        // SAFETY: a `Tiles` exists only after `configure` ran on this thread, on an AMX CPU;
        // releasing returns the tiles to their initial state.
        unsafe {
            asm!("tilerelease", options(nostack, nomem, preserves_flags))
        };
        #[cfg(qkernels_emulate_amx)]
        crate::x86::amx_emulated::release();
    }
}

/// `tilezero tmm$t`.
#[cfg(not(qkernels_emulate_amx))]
macro_rules! tile_zero {
    ($t:literal) => {
        asm!(concat!("tilezero tmm", $t), options(nostack, nomem, preserves_flags))
    };
}

/// `tileloadd tmm$t, [p + stride]`: 16 rows of 64 bytes, row `i` at `p + i * stride`.
#[cfg(not(qkernels_emulate_amx))]
macro_rules! tile_load {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack, readonly, preserves_flags),
        )
    };
}

/// `tdpbusd tmm$c, tmm$a, tmm$b`: `C[i][j] += Σ_k u8 A[i][4j'..] * i8 B[k][j]`, wrapping i32.
#[cfg(not(qkernels_emulate_amx))]
macro_rules! tile_dot {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(concat!("tdpbusd tmm", $c, ", tmm", $a, ", tmm", $b), options(nostack, nomem, preserves_flags),)
    };
}

/// `tilestored [p + stride], tmm$t`.
#[cfg(not(qkernels_emulate_amx))]
macro_rules! tile_store {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack, preserves_flags),
        )
    };
}

/// The same four instructions on the software model (`--cfg qkernels_emulate_amx`).
#[cfg(qkernels_emulate_amx)]
macro_rules! tile_zero {
    ($t:literal) => {
        crate::x86::amx_emulated::zero($t)
    };
}
#[cfg(qkernels_emulate_amx)]
macro_rules! tile_load {
    ($t:literal, $p:expr, $stride:expr) => {
        crate::x86::amx_emulated::load($t, $p.cast::<u8>(), $stride)
    };
}
#[cfg(qkernels_emulate_amx)]
macro_rules! tile_dot {
    ($c:literal, $a:literal, $b:literal) => {
        crate::x86::amx_emulated::dot($c, $a, $b)
    };
}
#[cfg(qkernels_emulate_amx)]
macro_rules! tile_store {
    ($t:literal, $p:expr, $stride:expr) => {
        crate::x86::amx_emulated::store($t, $p.cast::<u8>(), $stride)
    };
}

/// The i32 sums of one 32 x 32 tile, row-major.
#[repr(C, align(64))]
struct Sums([i32; 2 * TILE_ROWS * NR]);

/// The last partial K step of 32 rows, zero-padded to 64 bytes per row.
#[repr(C, align(64))]
struct Tails([u8; 2 * TILE_ROWS * TILE_BYTES]);

/// One GEMM block on AMX (blocks of fewer than 16 rows on VNNI).
///
/// # Safety
/// The CPU supports `Isa::Amx`; `blk` and `epi` are valid as documented on their types; the
/// weights were packed for [`AMX`] (32-column panels, K padded to 64).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
unsafe fn block_amx(blk: &Block, epi: &Epi) {
    if blk.rows < TILE_ROWS {
        // SAFETY: the caller's contract; VNNI reads the first ceil(k / 4) groups of each (longer)
        // panel.
        unsafe { block_vnni(blk, epi) };
        return;
    }
    // SAFETY: the caller guarantees AMX.
    let _tiles = unsafe { Tiles::configure() };
    // The tails buffer exists only when K has a partial step.
    let mut tails = if reads_whole_steps(blk) { None } else { Some(Tails([0; 2 * TILE_ROWS * TILE_BYTES])) };
    // SAFETY: the tiles are configured, rows >= 16, the tails buffer exists when K has a partial
    // step; the rest is the caller's contract.
    unsafe { each_row_tile(blk, epi, &plain_rows(), tails.as_mut()) };
}

/// One implicit-GEMM convolution block on AMX ([`ImplicitRows`]).
///
/// # Safety
/// As for [`ImplicitFn`], on a CPU with `Isa::Amx`, the weights packed for [`AMX`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
unsafe fn implicit_amx(blk: &Block, epi: &Epi, conv: &ImplicitRows<'_>) {
    // SAFETY: the caller guarantees AMX.
    let _tiles = unsafe { Tiles::configure() };
    let padded = Block { rows: conv.padded_rows(blk.rows), ..*blk };
    // SAFETY: the tiles are configured; K is a multiple of 64 (no tails), padded rows >= 16,
    // every step of every padded row readable (the caller's contract).
    unsafe { each_row_tile(&padded, epi, &conv.padded_map(), None) };
}

/// Every row tile of a block: pairs of row tiles, then the rows left (fewer than 32) by tiles
/// that end at the last row, overlapping rows already done (recomputed to the same values and
/// stored again).
///
/// # Safety
/// As for [`row_tiles`], with `blk.rows >= 16`.
#[inline(always)]
unsafe fn each_row_tile<R: Fn(usize) -> usize, S: Fn(usize) -> usize, O: Fn(usize) -> Option<usize>>(
    blk: &Block,
    epi: &Epi,
    map: &RowMap<R, S, O>,
    mut tails: Option<&mut Tails>,
) {
    // The sums are written by tile stores before they are read (through the pointer only), so
    // they are left uninitialised.
    let mut sums = std::mem::MaybeUninit::<Sums>::uninit();
    let sums = sums.as_mut_ptr().cast::<i32>();
    let rows = blk.rows;
    // SAFETY: each tile's rows lie in 0..rows (rows >= 16); `sums` points to a whole `Sums`; the
    // rest is the caller's contract.
    unsafe {
        let mut r = 0;
        while r + 2 * TILE_ROWS <= rows {
            row_tiles::<2, R, S, O>(blk, epi, map, r, tails.as_deref_mut(), sums);
            r += 2 * TILE_ROWS;
        }
        if r < rows {
            if rows >= 2 * TILE_ROWS {
                row_tiles::<2, R, S, O>(blk, epi, map, rows - 2 * TILE_ROWS, tails.as_deref_mut(), sums);
            } else {
                row_tiles::<1, R, S, O>(blk, epi, map, 0, tails.as_deref_mut(), sums);
                if rows > TILE_ROWS {
                    row_tiles::<1, R, S, O>(blk, epi, map, rows - TILE_ROWS, tails, sums);
                }
            }
        }
    }
}

/// True if every K step can be loaded from the rows themselves: K is a multiple of 64, or each
/// row has room for the padded last step (im2col's scratch rows are `ceil(K / 64) * 64` bytes,
/// all initialized). The bytes past K multiply zero weights (the panels are padded with zeros),
/// so whatever they hold, the sums are the same.
fn reads_whole_steps(blk: &Block) -> bool {
    blk.k.is_multiple_of(TILE_BYTES) || blk.row_bytes >= blk.k.next_multiple_of(TILE_BYTES)
}

/// Rows `row0..row0 + 16 * R` of the block against every panel.
///
/// # Safety
/// As for [`block_amx`], with the tiles configured, `row0 + 16 * R <= blk.rows`, `tails` given
/// unless [`reads_whole_steps`], `sums` valid for writes and reads of [`Sums`], and `map`
/// addressing readable bytes and writable output rows.
#[inline(always)]
unsafe fn row_tiles<
    const R: usize,
    M: Fn(usize) -> usize,
    S: Fn(usize) -> usize,
    O: Fn(usize) -> Option<usize>,
>(
    blk: &Block,
    epi: &Epi,
    map: &RowMap<M, S, O>,
    row0: usize,
    tails: Option<&mut Tails>,
    sums: *mut i32,
) {
    // Whole 64-byte steps read from the rows; a partial last step comes from the tails buffer.
    let (steps, tail) = if reads_whole_steps(blk) {
        (blk.k.div_ceil(TILE_BYTES), 0)
    } else {
        (blk.k / TILE_BYTES, blk.k % TILE_BYTES)
    };
    // SAFETY: rows row0..row0 + 16R exist (pointer arithmetic only), `row(row0 + i)` being
    // `row(row0) + i` for the maps AMX runs (plain and padded).
    let a = unsafe { blk.a.add((map.row)(row0) * blk.lda) };
    let tails = tails.map(|t| {
        for i in 0..R * TILE_ROWS {
            let dst = &mut t.0[i * TILE_BYTES..(i + 1) * TILE_BYTES];
            // SAFETY: row row0 + i has `k` readable bytes, the last `tail` of them from here.
            let src = unsafe { std::slice::from_raw_parts(a.add(i * blk.lda + steps * TILE_BYTES), tail) };
            copy_small(&mut dst[..tail], src);
            fill_small(&mut dst[tail..], 0);
        }
        t.0.as_ptr()
    });
    let a_tile1 = TILE_ROWS * blk.lda;
    let c_stride = NR * 4;
    for p in 0..blk.npanels {
        // SAFETY: p < npanels: the panel lies in the packed weights, with `steps` (+ 1 when
        // `tail > 0`) whole K steps of 16 groups x PANEL_ROW bytes (K padded to 64); the A rows
        // have `steps * 64` readable bytes, the tails buffer 64 per row; the sums buffer holds
        // 32 rows of NR i32; the tiles are configured.
        unsafe {
            let bp = blk.panels.add(p * blk.panel_stride);
            tile_zero!(0);
            tile_zero!(1);
            if R == 2 {
                tile_zero!(2);
                tile_zero!(3);
            }
            for s in 0..steps {
                let a0 = a.add((map.at)(s * TILE_BYTES));
                let b0 = bp.add(s * TILE_ROWS * PANEL_ROW);
                tile_load!(4, a0, blk.lda);
                tile_load!(6, b0, PANEL_ROW);
                tile_dot!(0, 4, 6);
                tile_load!(7, b0.add(TILE_BYTES), PANEL_ROW);
                tile_dot!(1, 4, 7);
                if R == 2 {
                    tile_load!(5, a0.add(a_tile1), blk.lda);
                    tile_dot!(2, 5, 6);
                    tile_dot!(3, 5, 7);
                }
            }
            if let Some(t0) = tails {
                let b0 = bp.add(steps * TILE_ROWS * PANEL_ROW);
                tile_load!(4, t0, TILE_BYTES);
                tile_load!(6, b0, PANEL_ROW);
                tile_load!(7, b0.add(TILE_BYTES), PANEL_ROW);
                tile_dot!(0, 4, 6);
                tile_dot!(1, 4, 7);
                if R == 2 {
                    tile_load!(5, t0.add(TILE_ROWS * TILE_BYTES), TILE_BYTES);
                    tile_dot!(2, 5, 6);
                    tile_dot!(3, 5, 7);
                }
            }
            tile_store!(0, sums, c_stride);
            tile_store!(1, sums.add(TILE_ROWS), c_stride);
            if R == 2 {
                tile_store!(2, sums.add(TILE_ROWS * NR), c_stride);
                tile_store!(3, sums.add(TILE_ROWS * NR + TILE_ROWS), c_stride);
            }
        }
        let n = blk.n0 + p * NR;
        let cols = blk.n_end.saturating_sub(n).min(NR);
        // SAFETY: the epilogue arrays are padded past every panel column; the sums buffer holds
        // 16R rows of NR i32; AVX-512 is enabled; rows row0 + i < rows.
        unsafe {
            let col_term = [Vnni::load_i32(epi.col_term.add(n)), Vnni::load_i32(epi.col_term.add(n + 16))];
            for i in 0..R * TILE_ROWS {
                let Some(out_row) = (map.store)(row0 + i) else { continue };
                let row = sums.add(i * NR).cast_const();
                let acc = [
                    Vnni::add(Vnni::load_i32(row), col_term[0]),
                    Vnni::add(Vnni::load_i32(row.add(16)), col_term[1]),
                ];
                store_row::<Vnni, 2>(blk, epi, row0 + i, out_row, n, &acc, cols);
            }
        }
    }
}
