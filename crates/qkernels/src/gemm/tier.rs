//! The per-tier vector operations the generic GEMM and depthwise loops are written in.
//!
//! A tier is a type implementing [`Tier`]: `LANES` i32 accumulator lanes, a prepared activation
//! dword (4 u8 of one row, broadcast), a prepared weight vector (`LANES` x 4 i8 of the packed
//! panel) and an exact 4-deep dot product. The output pipeline operations implement qcore's
//! `ConvRequant` arithmetic lane by lane. Every method is `#[inline]` and, on x86, compiled with
//! the tier's target features, so it inlines into the `#[target_feature]` entry points of
//! `kernel.rs`, which are the only callers.

use qcore::cvt_f32_to_i32_x86;

/// Vector operations of one ISA tier. All methods are `unsafe`: the x86 tiers need their target
/// features (guaranteed by the caller, which only runs a tier [`crate::Isa::is_supported`] says the
/// CPU has), and the pointer methods need valid memory as stated on each.
pub(crate) trait Tier {
    /// i32 (and f32) lanes per vector.
    const LANES: usize;
    /// `LANES` i32.
    type V: Copy;
    /// `LANES` f32.
    type F: Copy;
    /// A prepared activation dword.
    type A: Copy;
    /// A prepared weight vector.
    type B: Copy;

