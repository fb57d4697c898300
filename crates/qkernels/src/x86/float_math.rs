//! Vector bodies of the float sigmoid and tanh for the AVX2 and AVX-512 tiers.
//!
//! sigmoid: SLEEF's `expf_u10` (FMA build) lane by lane, bit for bit the scalar oracle
//! `qcore::math::sigmoid_vector_lane`.
//!
//! tanh: the oracle is `tanh` in `f64` rounded to `f32` (`qcore::math::tanh_value`). The lanes
//! compute `tanh(|x|)` in `f64` to within [`TANH_REL_ERR`] relative (far below what rounding to
//! `f32` can see) and round it; a lane whose result moves to another `f32` anywhere within twice
//! that bound of the `f64` value (the `f64` value is next to an `f32` rounding boundary, about one
//! input in 2^14) or whose input is NaN is recomputed with the oracle. Every other lane rounds to
//! what any `f64` within the bound rounds to, the C library's `tanh` (a few `f64` ulps from the
//! true value) included, so every lane equals the oracle.

use std::arch::x86_64::*;

use qcore::math::{EXP_OVERFLOW, EXP_POLY, EXP_UNDERFLOW, L2L, L2U, QUIET_BIT, R_LN2, SIGN_BIT, tanh_value};

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

/// A bound on the relative error of the lanes' `f64` `tanh(|x|)` (measured and argued: about
/// 2^-51; Taylor truncations below 2^-55, a few roundings of 2^-53 each).
const TANH_REL_ERR: f64 = 1.0 / (1u64 << 40) as f64;
/// `1 / (n + 1)!` for `n = 16, 15, .., 0`: `expm1(y) = y * sum(y^n / (n + 1)!)`, Horner order.
const EXPM1_TAYLOR: [f64; 17] = taylor::<17>(1);
/// `1 / n!` for `n = 13, 12, .., 0`: `exp(r)` for `|r| <= ln(2) / 2`, Horner order.
const EXP_TAYLOR: [f64; 14] = taylor::<14>(0);
/// Above this `2|x|` the `f64` `tanh` is 1.0 exactly (and so is its rounding).
const TANH_2X_CAP: f64 = 40.0;
/// `1.5 * 2^52`: adding it to a small integral `f64` puts the integer in the low mantissa bits.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// `[1 / (N - 1 + first)!, .., 1 / first!]`, each the `f64` nearest to the exact reciprocal.
const fn taylor<const N: usize>(first: u64) -> [f64; N] {
    let mut out = [0.0; N];
    let mut i = 0;
    while i < N {
        let mut factorial = 1.0f64;
        let mut k = 2;
        while k <= first + (N - 1 - i) as u64 {
            factorial *= k as f64;
            k += 1;
        }
        // The factorials up to 17! are exact in f64, so the division is correctly rounded.
        out[i] = 1.0 / factorial;
        i += 1;
    }
    out
}

/// `tanh(a)` for `a = |x| >= 0` in 4 `f64` lanes, relative error below [`TANH_REL_ERR`]:
/// `expm1(2a) / (expm1(2a) + 2)` by Taylor series for `2a <= 1`, else `1 - 2 / (exp(2a) + 1)`
/// with `exp` reduced by `ln 2` (`2a` capped at [`TANH_2X_CAP`]).
#[target_feature(enable = "avx2,fma")]
fn tanh_abs4(a: __m256d) -> __m256d {
    let set = _mm256_set1_pd;
    let y = _mm256_min_pd(_mm256_add_pd(a, a), set(TANH_2X_CAP));
    let mut q = set(EXPM1_TAYLOR[0]);
    for &c in &EXPM1_TAYLOR[1..] {
        q = _mm256_fmadd_pd(q, y, set(c));
    }
    let em1 = _mm256_mul_pd(y, q);
    let small = _mm256_div_pd(em1, _mm256_add_pd(em1, set(2.0)));
    // exp(y) = 2^k exp(r), k = round(y / ln 2), r = y - k ln 2 (ln 2 in two parts).
    let k =
        _mm256_sub_pd(_mm256_fmadd_pd(y, set(std::f64::consts::LOG2_E), set(ROUND_MAGIC)), set(ROUND_MAGIC));
    let r = _mm256_fmadd_pd(k, set(-LN2_HI), y);
    let r = _mm256_fmadd_pd(k, set(-LN2_LO), r);
    let mut e = set(EXP_TAYLOR[0]);
    for &c in &EXP_TAYLOR[1..] {
        e = _mm256_fmadd_pd(e, r, set(c));
    }
    // Multiply by 2^k: add k (0 <= k <= 58) to the exponent field.
    let k_bits = _mm256_slli_epi64::<52>(_mm256_castpd_si256(_mm256_add_pd(k, set(ROUND_MAGIC))));
    let e = _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(e), k_bits));
    let big = _mm256_sub_pd(set(1.0), _mm256_div_pd(set(2.0), _mm256_add_pd(e, set(1.0))));
    _mm256_blendv_pd(big, small, _mm256_cmp_pd::<_CMP_LE_OQ>(y, set(1.0)))
}

