//! Byte-matrix transpose for the layout-converting kernels: 16 x 16 blocks with SSE2 unpacks on
//! the vector tiers, plain loops for the edges and on the scalar tier. Moves bytes only.

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
    let (rows16, cols16) = if isa == Isa::Scalar || !cfg!(target_arch = "x86_64") {
        (0, 0)
    } else {
        (rows / 16 * 16, cols / 16 * 16)
    };
    #[cfg(target_arch = "x86_64")]
    for r0 in (0..rows16).step_by(16) {
        for c0 in (0..cols16).step_by(16) {
            // SAFETY: r0 + 16 <= rows and c0 + 16 <= cols, so every row read,
            // src[(r0 + k) * src_stride + c0 .. + 16], and every row written,
            // dst[(c0 + k) * dst_stride + r0 .. + 16], lies within the extents checked above.
            unsafe {
                block16(
                    src.as_ptr().add(r0 * src_stride + c0),
                    src_stride,
                    dst.as_mut_ptr().add(c0 * dst_stride + r0),
                    dst_stride,
                )
            };
        }
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

/// Transposes one 16 x 16 block: four rounds of `unpacklo/hi_epi8` pairing vector `k` with
/// `k + 8`; each round rotates the 8-bit (row, column) index left by one, so four rounds swap
/// row and column.
///
/// # Safety
/// `src + k * src_stride` and `dst + k * dst_stride` must be valid for 16 bytes of reading
/// (respectively writing) for every `k < 16`, and the two regions must not overlap.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn block16(src: *const u8, src_stride: usize, dst: *mut u8, dst_stride: usize) {
    use std::arch::x86_64::*;
    let mut v = [_mm_setzero_si128(); 16];
    for (k, vk) in v.iter_mut().enumerate() {
        // SAFETY: guaranteed by the caller.
        *vk = unsafe { _mm_loadu_si128(src.add(k * src_stride).cast()) };
    }
    for _ in 0..4 {
        let mut t = [_mm_setzero_si128(); 16];
        for k in 0..8 {
            t[2 * k] = _mm_unpacklo_epi8(v[k], v[k + 8]);
            t[2 * k + 1] = _mm_unpackhi_epi8(v[k], v[k + 8]);
        }
        v = t;
    }
    for (k, vk) in v.iter().enumerate() {
        // SAFETY: guaranteed by the caller.
        unsafe { _mm_storeu_si128(dst.add(k * dst_stride).cast(), *vk) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_transposes_every_size() {
        for isa in Isa::supported() {
            for (rows, cols) in [(1, 1), (3, 70), (16, 16), (17, 33), (64, 256), (40, 3)] {
                let (ss, ds) = (cols + 5, rows + 3);
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
