//! The vector tiers of batch norm: the vector rule of [`FusedBatchNorm::element`] on the first
//! `C - C mod 8` channels of a row (`fma`, then FBGEMM's quantize with scale 1).

use super::FusedBatchNorm;
use crate::Isa;

/// The largest float below `i32::MAX`, FBGEMM's clip before `cvtps2dq`.
#[cfg(target_arch = "x86_64")]
const BOUND: f32 = 2_147_483_520.0;

/// Computes a prefix of the channels of one row (`x` and `out` hold the vector channels only);
/// returns its length.
pub(super) fn vector_channels(bn: &FusedBatchNorm, x: &[u8], out: &mut [u8], isa: Isa) -> usize {
    let n = x.len().min(out.len()).min(bn.alpha.len()).min(bn.beta.len());
    let k = Consts { in_zp: bn.in_zp, out_zp: bn.out_zp, relu: bn.relu };
    let (a, b) = (&bn.alpha[..n], &bn.beta[..n]);
    let (x, out) = (&x[..n], &mut out[..n]);
    match isa {
        Isa::Scalar => 0,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            debug_assert!(isa.is_supported());
            // SAFETY: every public entry checks `isa.ensure_supported()`: AVX2 and FMA exist.
            unsafe { avx2::row(k, a, b, x, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => {
            debug_assert!(isa.is_supported());
            // SAFETY: as above; the tier implies AVX-512 F/BW/VL/DQ.
            unsafe { avx512::row(k, a, b, x, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => 0,
    }
}

#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Consts {
    in_zp: i32,
    out_zp: i32,
    relu: bool,
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BOUND, Consts};

    /// `alpha`, `beta`, `x` and `out` have the same length; returns how many were written.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row(k: Consts, alpha: &[f32], beta: &[f32], x: &[u8], out: &mut [u8]) -> usize {
        let n = x.len();
        let (in_zp, out_zp) = (_mm256_set1_epi32(k.in_zp), _mm256_set1_epi32(k.out_zp));
        let lo = _mm256_set1_epi32(if k.relu { k.out_zp } else { 0 });
        let hi = _mm256_set1_epi32(255);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, the common length: every 8-lane access is in bounds.
            unsafe {
                let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(x.as_ptr().add(i).cast()));
                let d = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, in_zp));
                let y = _mm256_fmadd_ps(
                    _mm256_loadu_ps(alpha.as_ptr().add(i)),
                    d,
                    _mm256_loadu_ps(beta.as_ptr().add(i)),
                );
                // min_ps returns its second operand for NaN, as FBGEMM relies on.
                let t = _mm256_min_ps(y, _mm256_set1_ps(BOUND));
                let r = _mm256_add_epi32(_mm256_cvtps_epi32(t), out_zp);
                let r = _mm256_min_epi32(_mm256_max_epi32(r, lo), hi);
                let h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
                _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm_packus_epi16(h, h));
            }
            i += 8;
        }
        i
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BOUND, Consts};

    /// `alpha`, `beta`, `x` and `out` have the same length; returns how many were written.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(super) fn row(k: Consts, alpha: &[f32], beta: &[f32], x: &[u8], out: &mut [u8]) -> usize {
        let n = x.len();
        let (in_zp, out_zp) = (_mm512_set1_epi32(k.in_zp), _mm512_set1_epi32(k.out_zp));
        let lo = _mm512_set1_epi32(if k.relu { k.out_zp } else { 0 });
        let hi = _mm512_set1_epi32(255);
        let mut i = 0;
        while i < n {
            let m: __mmask16 = if n - i >= 16 { 0xFFFF } else { ((1u32 << (n - i)) - 1) as __mmask16 };
            // SAFETY: masked accesses touch only the first min(16, n - i) lanes of each slice, all
            // in bounds (the slices share the length n); masked-off lanes are not accessed.
            unsafe {
                let q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x.as_ptr().add(i).cast()));
                let d = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, in_zp));
                let a = _mm512_maskz_loadu_ps(m, alpha.as_ptr().add(i));
                let b = _mm512_maskz_loadu_ps(m, beta.as_ptr().add(i));
                let t = _mm512_min_ps(_mm512_fmadd_ps(a, d, b), _mm512_set1_ps(BOUND));
                let r = _mm512_add_epi32(_mm512_cvtps_epi32(t), out_zp);
                let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, _mm512_cvtepi32_epi8(r));
            }
            i += 16;
        }
        n
    }
}