/// `tanh(a)` of 8 `f64` lanes, as [`tanh_abs4`].
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
fn tanh_abs8(a: __m512d) -> __m512d {
    let set = _mm512_set1_pd;
    let y = _mm512_min_pd(_mm512_add_pd(a, a), set(TANH_2X_CAP));
    let mut q = set(EXPM1_TAYLOR[0]);
    for &c in &EXPM1_TAYLOR[1..] {
        q = _mm512_fmadd_pd(q, y, set(c));
    }
    let em1 = _mm512_mul_pd(y, q);
    let small = _mm512_div_pd(em1, _mm512_add_pd(em1, set(2.0)));
    let k =
        _mm512_sub_pd(_mm512_fmadd_pd(y, set(std::f64::consts::LOG2_E), set(ROUND_MAGIC)), set(ROUND_MAGIC));
    let r = _mm512_fmadd_pd(k, set(-LN2_HI), y);
    let r = _mm512_fmadd_pd(k, set(-LN2_LO), r);
    let mut e = set(EXP_TAYLOR[0]);
    for &c in &EXP_TAYLOR[1..] {
        e = _mm512_fmadd_pd(e, r, set(c));
    }
    let k_bits = _mm512_slli_epi64::<52>(_mm512_castpd_si512(_mm512_add_pd(k, set(ROUND_MAGIC))));
    let e = _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(e), k_bits));
    let big = _mm512_sub_pd(set(1.0), _mm512_div_pd(set(2.0), _mm512_add_pd(e, set(1.0))));
    _mm512_mask_mov_pd(big, _mm512_cmp_pd_mask::<_CMP_LE_OQ>(y, set(1.0)), small)
}

/// `ln 2` split so that `k * LN2_HI` is exact for the `k` used (`LN2_HI` has 32 significant bits).
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
/// `ln 2 - LN2_HI`.
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;

/// `t` (4 lanes, `t >= 0`) rounded to `f32`, and whether each lane is sure: `t` scaled by
/// `1 -+ 2 TANH_REL_ERR` rounds to the same `f32` (sign bit of the lane in a 4-bit mask).
#[target_feature(enable = "avx2,fma")]
fn round_sure4(t: __m256d) -> (__m128, i32) {
    let f = _mm256_cvtpd_ps(t);
    let lo = _mm256_cvtpd_ps(_mm256_mul_pd(t, _mm256_set1_pd(1.0 - 2.0 * TANH_REL_ERR)));
    let hi = _mm256_cvtpd_ps(_mm256_mul_pd(t, _mm256_set1_pd(1.0 + 2.0 * TANH_REL_ERR)));
    let same = _mm_and_si128(
        _mm_cmpeq_epi32(_mm_castps_si128(lo), _mm_castps_si128(f)),
        _mm_cmpeq_epi32(_mm_castps_si128(hi), _mm_castps_si128(f)),
    );
    (f, _mm_movemask_ps(_mm_castsi128_ps(same)))
}

/// `tanh_value` of 8 lanes without the unsure ones: the result and a bit mask (bit `i` for lane
/// `i`) of the lanes that must be recomputed with the oracle.
#[target_feature(enable = "avx2,fma")]
fn tanh8(x: __m256) -> (__m256, u32) {
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(SIGN_BIT as i32));
    let a = _mm256_andnot_ps(sign, x);
    let (lo, sure_lo) = round_sure4(tanh_abs4(_mm256_cvtps_pd(_mm256_castps256_ps128(a))));
    let (hi, sure_hi) = round_sure4(tanh_abs4(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a))));
    let y = _mm256_or_ps(_mm256_set_m128(hi, lo), _mm256_and_ps(x, sign));
    let nan = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    (y, (!(sure_lo | (sure_hi << 4)) | nan) as u32 & 0xff)
}

