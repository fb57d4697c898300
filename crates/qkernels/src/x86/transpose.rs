//! The x86 byte transposes of the layout-converting kernels (`crate::quant`): 16 x 16 blocks
//! with SSE2 unpacks, and three-channel (RGB) interleaving with AVX2 byte shuffles.

use std::arch::x86_64::*;

/// The vector part of `crate::quant::transpose::bytes`: the whole matrix when it has three rows
/// or columns (AVX2 byte shuffles, returns `(rows, cols)`), else its 16 x 16 blocks (returns
/// `(rows / 16 * 16, cols / 16 * 16)`; the caller transposes the edges).
///
/// # Safety
/// The CPU has AVX2; `src` holds `rows` rows of `cols` bytes `src_stride` apart and `dst` `cols`
/// rows of `rows` bytes `dst_stride` apart.
pub(crate) unsafe fn bytes(
    src: &[u8],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [u8],
    dst_stride: usize,
) -> (usize, usize) {
    // Three channels (RGB images) interleave / de-interleave with byte shuffles instead.
    if rows == 3 && dst_stride == 3 {
        // SAFETY: the caller guarantees AVX2.
        let done = unsafe { rgb::interleave(src, src_stride, cols, dst) };
        for c in done..cols {
            for r in 0..3 {
                dst[c * 3 + r] = src[r * src_stride + c];
            }
        }
        return (rows, cols);
    }
    if cols == 3 && src_stride == 3 {
        // SAFETY: as above.
        let done = unsafe { rgb::deinterleave(src, rows, dst, dst_stride) };
        for r in done..rows {
            for c in 0..3 {
                dst[c * dst_stride + r] = src[r * 3 + c];
            }
        }
        return (rows, cols);
    }
    let (rows16, cols16) = (rows / 16 * 16, cols / 16 * 16);
    for r0 in (0..rows16).step_by(16) {
        for c0 in (0..cols16).step_by(16) {
            // SAFETY: r0 + 16 <= rows and c0 + 16 <= cols, so every row read,
            // src[(r0 + k) * src_stride + c0 .. + 16], and every row written,
            // dst[(c0 + k) * dst_stride + r0 .. + 16], lies within the extents the caller
            // guarantees.
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
    (rows16, cols16)
}

/// Transposes one 16 x 16 block: four rounds of `unpacklo/hi_epi8` pairing vector `k` with
/// `k + 8`; each round rotates the 8-bit (row, column) index left by one, so four rounds swap
/// row and column.
///
/// # Safety
/// `src + k * src_stride` and `dst + k * dst_stride` must be valid for 16 bytes of reading
/// (respectively writing) for every `k < 16`, and the two regions must not overlap.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn block16(src: *const u8, src_stride: usize, dst: *mut u8, dst_stride: usize) {
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

/// Three-row transposes with `pshufb`: 16 pixels of three channels to 48 interleaved bytes and
/// back.
mod rgb {
    use std::arch::x86_64::*;

    /// `INTERLEAVE[k][j]`: the shuffle taking row `j`'s bytes into output vector `k` of the interleaved
    /// form (byte `t` of vector `k` is pixel `(16k + t) / 3` of channel `(16k + t) % 3`); 0x80
    /// (zero) elsewhere.
    const INTERLEAVE: [[[u8; 16]; 3]; 3] = {
        let mut m = [[[0x80u8; 16]; 3]; 3];
        let mut g = 0;
        while g < 48 {
            m[g / 16][g % 3][g % 16] = (g / 3) as u8;
            g += 1;
        }
        m
    };

    /// `DEINTERLEAVE[j][k]`: the shuffle taking input vector `k`'s bytes into row `j` (row `j`,
    /// pixel `i` is byte `3i + j` of the interleaved form); 0x80 elsewhere.
    const DEINTERLEAVE: [[[u8; 16]; 3]; 3] = {
        let mut m = [[[0x80u8; 16]; 3]; 3];
        let mut g = 0;
        while g < 48 {
            m[g % 3][g / 16][g / 3] = (g % 16) as u8;
            g += 1;
        }
        m
    };

    #[inline]
    #[target_feature(enable = "avx2")]
    fn mask(m: &[u8; 16]) -> __m128i {
        // SAFETY: `m` is 16 readable bytes.
        unsafe { _mm_loadu_si128(m.as_ptr().cast()) }
    }

    /// `dst[3c + r] = src[r * stride + c]` for the first `16 * (cols / 16)` columns; returns that
    /// count.
    ///
    /// # Safety
    /// The CPU must support AVX2; `src` must hold `2 * stride + cols` bytes and `dst` `3 * cols`
    /// (the caller's checked extents).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave(src: &[u8], stride: usize, cols: usize, dst: &mut [u8]) -> usize {
        let m = INTERLEAVE.map(|k| k.map(|j| mask(&j)));
        let mut c = 0;
        while c + 16 <= cols {
            // SAFETY: c + 16 <= cols: the three 16-byte row reads end within row r's extent
            // (r * stride + cols), and the 48-byte write ends at 3 * (c + 16) <= 3 * cols.
            unsafe {
                let r = [0, 1, 2].map(|j| _mm_loadu_si128(src.as_ptr().add(j * stride + c).cast()));
                for (k, mk) in m.iter().enumerate() {
                    let v = _mm_or_si128(
                        _mm_or_si128(_mm_shuffle_epi8(r[0], mk[0]), _mm_shuffle_epi8(r[1], mk[1])),
                        _mm_shuffle_epi8(r[2], mk[2]),
                    );
                    _mm_storeu_si128(dst.as_mut_ptr().add(3 * c + 16 * k).cast(), v);
                }
            }
            c += 16;
        }
        c
    }

    /// `dst[c * stride + r] = src[3r + c]` for the first `16 * (rows / 16)` rows; returns that
    /// count.
    ///
    /// # Safety
    /// The CPU must support AVX2; `src` must hold `3 * rows` bytes and `dst` `2 * stride + rows`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn deinterleave(src: &[u8], rows: usize, dst: &mut [u8], stride: usize) -> usize {
        let m = DEINTERLEAVE.map(|j| j.map(|k| mask(&k)));
        let mut r = 0;
        while r + 16 <= rows {
            // SAFETY: r + 16 <= rows: the 48-byte read ends at 3 * (r + 16) <= 3 * rows, and each
            // 16-byte row write ends within row c's extent (c * stride + rows).
            unsafe {
                let v = [0, 1, 2].map(|k| _mm_loadu_si128(src.as_ptr().add(3 * r + 16 * k).cast()));
                for (j, mj) in m.iter().enumerate() {
                    let row = _mm_or_si128(
                        _mm_or_si128(_mm_shuffle_epi8(v[0], mj[0]), _mm_shuffle_epi8(v[1], mj[1])),
                        _mm_shuffle_epi8(v[2], mj[2]),
                    );
                    _mm_storeu_si128(dst.as_mut_ptr().add(j * stride + r).cast(), row);
                }
            }
            r += 16;
        }
        r
    }
}
