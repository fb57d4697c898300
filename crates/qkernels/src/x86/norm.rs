//! The vector tiers of batch norm (`crate::norm`). Every channel of a row is one lane: the first `C - C mod 8`
//! take the vector rule of `FusedBatchNorm::element` (`fma`, then FBGEMM's quantize with scale
//! 1), the rest the scalar-tail rule (`fma`, `lrintf` into i64), computed in masked lanes:
//! `lrintf` equals `cvtps2dq` below 2^31 in magnitude; NaN and magnitudes of 2^63 or more give
//! `i64::MIN`, so 0 before ReLU; other magnitudes of 1e9 or more saturate like 1e9.

/// The largest float below `i32::MAX`, FBGEMM's clip before `cvtps2dq`.
const BOUND: f32 = 2_147_483_520.0;
/// Scalar-tail values are clipped to ±this before conversion (saturates either way).
const TAIL_CLIP: f32 = 1.0e9;
/// 2^63: scalar-tail magnitudes from here on are out of `lrintf`'s range.
const LRINT_LIMIT: f32 = 9_223_372_036_854_775_808.0;

/// The per-call constants of [`FusedBatchNorm`](crate::norm::FusedBatchNorm) the vector rows take.
#[derive(Clone, Copy)]
pub(crate) struct Consts {
    /// Input zero point.
    pub in_zp: i32,
    /// Output zero point.
    pub out_zp: i32,
    /// Floor at the output zero point.
    pub relu: bool,
    /// The first channel of the scalar tail.
    pub vend: usize,
}

/// Eight channels per ymm.
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{BOUND, Consts, LRINT_LIMIT, TAIL_CLIP};

    /// Eight lanes: `y = fma(alpha, q - in_zp, beta)`, then the vector rule, or the tail rule when
    /// `TAIL`; clamped to [lo, 255] (lo is the zero point under ReLU).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn lanes<const TAIL: bool>(k: &Consts, q: __m128i, a: __m256, b: __m256) -> __m128i {
        let d = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(q), _mm256_set1_epi32(k.in_zp)));
        let y = _mm256_fmadd_ps(a, d, b);
        let r = if TAIL {
            let abs = _mm256_and_ps(y, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
            let bad = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_NLT_UQ>(abs, _mm256_set1_ps(LRINT_LIMIT)));
            let t = _mm256_max_ps(_mm256_min_ps(y, _mm256_set1_ps(TAIL_CLIP)), _mm256_set1_ps(-TAIL_CLIP));
            let r = _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_set1_epi32(k.out_zp));
            _mm256_andnot_si256(bad, r)
        } else {
            // min_ps returns its second operand for NaN, as FBGEMM relies on.
            let t = _mm256_min_ps(y, _mm256_set1_ps(BOUND));
            _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_set1_epi32(k.out_zp))
        };
        let lo = _mm256_set1_epi32(if k.relu { k.out_zp } else { 0 });
        let r = _mm256_min_epi32(_mm256_max_epi32(r, lo), _mm256_set1_epi32(255));
        let h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
        _mm_packus_epi16(h, h)
    }

    /// Every row; `alpha` and `beta` have one value per channel, `input` and `out` whole rows.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn rows(k: Consts, alpha: &[f32], beta: &[f32], input: &[u8], out: &mut [u8]) {
        let c = alpha.len().min(beta.len());
        let tail = c - k.vend;
        // The tail's parameters, padded to eight lanes.
        let (mut ta, mut tb) = ([0f32; 8], [0f32; 8]);
        ta[..tail].copy_from_slice(&alpha[k.vend..c]);
        tb[..tail].copy_from_slice(&beta[k.vend..c]);
        // SAFETY: `ta` and `tb` are eight floats.
        let (ta, tb) = unsafe { (_mm256_loadu_ps(ta.as_ptr()), _mm256_loadu_ps(tb.as_ptr())) };
        for (x, o) in input.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let mut i = 0;
            while i + 8 <= k.vend {
                // SAFETY: i + 8 <= vend <= c, the length of `x`, `o`, `alpha` and `beta`.
                unsafe {
                    let q = _mm_loadl_epi64(x.as_ptr().add(i).cast());
                    let a = _mm256_loadu_ps(alpha.as_ptr().add(i));
                    let b = _mm256_loadu_ps(beta.as_ptr().add(i));
                    _mm_storel_epi64(o.as_mut_ptr().add(i).cast(), lanes::<false>(&k, q, a, b));
                }
                i += 8;
            }
            if tail > 0 {
                let mut buf = [0u8; 16];
                buf[..tail].copy_from_slice(&x[k.vend..]);
                // SAFETY: `buf` is sixteen bytes.
                let q = unsafe { _mm_loadu_si128(buf.as_ptr().cast()) };
                // SAFETY: as above.
                unsafe { _mm_storeu_si128(buf.as_mut_ptr().cast(), lanes::<true>(&k, q, ta, tb)) };
                o[k.vend..].copy_from_slice(&buf[..tail]);
            }
        }
    }
}

