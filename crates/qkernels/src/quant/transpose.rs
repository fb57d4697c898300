//! Byte-matrix transpose for the layout-converting kernels: 16 x 16 blocks with SSE2 unpacks on
//! the vector tiers (`crate::x86::transpose`), plain loops for the edges and on the scalar tier.
//! Moves bytes only.

use crate::Isa;

/// `dst[c * dst_stride + r] = src[r * src_stride + c]` for `r < rows`, `c < cols`.
///
/// Panics if a slice is too short for its stride and extent (an internal invariant: callers
/// size both from the same tile geometry).
pub(super) fn bytes(
    src: &[u8],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [u8],
    dst_stride: usize,
    isa: Isa,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src_stride >= cols && src.len() >= (rows - 1) * src_stride + cols, "transpose source");
    assert!(dst_stride >= rows && dst.len() >= (cols - 1) * dst_stride + rows, "transpose destination");
    // The part the tier transposes with vectors: whole for three rows or columns (RGB) on the
    // vector tiers, else 16 x 16 blocks.
    let (rows16, cols16) = on_tier!(
        isa,
        scalar: (0, 0),
        // SAFETY (of the call): the extents were asserted above.
        avx2: crate::x86::transpose::bytes(src, src_stride, rows, cols, dst, dst_stride),
    );
    if (rows16, cols16) == (rows, cols) {
        return;
    }
    // The edges: columns past cols16 for every row, and rows past rows16 for the block columns.
    for c in cols16..cols {
        let d = &mut dst[c * dst_stride..c * dst_stride + rows];
        for (r, o) in d.iter_mut().enumerate() {
            *o = src[r * src_stride + c];
        }
    }
    for c in 0..cols16 {
        let d = &mut dst[c * dst_stride + rows16..c * dst_stride + rows];
        for (k, o) in d.iter_mut().enumerate() {
            *o = src[(rows16 + k) * src_stride + c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_transposes_every_size() {
        for isa in Isa::supported() {
            for (rows, cols, ss, ds) in [
                (1, 1, 6, 4),
                (3, 70, 75, 6),
                (16, 16, 21, 19),
                (17, 33, 38, 20),
                (64, 256, 261, 67),
                (40, 3, 8, 43),
                (3, 70, 75, 3),
                (3, 5000, 5440, 3),
                (70, 3, 3, 75),
                (5000, 3, 3, 5440),
            ] {
                let src: Vec<u8> = (0..rows * ss).map(|i| (i * 7 + i / 251) as u8).collect();
                let mut dst = vec![0u8; cols * ds];
                bytes(&src, ss, rows, cols, &mut dst, ds, isa);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(dst[c * ds + r], src[r * ss + c], "{isa} {rows}x{cols} at {r},{c}");
                    }
                }
            }
        }
    }
}
