//! The x86 tiers of the int8 GEMM and depthwise convolution: the `Tier` vector operations
//! (`crate::gemm::tier` documents them) for AVX2 (exact and `vpmaddubsw`), AVX-512BW and AVX-512
//! VNNI, the `#[target_feature]` entry points that instantiate the generic loops of
//! `crate::gemm::kernel` with them, and the `Kernel` of each.

use std::ops::Range;

use crate::gemm::kernel::{Block, DwJob, Epi, ImplicitRows, Kernel, block, depthwise, implicit};

/// Rows per tile of the AVX2 kernels.
const AVX2_MR: usize = 4;
/// Rows per tile of the AVX-512 kernels.
pub(crate) const AVX512_MR: usize = 8;

/// AVX2 with the exact i16 path: 4 x 16 tiles.
pub(crate) const AVX2_EXACT: Kernel = Kernel {
    mr: AVX2_MR,
    nr: 16,
    k_block: 4,
    block: block_avx2_exact,
    depthwise: depthwise_avx2,
    implicit: implicit_avx2_exact,
};
/// AVX2 with `vpmaddubsw`, for calls where its i16 pair sums cannot saturate: 4 x 16 tiles.
pub(crate) const AVX2_FAST: Kernel = Kernel {
    mr: AVX2_MR,
    nr: 16,
    k_block: 4,
    block: block_avx2_fast,
    depthwise: depthwise_avx2,
    implicit: implicit_avx2_fast,
};
/// AVX-512BW: 8 x 32 tiles.
pub(crate) const AVX512: Kernel = Kernel {
    mr: AVX512_MR,
    nr: 32,
    k_block: 4,
    block: block_avx512,
    depthwise: depthwise_avx512,
    implicit: implicit_avx512,
};
/// AVX-512 VNNI: 8 x 32 tiles.
pub(crate) const VNNI: Kernel = Kernel {
    mr: AVX512_MR,
    nr: 32,
    k_block: 4,
    block: block_vnni,
    depthwise: depthwise_avx512,
    implicit: implicit_vnni,
};