    /// All lanes zero.
    unsafe fn zero() -> Self::V;
    /// All lanes `x`.
    unsafe fn splat(x: i32) -> Self::V;
    /// Four activations `[a0, a1, a2, a3]` as the little-endian `x`, for every lane.
    unsafe fn prep_a(x: u32) -> Self::A;
    /// Loads `LANES * 4` weight bytes. `p` must be valid for that many bytes.
    unsafe fn prep_b(p: *const i8) -> Self::B;
    /// `acc + Σ_{j<4} a_j * b[lane][j]`, exact (wrapping i32).
    unsafe fn dot(acc: Self::V, a: Self::A, b: Self::B) -> Self::V;
    /// Loads `LANES` i32; `p` must be valid for that many.
    unsafe fn load_i32(p: *const i32) -> Self::V;
    /// Loads `LANES` f32; `p` must be valid for that many.
    unsafe fn load_f32(p: *const f32) -> Self::F;
    /// Lane-wise wrapping add.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise wrapping subtract.
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise wrapping multiply (low 32 bits).
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b` for `a` in 0..=32767 and `b` in -32768..=32767 (`vpmaddwd`, cheaper than `vpmulld`).
    unsafe fn mul_u16(a: Self::V, b: Self::V) -> Self::V;
    /// `count` (1..=LANES) u8 from `p`, zero-extended; `p` must be valid for `count` bytes.
    unsafe fn load_u8(p: *const u8, count: usize) -> Self::V;
    /// qcore's `ConvRequant::requantize` lane by lane: `cvtps2dq((f32(acc) + bias) * mult)`,
    /// then `min(y, 32767) + zp` clamped to `[lo, 255]`, which equals the saturating i16 pack,
    /// `+ zp`, u8 pack and ReLU floor `lo` (0 or zp). Lanes hold values in 0..=255.
    unsafe fn requant(acc: Self::V, bias: Self::F, mult: Self::F, zp: Self::V, lo: Self::V) -> Self::V;
    /// `store_u8(p, requant(acc, bias, mult, splat(zp), splat(lo)), count)`; tiers may fuse it.
    #[inline(always)]
    unsafe fn requant_store_u8(
        p: *mut u8,
        acc: Self::V,
        bias: Self::F,
        mult: Self::F,
        zp: i32,
        lo: i32,
        count: usize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { Self::store_u8(p, Self::requant(acc, bias, mult, Self::splat(zp), Self::splat(lo)), count) }
    }
    /// `f32(acc) * scale + bias` (separate multiply and add), floored at 0 with `relu`.
    unsafe fn dequant(acc: Self::V, scale: Self::F, bias: Self::F, relu: bool) -> Self::F;
    /// Stores the low byte of the first `count` (1..=LANES) lanes.
    unsafe fn store_u8(p: *mut u8, v: Self::V, count: usize);
    /// Stores the first `count` (1..=LANES) lanes.
    unsafe fn store_i32(p: *mut i32, v: Self::V, count: usize);
    /// Stores the first `count` (1..=LANES) lanes.
    unsafe fn store_f32(p: *mut f32, v: Self::F, count: usize);
}

/// Plain Rust, one lane: the portable tier and the aarch64 build.
pub(crate) struct Scalar;

impl Tier for Scalar {
    const LANES: usize = 1;
    type V = i32;
    type F = f32;
    type A = [i32; 4];
    type B = [i32; 4];

    #[inline(always)]
    unsafe fn zero() -> i32 {
        0
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> i32 {
        x
    }
    #[inline(always)]
    unsafe fn prep_a(x: u32) -> [i32; 4] {
        x.to_le_bytes().map(i32::from)
    }
    #[inline(always)]
    unsafe fn prep_b(p: *const i8) -> [i32; 4] {
        // SAFETY: the caller guarantees 4 readable bytes at `p`.
        let bytes = unsafe { p.cast::<[i8; 4]>().read_unaligned() };
        bytes.map(i32::from)
    }
    #[inline(always)]
    unsafe fn dot(acc: i32, a: [i32; 4], b: [i32; 4]) -> i32 {
        let s = a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
        acc.wrapping_add(s)
    }
    #[inline(always)]
    unsafe fn load_i32(p: *const i32) -> i32 {
        // SAFETY: the caller guarantees one readable i32.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> f32 {
        // SAFETY: the caller guarantees one readable f32.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn add(a: i32, b: i32) -> i32 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    unsafe fn sub(a: i32, b: i32) -> i32 {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    unsafe fn mul(a: i32, b: i32) -> i32 {
        a.wrapping_mul(b)
    }
    #[inline(always)]
    unsafe fn mul_u16(a: i32, b: i32) -> i32 {
        a.wrapping_mul(b)
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8, _count: usize) -> i32 {
        // SAFETY: the caller guarantees `count >= 1` readable bytes.
        i32::from(unsafe { p.read() })
    }
    #[inline(always)]
    unsafe fn requant(acc: i32, bias: f32, mult: f32, zp: i32, lo: i32) -> i32 {
        let y = cvt_f32_to_i32_x86((acc as f32 + bias) * mult);
        (y.min(32767) + zp).clamp(lo, 255)
    }
    #[inline(always)]
    unsafe fn dequant(acc: i32, scale: f32, bias: f32, relu: bool) -> f32 {
        let y = acc as f32 * scale + bias;
        if relu { y.max(0.0) } else { y }
    }
    #[inline(always)]
    unsafe fn store_u8(p: *mut u8, v: i32, _count: usize) {
        // SAFETY: the caller guarantees one writable byte.
        unsafe { p.write(v as u8) }
    }
    #[inline(always)]
    unsafe fn store_i32(p: *mut i32, v: i32, _count: usize) {
        // SAFETY: the caller guarantees one writable i32.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn store_f32(p: *mut f32, v: f32, _count: usize) {
        // SAFETY: the caller guarantees one writable f32.
        unsafe { p.write_unaligned(v) }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2Exact, Avx2Fast, Avx512Exact, Vnni};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Tier;
    use crate::masks::mask16;

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
            unsafe fn requant(acc: __m256i, bias: __m256, mult: __m256, zp: __m256i, lo: __m256i) -> __m256i {
                let x = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(acc), bias), mult);
                let y = _mm256_min_epi32(_mm256_cvtps_epi32(x), _mm256_set1_epi32(32767));
                _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(y, zp), lo), _mm256_set1_epi32(255))
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dequant(acc: __m256i, scale: __m256, bias: __m256, relu: bool) -> __m256 {
                let y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale), bias);
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
            unsafe fn requant(acc: __m512i, bias: __m512, mult: __m512, zp: __m512i, lo: __m512i) -> __m512i {
                let x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(acc), bias), mult);
                let y = _mm512_min_epi32(_mm512_cvtps_epi32(x), _mm512_set1_epi32(32767));
                _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, zp), lo), _mm512_set1_epi32(255))
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn requant_store_u8(
                p: *mut u8,
                acc: __m512i,
                bias: __m512,
                mult: __m512,
                zp: i32,
                lo: i32,
                count: usize,
            ) {
                // FBGEMM's own sequence: saturate to i16 (`vpmovsdw`), `+ zp` saturating, floor
                // at `lo`, then unsigned saturation to u8 (`vpmovuswb`; the values are >= 0).
                let x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(acc), bias), mult);
                let y = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(x));
                let z = _mm256_max_epi16(
                    _mm256_adds_epi16(y, _mm256_set1_epi16(zp as i16)),
                    _mm256_set1_epi16(lo as i16),
                );
                // SAFETY: the caller guarantees `count` writable bytes at `p`; the mask covers
                // exactly those.
                unsafe { _mm256_mask_cvtusepi16_storeu_epi8(p.cast(), mask16(count), z) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dequant(acc: __m512i, scale: __m512, bias: __m512, relu: bool) -> __m512 {
                let y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale), bias);
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
