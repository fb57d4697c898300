//! The vector tiers of quantize and dequantize (AVX2 + FMA, AVX-512 F/BW/VL). Each routine
//! handles a prefix of the slice and returns its length; the caller finishes with the scalar rule.
//!
//! Quantize is FBGEMM's `QuantizeAvx2` lane by lane: `t = min_ps(x * inv, 2^31 - 128)` (NaN gives
//! the bound), `cvtps2dq`, wrapping `+ zero_point`, clamp to [0, 255], which is exactly
//! `qcore::AffineQuantizer::quantize`. Dequantize is `f32(scale) * cvtdq2ps(q - zero_point)`.

/// The largest float below `i32::MAX`: FBGEMM clips scaled values to it before converting.
const BOUND: f32 = 2_147_483_520.0;

/// AVX2 + FMA.
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::BOUND;

    /// Eight lanes of the quantize rule, as i32 in [0, 255].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn quantize8(x: __m256, inv: __m256, zp: __m256i) -> __m256i {
        // min_ps returns its second operand when the first is NaN, as FBGEMM relies on.
        let t = _mm256_min_ps(_mm256_mul_ps(x, inv), _mm256_set1_ps(BOUND));
        _mm256_add_epi32(_mm256_cvtps_epi32(t), zp)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn quantize(inv: f32, zp: i32, input: &[f32], out: &mut [u8]) -> usize {
        let n = input.len().min(out.len());
        let (vinv, vzp) = (_mm256_set1_ps(inv), _mm256_set1_epi32(zp));
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n: the four 8-float loads and the 32-byte store are in bounds.
            unsafe {
                let p = input.as_ptr().add(i);
                let r0 = quantize8(_mm256_loadu_ps(p), vinv, vzp);
                let r1 = quantize8(_mm256_loadu_ps(p.add(8)), vinv, vzp);
                let r2 = quantize8(_mm256_loadu_ps(p.add(16)), vinv, vzp);
                let r3 = quantize8(_mm256_loadu_ps(p.add(24)), vinv, vzp);
                // Saturating packs i32 -> i16 -> u8 clamp to [0, 255] exactly as a clamp would.
                let b = _mm256_packus_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
                let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), b);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n: the 8-float load and the 8-byte store are in bounds.
            unsafe {
                let r = quantize8(_mm256_loadu_ps(input.as_ptr().add(i)), vinv, vzp);
                let h = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
                _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm_packus_epi16(h, h));
            }
            i += 8;
        }
        i
    }

    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dequantize(scale: f32, zp: i32, input: &[u8], out: &mut [f32]) -> usize {
        let n = input.len().min(out.len());
        let (vs, vzp) = (_mm256_set1_ps(scale), _mm256_set1_epi32(zp));
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n: the 8-byte load and the 8-float store are in bounds.
            unsafe {
                let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(input.as_ptr().add(i).cast()));
                let d = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, vzp));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(vs, d));
            }
            i += 8;
        }
        i
    }
}

/// AVX-512 F/BW/VL.
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::BOUND;
    use crate::x86::masks::mask16;

    /// Sixteen lanes of the quantize rule, narrowed to bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn quantize16(x: __m512, inv: __m512, zp: __m512i) -> __m128i {
        let t = _mm512_min_ps(_mm512_mul_ps(x, inv), _mm512_set1_ps(BOUND));
        let r = _mm512_add_epi32(_mm512_cvtps_epi32(t), zp);
        // Signed-to-unsigned saturating narrowing clamps to [0, 255] as a clamp would.
        _mm512_cvtusepi32_epi8(_mm512_max_epi32(r, _mm512_setzero_si512()))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn quantize(inv: f32, zp: i32, input: &[f32], out: &mut [u8]) -> usize {
        let n = input.len().min(out.len());
        let (vinv, vzp) = (_mm512_set1_ps(inv), _mm512_set1_epi32(zp));
        let mut i = 0;
        while i + 64 <= n {
            // SAFETY: i + 64 <= n: four 16-float loads and four 16-byte stores, all in bounds.
            unsafe {
                let p = input.as_ptr().add(i);
                let o = out.as_mut_ptr().add(i);
                for k in 0..4 {
                    let r = quantize16(_mm512_loadu_ps(p.add(16 * k)), vinv, vzp);
                    _mm_storeu_si128(o.add(16 * k).cast(), r);
                }
            }
            i += 64;
        }
        while i < n {
            let m = mask16(n - i);
            // SAFETY: masked accesses touch only the first min(16, n - i) lanes, in bounds;
            // masked-off lanes are neither read nor written.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, input.as_ptr().add(i));
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, quantize16(x, vinv, vzp));
            }
            i += 16;
        }
        n
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn dequantize(scale: f32, zp: i32, input: &[u8], out: &mut [f32]) -> usize {
        let n = input.len().min(out.len());
        let (vs, vzp) = (_mm512_set1_ps(scale), _mm512_set1_epi32(zp));
        let mut i = 0;
        while i < n {
            let m = mask16(n - i);
            // SAFETY: masked accesses touch only the first min(16, n - i) lanes, in bounds.
            unsafe {
                let q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, input.as_ptr().add(i).cast()));
                let d = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, vzp));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, _mm512_mul_ps(vs, d));
            }
            i += 16;
        }
        n
    }
}