#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2_exact(blk: &Block, epi: &Epi) {
    // SAFETY: AVX2 is enabled here; the rest is the caller's contract.
    unsafe { block::<Avx2Exact, { AVX2_MR }, 2>(blk, epi) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2_fast(blk: &Block, epi: &Epi) {
    // SAFETY: AVX2 is enabled here; the rest is the caller's contract.
    unsafe { block::<Avx2Fast, { AVX2_MR }, 2>(blk, epi) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn block_avx512(blk: &Block, epi: &Epi) {
    // SAFETY: AVX-512 F/BW/VL/DQ are enabled here; the rest is the caller's contract.
    unsafe { block::<Avx512Exact, { AVX512_MR }, 2>(blk, epi) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn block_vnni(blk: &Block, epi: &Epi) {
    // SAFETY: AVX-512 VNNI is enabled here; the rest is the caller's contract.
    unsafe { block::<Vnni, { AVX512_MR }, 2>(blk, epi) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn implicit_avx2_exact(blk: &Block, epi: &Epi, conv: &ImplicitRows<'_>) {
    // SAFETY: AVX2 is enabled here; the rest is the caller's contract.
    unsafe { implicit::<Avx2Exact, { AVX2_MR }, 2>(blk, epi, conv) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn implicit_avx2_fast(blk: &Block, epi: &Epi, conv: &ImplicitRows<'_>) {
    // SAFETY: AVX2 is enabled here; the rest is the caller's contract.
    unsafe { implicit::<Avx2Fast, { AVX2_MR }, 2>(blk, epi, conv) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn implicit_avx512(blk: &Block, epi: &Epi, conv: &ImplicitRows<'_>) {
    // SAFETY: AVX-512 F/BW/VL/DQ are enabled here; the rest is the caller's contract.
    unsafe { implicit::<Avx512Exact, { AVX512_MR }, 2>(blk, epi, conv) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn implicit_vnni(blk: &Block, epi: &Epi, conv: &ImplicitRows<'_>) {
    // SAFETY: AVX-512 VNNI is enabled here; the rest is the caller's contract.
    unsafe { implicit::<Vnni, { AVX512_MR }, 2>(blk, epi, conv) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_avx2(job: &DwJob, epi: &Epi, pixels: Range<usize>, taps: &mut Vec<(usize, usize)>) {
    // SAFETY: AVX2 is enabled here; the rest is the caller's contract.
    unsafe { depthwise::<Avx2Exact>(job, epi, pixels, taps) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn depthwise_avx512(
    job: &DwJob,
    epi: &Epi,
    pixels: Range<usize>,
    taps: &mut Vec<(usize, usize)>,
) {
    // SAFETY: AVX-512 F/BW/VL/DQ are enabled here; the rest is the caller's contract.
    unsafe { depthwise::<Avx512Exact>(job, epi, pixels, taps) }
}

/// The `Tier` implementations.
mod tiers {
    use std::arch::x86_64::*;

    use crate::gemm::tier::Tier;
    use crate::x86::masks::mask16;

    /// Operations shared by the ymm tiers (everything but the dot product).
    macro_rules! ymm_common {
        ($features:literal) => {
            const LANES: usize = 8;
            type V = __m256i;
            type F = __m256;

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn zero() -> __m256i {
                _mm256_setzero_si256()
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn splat(x: i32) -> __m256i {
                _mm256_set1_epi32(x)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load_i32(p: *const i32) -> __m256i {
                // SAFETY: the caller guarantees 8 readable i32 at `p`; loadu has no alignment need.
                unsafe { _mm256_loadu_si256(p.cast()) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load_f32(p: *const f32) -> __m256 {
                // SAFETY: the caller guarantees 8 readable f32 at `p`.
                unsafe { _mm256_loadu_ps(p) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
                _mm256_add_epi32(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
                _mm256_sub_epi32(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn mul(a: __m256i, b: __m256i) -> __m256i {
                _mm256_mullo_epi32(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn mul_u16(a: __m256i, b: __m256i) -> __m256i {
                // The high halves of `a` are 0, so the pair sum is lo(a) * lo(b) exactly.
                _mm256_madd_epi16(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load_u8(p: *const u8, count: usize) -> __m256i {
                if count >= 8 {
                    // SAFETY: the caller guarantees `count` (at least 8) readable bytes at `p`.
                    return _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) });
                }
                let mut buf = [0u8; 16];
                // SAFETY: the caller guarantees `count < 8` readable bytes at `p`; `buf` holds 16.
                unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), count) };
                // SAFETY: `buf` is 16 readable bytes; loadl reads 8.
                _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(buf.as_ptr().cast()) })
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn requant(
                acc: __m256i,
                bias: __m256,
                mult: __m256,
                zp: __m256i,
                lo: __m256i,
                hi: __m256i,
            ) -> __m256i {
                let x = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(acc), bias), mult);
                let y = _mm256_min_epi32(_mm256_cvtps_epi32(x), _mm256_set1_epi32(32767));
                _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(y, zp), lo), hi)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dequant(acc: __m256i, scale: __m256, bias: __m256, relu: bool) -> __m256 {
                let y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), scale, bias);
                if relu { _mm256_max_ps(y, _mm256_setzero_ps()) } else { y }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store_u8(p: *mut u8, v: __m256i, count: usize) {
                let words = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                let bytes = _mm_packus_epi16(words, words);
                if count >= 8 {
                    // SAFETY: the caller guarantees `count` (here 8) writable bytes at `p`.
                    unsafe { _mm_storel_epi64(p.cast(), bytes) }
                } else {
                    let mut buf = [0u8; 16];
                    // SAFETY: `buf` is 16 writable bytes.
                    unsafe { _mm_storeu_si128(buf.as_mut_ptr().cast(), bytes) };
                    // SAFETY: the caller guarantees `count` writable bytes at `p`.
                    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, count) }
                }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store_i32(p: *mut i32, v: __m256i, count: usize) {
                if count >= 8 {
                    // SAFETY: the caller guarantees 8 writable i32 at `p`.
                    unsafe { _mm256_storeu_si256(p.cast(), v) }
                } else {
                    let mut buf = [0i32; 8];
                    // SAFETY: `buf` is 8 writable i32.
                    unsafe { _mm256_storeu_si256(buf.as_mut_ptr().cast(), v) };
                    // SAFETY: the caller guarantees `count` writable i32 at `p`.
                    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, count) }
                }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store_f32(p: *mut f32, v: __m256, count: usize) {
                if count >= 8 {
                    // SAFETY: the caller guarantees 8 writable f32 at `p`.
                    unsafe { _mm256_storeu_ps(p, v) }
                } else {
                    let mut buf = [0f32; 8];
                    // SAFETY: `buf` is 8 writable f32.
                    unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), v) };
                    // SAFETY: the caller guarantees `count` writable f32 at `p`.
                    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, count) }
                }
            }
        };
    }

    /// Operations shared by the zmm tiers (everything but the dot product).
    macro_rules! zmm_common {
        ($features:literal) => {
            const LANES: usize = 16;
            type V = __m512i;
            type F = __m512;

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn zero() -> __m512i {
                _mm512_setzero_si512()
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn splat(x: i32) -> __m512i {
                _mm512_set1_epi32(x)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load_i32(p: *const i32) -> __m512i {
                // SAFETY: the caller guarantees 16 readable i32 at `p`; loadu has no alignment need.
                unsafe { _mm512_loadu_si512(p.cast()) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load_f32(p: *const f32) -> __m512 {
                // SAFETY: the caller guarantees 16 readable f32 at `p`.
                unsafe { _mm512_loadu_ps(p) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
                _mm512_add_epi32(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn sub(a: __m512i, b: __m512i) -> __m512i {
                _mm512_sub_epi32(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn mul(a: __m512i, b: __m512i) -> __m512i {
                _mm512_mullo_epi32(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn mul_u16(a: __m512i, b: __m512i) -> __m512i {
                // The high halves of `a` are 0, so the pair sum is lo(a) * lo(b) exactly.
                _mm512_madd_epi16(a, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load_u8(p: *const u8, count: usize) -> __m512i {
                let mask = mask16(count);
                // SAFETY: the caller guarantees `count` readable bytes at `p`; masked-off bytes are
                // not accessed (fault suppression of the AVX-512 masked load).
                _mm512_cvtepu8_epi32(unsafe { _mm_maskz_loadu_epi8(mask, p.cast()) })
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn requant(
                acc: __m512i,
                bias: __m512,
                mult: __m512,
                zp: __m512i,
                lo: __m512i,
                hi: __m512i,
            ) -> __m512i {
                let x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(acc), bias), mult);
                let y = _mm512_min_epi32(_mm512_cvtps_epi32(x), _mm512_set1_epi32(32767));
                _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, zp), lo), hi)
            }
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn requant_store_u8(
                p: *mut u8,
                acc: __m512i,
                bias: __m512,
                mult: __m512,
                zp: i32,
                lo: i32,
                hi: i32,
                count: usize,
            ) {
                // FBGEMM's own sequence: saturate to i16 (`vpmovsdw`), `+ zp` saturating, floor
                // at `lo`, ceiling at `hi`, then unsigned saturation to u8 (`vpmovuswb`; the
                // values are >= 0).
                let x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(acc), bias), mult);
                let y = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(x));
                let z = _mm256_min_epi16(
                    _mm256_max_epi16(
                        _mm256_adds_epi16(y, _mm256_set1_epi16(zp as i16)),
                        _mm256_set1_epi16(lo as i16),
                    ),
                    _mm256_set1_epi16(hi as i16),
                );
                // SAFETY: the caller guarantees `count` writable bytes at `p`; the mask covers
                // exactly those.
                unsafe { _mm256_mask_cvtusepi16_storeu_epi8(p.cast(), mask16(count), z) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dequant(acc: __m512i, scale: __m512, bias: __m512, relu: bool) -> __m512 {
                let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, bias);
                if relu { _mm512_max_ps(y, _mm512_setzero_ps()) } else { y }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store_u8(p: *mut u8, v: __m512i, count: usize) {
                // SAFETY: the caller guarantees `count` writable bytes at `p`; the mask covers
                // exactly those (masked-off bytes are not written).
                unsafe { _mm512_mask_cvtepi32_storeu_epi8(p.cast(), mask16(count), v) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store_i32(p: *mut i32, v: __m512i, count: usize) {
                // SAFETY: the caller guarantees `count` writable i32 at `p`; the mask covers those.
                unsafe { _mm512_mask_storeu_epi32(p.cast(), mask16(count), v) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store_f32(p: *mut f32, v: __m512, count: usize) {
                // SAFETY: the caller guarantees `count` writable f32 at `p`; the mask covers those.
                unsafe { _mm512_mask_storeu_ps(p, mask16(count), v) }
            }
        };
    }

    /// AVX2 exact: activations and weights split into even and odd bytes as i16, `vpmaddwd`.
    pub(crate) struct Avx2Exact;
    /// AVX2 fast: `vpmaddubsw` + `vpmaddwd(1)`, only where the i16 pair sum cannot saturate.
    pub(crate) struct Avx2Fast;
    /// AVX-512BW exact, the same split as [`Avx2Exact`] in zmm.
    pub(crate) struct Avx512Exact;
    /// AVX-512 VNNI: `vpdpbusd`, u8 x s8 straight into i32.
    pub(crate) struct Vnni;

    impl Tier for Avx2Exact {
        ymm_common!("avx2,fma");
        type A = (__m256i, __m256i);
        type B = (__m256i, __m256i);

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn prep_a(x: u32) -> Self::A {
            let a = _mm256_set1_epi32(x as i32);
            (_mm256_and_si256(a, _mm256_set1_epi16(0xFF)), _mm256_srli_epi16::<8>(a))
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn prep_b(p: *const i8) -> Self::B {
            // SAFETY: the caller guarantees 32 readable bytes at `p`.
            let b = unsafe { _mm256_loadu_si256(p.cast()) };
            (_mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(b)), _mm256_srai_epi16::<8>(b))
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn dot(acc: __m256i, a: Self::A, b: Self::B) -> __m256i {
            let even = _mm256_madd_epi16(a.0, b.0);
            let odd = _mm256_madd_epi16(a.1, b.1);
            _mm256_add_epi32(acc, _mm256_add_epi32(even, odd))
        }
    }

    impl Tier for Avx2Fast {
        ymm_common!("avx2,fma");
        type A = __m256i;
        type B = __m256i;

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn prep_a(x: u32) -> __m256i {
            _mm256_set1_epi32(x as i32)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn prep_b(p: *const i8) -> __m256i {
            // SAFETY: the caller guarantees 32 readable bytes at `p`.
            unsafe { _mm256_loadu_si256(p.cast()) }
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            let pairs = _mm256_maddubs_epi16(a, b);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    impl Tier for Avx512Exact {
        zmm_common!("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma");
        type A = (__m512i, __m512i);
        type B = (__m512i, __m512i);

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        unsafe fn prep_a(x: u32) -> Self::A {
            let a = _mm512_set1_epi32(x as i32);
            (_mm512_and_si512(a, _mm512_set1_epi16(0xFF)), _mm512_srli_epi16::<8>(a))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        unsafe fn prep_b(p: *const i8) -> Self::B {
            // SAFETY: the caller guarantees 64 readable bytes at `p`.
            let b = unsafe { _mm512_loadu_si512(p.cast()) };
            (_mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(b)), _mm512_srai_epi16::<8>(b))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        unsafe fn dot(acc: __m512i, a: Self::A, b: Self::B) -> __m512i {
            let even = _mm512_madd_epi16(a.0, b.0);
            let odd = _mm512_madd_epi16(a.1, b.1);
            _mm512_add_epi32(acc, _mm512_add_epi32(even, odd))
        }
    }

    impl Tier for Vnni {
        zmm_common!("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma");
        type A = __m512i;
        type B = __m512i;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
        unsafe fn prep_a(x: u32) -> __m512i {
            _mm512_set1_epi32(x as i32)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
        unsafe fn prep_b(p: *const i8) -> __m512i {
            // SAFETY: the caller guarantees 64 readable bytes at `p`.
            unsafe { _mm512_loadu_si512(p.cast()) }
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
        unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
            _mm512_dpbusd_epi32(acc, a, b)
        }
    }
}

pub(crate) use tiers::Vnni;
use tiers::{Avx2Exact, Avx2Fast, Avx512Exact};
