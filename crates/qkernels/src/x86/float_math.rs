//! The vector body of PyTorch's float sigmoid for the AVX2 and AVX-512 tiers: SLEEF's `expf_u10`
//! (FMA build) lane by lane, bit for bit the scalar oracle `qcore::math::sigmoid_vector_lane`.

use std::arch::x86_64::*;

use qcore::math::{EXP_OVERFLOW, EXP_POLY, EXP_UNDERFLOW, L2L, L2U, QUIET_BIT, R_LN2, SIGN_BIT};

use crate::x86::masks::mask16;

/// `sigmoid_vector_lane` of 8 lanes.
#[target_feature(enable = "avx2,fma")]
fn sigmoid8(x: __m256) -> __m256 {
    let set = _mm256_set1_ps;
    // `-x`: flip the sign bit (PyTorch's `neg`).
    let d = _mm256_xor_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(SIGN_BIT as i32)));
    let q = _mm256_cvtps_epi32(_mm256_mul_ps(d, set(R_LN2)));
    let qf = _mm256_cvtepi32_ps(q);
    let s = _mm256_fmadd_ps(qf, set(-L2U), d);
    let s = _mm256_fmadd_ps(qf, set(-L2L), s);
    let mut u = set(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        u = _mm256_fmadd_ps(u, s, set(c));
    }
    u = _mm256_add_ps(set(1.0), _mm256_fmadd_ps(_mm256_mul_ps(s, s), u, s));
    // u * 2^(q >> 1) * 2^(q - (q >> 1)), each power built in the exponent field.
    let half = _mm256_srai_epi32::<1>(q);
    let bias = _mm256_set1_epi32(0x7f);
    let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias)));
    let p2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(q, half), bias)));
    u = _mm256_mul_ps(_mm256_mul_ps(u, p1), p2);
    u = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(d, set(EXP_UNDERFLOW)), u);
    u = _mm256_blendv_ps(u, set(f32::INFINITY), _mm256_cmp_ps::<_CMP_LT_OQ>(set(EXP_OVERFLOW), d));
    let y = _mm256_div_ps(set(1.0), _mm256_add_ps(set(1.0), u));
    // NaN lanes: `-x` quieted (`qcore::math::sigmoid_nan`).
    let nan = _mm256_or_ps(d, _mm256_castsi256_ps(_mm256_set1_epi32(QUIET_BIT as i32)));
    _mm256_blendv_ps(y, nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

/// `sigmoid_vector_lane` of 16 lanes.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
fn sigmoid16(x: __m512) -> __m512 {
    let set = _mm512_set1_ps;
    let d = _mm512_xor_ps(x, _mm512_castsi512_ps(_mm512_set1_epi32(SIGN_BIT as i32)));
    let q = _mm512_cvtps_epi32(_mm512_mul_ps(d, set(R_LN2)));
    let qf = _mm512_cvtepi32_ps(q);
    let s = _mm512_fmadd_ps(qf, set(-L2U), d);
    let s = _mm512_fmadd_ps(qf, set(-L2L), s);
    let mut u = set(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        u = _mm512_fmadd_ps(u, s, set(c));
    }
    u = _mm512_add_ps(set(1.0), _mm512_fmadd_ps(_mm512_mul_ps(s, s), u, s));
    let half = _mm512_srai_epi32::<1>(q);
    let bias = _mm512_set1_epi32(0x7f);
    let p1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(half, bias)));
    let p2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_sub_epi32(q, half), bias)));
    u = _mm512_mul_ps(_mm512_mul_ps(u, p1), p2);
    u = _mm512_maskz_mov_ps(!_mm512_cmp_ps_mask::<_CMP_LT_OQ>(d, set(EXP_UNDERFLOW)), u);
    u = _mm512_mask_mov_ps(u, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(set(EXP_OVERFLOW), d), set(f32::INFINITY));
    let y = _mm512_div_ps(set(1.0), _mm512_add_ps(set(1.0), u));
    let nan = _mm512_or_ps(d, _mm512_castsi512_ps(_mm512_set1_epi32(QUIET_BIT as i32)));
    _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), nan)
}

/// `dst[i] = sigmoid_vector_lane(src[i])` for `i < n` with AVX2 + FMA.
///
/// # Safety
/// AVX2 and FMA are available; `src` is valid for reading and `dst` for writing `n` floats;
/// they are the same pointer (in place) or do not overlap.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sigmoid_avx2(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: lanes `i..i + 8` are inside both buffers; each vector is loaded before it is
        // stored, so in place is fine.
        unsafe { _mm256_storeu_ps(dst.add(i), sigmoid8(_mm256_loadu_ps(src.add(i)))) };
        i += 8;
    }
    if i < n {
        let mut buf = [0.0f32; 8];
        // SAFETY: the last `n - i < 8` floats of both buffers, through a stack copy.
        unsafe {
            std::ptr::copy_nonoverlapping(src.add(i), buf.as_mut_ptr(), n - i);
            _mm256_storeu_ps(buf.as_mut_ptr(), sigmoid8(_mm256_loadu_ps(buf.as_ptr())));
            std::ptr::copy_nonoverlapping(buf.as_ptr(), dst.add(i), n - i);
        }
    }
}

/// `dst[i] = sigmoid_vector_lane(src[i])` for `i < n` with AVX-512.
///
/// # Safety
/// AVX-512 F/DQ, AVX2 and FMA are available; otherwise as [`sigmoid_avx2`].
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
pub(crate) unsafe fn sigmoid_avx512(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i < n {
        let m = mask16(n - i);
        // SAFETY: the mask keeps the lanes inside both buffers (`i + 16` or `n`); masked-off
        // lanes are not accessed; each vector is loaded before it is stored.
        unsafe { _mm512_mask_storeu_ps(dst.add(i), m, sigmoid16(_mm512_maskz_loadu_ps(m, src.add(i)))) };
        i += 16;
    }
}