/// Sixteen channels per zmm, the tail in masked lanes.
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{BOUND, Consts, LRINT_LIMIT, TAIL_CLIP};
    use crate::x86::masks::mask16;

    /// Sixteen lanes starting at channel `i`, `m` the lanes inside the row: the vector rule, or
    /// the tail rule when `TAIL`.
    ///
    /// # Safety
    /// The lanes of `m` must lie within `x`, `o`, `alpha` and `beta` from `i` on.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    unsafe fn lanes<const TAIL: bool>(
        k: &Consts,
        m: __mmask16,
        i: usize,
        alpha: &[f32],
        beta: &[f32],
        x: &[u8],
        o: &mut [u8],
    ) {
        // SAFETY: masked accesses touch only the lanes of `m`, in bounds by the caller's promise;
        // masked-off lanes are not accessed.
        unsafe {
            let q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x.as_ptr().add(i).cast()));
            let d = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(k.in_zp)));
            let a = _mm512_maskz_loadu_ps(m, alpha.as_ptr().add(i));
            let b = _mm512_maskz_loadu_ps(m, beta.as_ptr().add(i));
            let y = _mm512_fmadd_ps(a, d, b);
            let r = if TAIL {
                let bad = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(_mm512_abs_ps(y), _mm512_set1_ps(LRINT_LIMIT));
                let t =
                    _mm512_max_ps(_mm512_min_ps(y, _mm512_set1_ps(TAIL_CLIP)), _mm512_set1_ps(-TAIL_CLIP));
                let r = _mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(k.out_zp));
                _mm512_mask_mov_epi32(r, bad, _mm512_setzero_si512())
            } else {
                // min_ps returns its second operand for NaN, as FBGEMM relies on.
                let t = _mm512_min_ps(y, _mm512_set1_ps(BOUND));
                _mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(k.out_zp))
            };
            let lo = _mm512_set1_epi32(if k.relu { k.out_zp } else { 0 });
            let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), _mm512_set1_epi32(255));
            _mm_mask_storeu_epi8(o.as_mut_ptr().add(i).cast(), m, _mm512_cvtepi32_epi8(r));
        }
    }

    /// Every row; `alpha` and `beta` have one value per channel, `input` and `out` whole rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn rows(k: Consts, alpha: &[f32], beta: &[f32], input: &[u8], out: &mut [u8]) {
        let c = alpha.len().min(beta.len());
        for (x, o) in input.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let mut i = 0;
            while i + 16 <= k.vend {
                // SAFETY: the lanes [i, i + 16) lie within the row of c channels.
                unsafe { lanes::<false>(&k, 0xFFFF, i, alpha, beta, x, o) };
                i += 16;
            }
            if i < k.vend {
                // SAFETY: the lanes [i, vend) (8 of them) lie within the row.
                unsafe { lanes::<false>(&k, mask16(k.vend - i), i, alpha, beta, x, o) };
            }
            if k.vend < c {
                // SAFETY: the lanes [vend, c) (fewer than 8) lie within the row.
                unsafe { lanes::<true>(&k, mask16(c - k.vend), k.vend, alpha, beta, x, o) };
            }
        }
    }
}