/// `t` (8 lanes, `t >= 0`) rounded to `f32`, and the lanes that are not sure, as
/// [`round_sure4`] (bit set: unsure).
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn round_unsure8(t: __m512d) -> (__m256, u8) {
    let f = _mm512_cvtpd_ps(t);
    let lo = _mm512_cvtpd_ps(_mm512_mul_pd(t, _mm512_set1_pd(1.0 - 2.0 * TANH_REL_ERR)));
    let hi = _mm512_cvtpd_ps(_mm512_mul_pd(t, _mm512_set1_pd(1.0 + 2.0 * TANH_REL_ERR)));
    let unsure = _mm256_cmpneq_epi32_mask(_mm256_castps_si256(lo), _mm256_castps_si256(f))
        | _mm256_cmpneq_epi32_mask(_mm256_castps_si256(hi), _mm256_castps_si256(f));
    (f, unsure)
}

/// `tanh_value` of 16 lanes, as [`tanh8`].
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn tanh16(x: __m512) -> (__m512, u32) {
    let sign = _mm512_castsi512_ps(_mm512_set1_epi32(SIGN_BIT as i32));
    let a = _mm512_andnot_ps(sign, x);
    let (lo, unsure_lo) = round_unsure8(tanh_abs8(_mm512_cvtps_pd(_mm512_castps512_ps256(a))));
    let (hi, unsure_hi) = round_unsure8(tanh_abs8(_mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(a))));
    let y = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi);
    let y = _mm512_or_ps(y, _mm512_and_ps(x, sign));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    (y, u32::from(unsure_lo) | (u32::from(unsure_hi) << 8) | u32::from(nan))
}

/// Replaces the lanes of `y` flagged in `unsure` by `tanh_value` of the same lanes of `x`.
fn patch_unsure(x: &[f32], y: &mut [f32], mut unsure: u32) {
    while unsure != 0 {
        let lane = unsure.trailing_zeros() as usize;
        y[lane] = tanh_value(x[lane]);
        unsure &= unsure - 1;
    }
}

/// `dst[i] = tanh_value(src[i])` for `i < n` with AVX2 + FMA.
///
/// # Safety
/// AVX2 and FMA are available; `src` is valid for reading and `dst` for writing `n` floats;
/// they are the same pointer (in place) or do not overlap.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn tanh_avx2(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i < n {
        let len = (n - i).min(8);
        let (mut xs, mut ys) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: `len` floats from `i` are inside `src` (a whole vector when `len == 8`, else
        // through the stack copy); the input is loaded before any output of these lanes is
        // stored, so in place is fine.
        let x = unsafe {
            if len == 8 {
                _mm256_loadu_ps(src.add(i))
            } else {
                std::ptr::copy_nonoverlapping(src.add(i), xs.as_mut_ptr(), len);
                _mm256_loadu_ps(xs.as_ptr())
            }
        };
        let (y, unsure) = tanh8(x);
        if len == 8 && unsure == 0 {
            // SAFETY: lanes `i..i + 8` are inside `dst`.
            unsafe { _mm256_storeu_ps(dst.add(i), y) };
        } else {
            // SAFETY: `xs` and `ys` hold 8 floats each; then `len` floats from `i` of `dst`.
            unsafe {
                _mm256_storeu_ps(xs.as_mut_ptr(), x);
                _mm256_storeu_ps(ys.as_mut_ptr(), y);
            }
            patch_unsure(&xs, &mut ys, unsure);
            // SAFETY: `len` floats from `i` are inside `dst`.
            unsafe { std::ptr::copy_nonoverlapping(ys.as_ptr(), dst.add(i), len) };
        }
        i += 8;
    }
}

/// `dst[i] = tanh_value(src[i])` for `i < n` with AVX-512.
///
/// # Safety
/// AVX-512 F/DQ/VL, AVX2 and FMA are available; otherwise as [`tanh_avx2`].
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
pub(crate) unsafe fn tanh_avx512(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i < n {
        let m = mask16(n - i);
        // SAFETY: the mask keeps the lanes inside `src` (`i + 16` or `n`).
        let x = unsafe { _mm512_maskz_loadu_ps(m, src.add(i)) };
        let (y, unsure) = tanh16(x);
        let unsure = unsure & u32::from(m);
        if unsure == 0 {
            // SAFETY: as the load, for `dst`; the input vector was loaded before this store.
            unsafe { _mm512_mask_storeu_ps(dst.add(i), m, y) };
        } else {
            let (mut xs, mut ys) = ([0.0f32; 16], [0.0f32; 16]);
            // SAFETY: both arrays hold 16 floats; then the masked lanes of `dst`, as above.
            unsafe {
                _mm512_storeu_ps(xs.as_mut_ptr(), x);
                _mm512_storeu_ps(ys.as_mut_ptr(), y);
            }
            patch_unsure(&xs, &mut ys, unsure);
            // SAFETY: as the first store.
            unsafe { _mm512_mask_storeu_ps(dst.add(i), m, _mm512_loadu_ps(ys.as_ptr())) };
        }
        i += 16;
    }
}
