//! A software model of the AMX instructions the `amx` tier runs, compiled in instead of them with
//! `RUSTFLAGS="--cfg qkernels_emulate_amx"`, so that the tier's tiling, packing, row maps and
//! output stage are tested bit for bit on any CPU with the `avx512vnni` tier (whose output stage
//! it shares), AMX or not. It models the tier's one configuration: eight tiles of 16 rows x 64
//! bytes, per thread. What it cannot check is the hardware itself: the instruction encodings and
//! the tile configuration bytes are only exercised on an AMX CPU.

use std::cell::RefCell;

/// Rows of a tile.
const ROWS: usize = 16;
/// Bytes of a tile row.
const BYTES: usize = 64;

type Tile = [[u8; BYTES]; ROWS];

thread_local! {
    /// This thread's tile registers `tmm0..tmm7`.
    static TILES: RefCell<[Tile; 8]> = const { RefCell::new([[[0; BYTES]; ROWS]; 8]) };
}

/// `ldtilecfg [config]`: checks that `config` is the one configuration modelled (palette 1,
/// tiles 0..8 of 16 rows x 64 bytes, the rest zero), then zeroes every tile.
pub(crate) fn configure(config: &[u8; 64]) {
    let mut expected = [0u8; 64];
    expected[0] = 1;
    for t in 0..8 {
        expected[16 + 2 * t..18 + 2 * t].copy_from_slice(&(BYTES as u16).to_le_bytes());
        expected[48 + t] = ROWS as u8;
    }
    assert_eq!(config, &expected, "the AMX model only runs 8 tiles of 16 rows x 64 bytes");
    release();
}

/// `tilerelease`: every tile zeroed.
pub(crate) fn release() {
    TILES.with_borrow_mut(|tiles| *tiles = [[[0; BYTES]; ROWS]; 8]);
}

/// `tilezero tmm{t}`.
pub(crate) fn zero(t: usize) {
    TILES.with_borrow_mut(|tiles| tiles[t] = [[0; BYTES]; ROWS]);
}

/// `tileloadd tmm{t}, [p + stride]`: row `i` from the 64 bytes at `p + i * stride`.
///
/// # Safety
/// The 64 bytes at `p + i * stride` are readable for every `i < 16`.
pub(crate) unsafe fn load(t: usize, p: *const u8, stride: usize) {
    TILES.with_borrow_mut(|tiles| {
        for (i, row) in tiles[t].iter_mut().enumerate() {
            // SAFETY: the caller guarantees 64 readable bytes at this row.
            *row = unsafe { p.add(i * stride).cast::<[u8; BYTES]>().read_unaligned() };
        }
    });
}

/// `tilestored [p + stride], tmm{t}`: row `i` to the 64 bytes at `p + i * stride`.
///
/// # Safety
/// The 64 bytes at `p + i * stride` are writable for every `i < 16`.
pub(crate) unsafe fn store(t: usize, p: *mut u8, stride: usize) {
    TILES.with_borrow(|tiles| {
        for (i, row) in tiles[t].iter().enumerate() {
            // SAFETY: the caller guarantees 64 writable bytes at this row.
            unsafe { p.add(i * stride).cast::<[u8; BYTES]>().write_unaligned(*row) };
        }
    });
}

/// `tdpbusd tmm{c}, tmm{a}, tmm{b}`: the i32 `C[m][n]` (bytes `4n..4n + 4` of row `m`) gains
/// `Σ_k Σ_i u8 A[m][4k + i] * i8 B[k][4n + i]`, wrapping.
pub(crate) fn dot(c: usize, a: usize, b: usize) {
    TILES.with_borrow_mut(|tiles| {
        let (ta, tb) = (tiles[a], tiles[b]);
        for (row_c, row_a) in tiles[c].iter_mut().zip(&ta) {
            for (n, sum) in row_c.chunks_exact_mut(4).enumerate() {
                let mut acc = i32::from_le_bytes(sum.try_into().expect("4 bytes"));
                for (group_a, row_b) in row_a.chunks_exact(4).zip(&tb) {
                    for (&x, &y) in group_a.iter().zip(&row_b[4 * n..4 * n + 4]) {
                        acc = acc.wrapping_add(i32::from(x) * i32::from(y as i8));
                    }
                }
                sum.copy_from_slice(&acc.to_le_bytes());
            }
        }
    });
}
