//! The vector tiers of the elementwise kernels (AVX2 + FMA, AVX-512 BW/VL, AVX-512 VBMI). Every
//! routine handles a prefix of its byte slices and returns its length (the caller finishes with the
//! scalar rule), and computes exactly the scalar rule: the same f32 operations in the same order
//! (FMA where the rule has FMA), `cvtps2dq` rounding, and a clamp that equals the oracle's. `S`
//! is true for qint8 bytes, false for quint8.

/// AVX2 + FMA, 8 or 32 lanes.
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use crate::elementwise::consts::{AddConsts, MulConsts};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn widen<const S: bool>(x: __m128i) -> __m256i {
        if S { _mm256_cvtepi8_epi32(x) } else { _mm256_cvtepu8_epi32(x) }
    }

    /// Packs four vectors of i32 already within the dtype's range into 32 bytes, in order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn pack4<const S: bool>(r0: __m256i, r1: __m256i, r2: __m256i, r3: __m256i) -> __m256i {
        let p01 = _mm256_packs_epi32(r0, r1);
        let p23 = _mm256_packs_epi32(r2, r3);
        let b = if S { _mm256_packs_epi16(p01, p23) } else { _mm256_packus_epi16(p01, p23) };
        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// Eight lanes of the add rule.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    fn add8<const S: bool>(
        a: __m128i,
        b: __m128i,
        k: &AddConsts,
        sa: __m256,
        pa: __m256,
        sb: __m256,
        pb: __m256,
        inv: __m256,
    ) -> __m256i {
        let af = _mm256_cvtepi32_ps(widen::<S>(a));
        let bf = _mm256_cvtepi32_ps(widen::<S>(b));
        let mut c = _mm256_add_ps(_mm256_fmadd_ps(sa, af, pa), _mm256_fmadd_ps(sb, bf, pb));
        if k.relu {
            c = _mm256_max_ps(c, _mm256_setzero_ps());
        }
        // min_ps returns its second operand for NaN, as FBGEMM relies on.
        let t = _mm256_min_ps(_mm256_mul_ps(c, inv), _mm256_set1_ps(2_147_483_520.0));
        let r = _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_set1_epi32(k.zp));
        let (lo, hi) = if S { (-128, 127) } else { (0, 255) };
        _mm256_min_epi32(_mm256_max_epi32(r, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn add<const S: bool>(k: &AddConsts, a: &[u8], b: &[u8], out: &mut [u8]) -> usize {
        let n = out.len().min(a.len()).min(b.len());
        let (sa, pa) = (_mm256_set1_ps(k.sa), _mm256_set1_ps(k.pa));
        let (sb, pb) = (_mm256_set1_ps(k.sb), _mm256_set1_ps(k.pb));
        let inv = _mm256_set1_ps(k.inv);
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n <= the length of each slice, so each 32-byte access is in bounds.
            let (va, vb) = unsafe {
                (_mm256_loadu_si256(a.as_ptr().add(i).cast()), _mm256_loadu_si256(b.as_ptr().add(i).cast()))
            };
            let (a0, a1) = (_mm256_castsi256_si128(va), _mm256_extracti128_si256::<1>(va));
            let (b0, b1) = (_mm256_castsi256_si128(vb), _mm256_extracti128_si256::<1>(vb));
            let r0 = add8::<S>(a0, b0, k, sa, pa, sb, pb, inv);
            let r1 = add8::<S>(_mm_srli_si128::<8>(a0), _mm_srli_si128::<8>(b0), k, sa, pa, sb, pb, inv);
            let r2 = add8::<S>(a1, b1, k, sa, pa, sb, pb, inv);
            let r3 = add8::<S>(_mm_srli_si128::<8>(a1), _mm_srli_si128::<8>(b1), k, sa, pa, sb, pb, inv);
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), pack4::<S>(r0, r1, r2, r3)) };
            i += 32;
        }
        i
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn mul8<const S: bool>(a: __m128i, b: __m128i, k: &MulConsts) -> __m256i {
        let da = _mm256_sub_epi32(widen::<S>(a), _mm256_set1_epi32(k.za));
        let db = _mm256_sub_epi32(widen::<S>(b), _mm256_set1_epi32(k.zb));
        let p = _mm256_cvtepi32_ps(_mm256_mullo_epi32(da, db));
        let r = _mm256_add_epi32(
            _mm256_cvtps_epi32(_mm256_mul_ps(p, _mm256_set1_ps(k.multiplier))),
            _mm256_set1_epi32(k.zp),
        );
        let (lo, hi) = if S { (-128, 127) } else { (0, 255) };
        let lo = if k.relu { k.zp.max(lo) } else { lo };
        _mm256_min_epi32(_mm256_max_epi32(r, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn mul<const S: bool>(k: &MulConsts, a: &[u8], b: &[u8], out: &mut [u8]) -> usize {
        let n = out.len().min(a.len()).min(b.len());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n: every access is in bounds.
            let (va, vb) = unsafe {
                (_mm256_loadu_si256(a.as_ptr().add(i).cast()), _mm256_loadu_si256(b.as_ptr().add(i).cast()))
            };
            let (a0, a1) = (_mm256_castsi256_si128(va), _mm256_extracti128_si256::<1>(va));
            let (b0, b1) = (_mm256_castsi256_si128(vb), _mm256_extracti128_si256::<1>(vb));
            let r0 = mul8::<S>(a0, b0, k);
            let r1 = mul8::<S>(_mm_srli_si128::<8>(a0), _mm_srli_si128::<8>(b0), k);
            let r2 = mul8::<S>(a1, b1, k);
            let r3 = mul8::<S>(_mm_srli_si128::<8>(a1), _mm_srli_si128::<8>(b1), k);
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), pack4::<S>(r0, r1, r2, r3)) };
            i += 32;
        }
        i
    }

    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn clamp<const S: bool>(input: &[u8], out: &mut [u8], lo: u8, hi: u8) -> usize {
        let n = out.len().min(input.len());
        let (vlo, vhi) = (_mm256_set1_epi8(lo as i8), _mm256_set1_epi8(hi as i8));
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n: in bounds.
            let x = unsafe { _mm256_loadu_si256(input.as_ptr().add(i).cast()) };
            let y = if S {
                _mm256_min_epi8(_mm256_max_epi8(x, vlo), vhi)
            } else {
                _mm256_min_epu8(_mm256_max_epu8(x, vlo), vhi)
            };
            // SAFETY: in bounds, as above.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), y) };
            i += 32;
        }
        i
    }

    /// 256-entry lookup: 16 `vpshufb` on the low nibble, blended by the high nibble.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn lut(table: &[u8; 256], input: &[u8], out: &mut [u8]) -> usize {
        let n = out.len().min(input.len());
        let mut t = [_mm256_setzero_si256(); 16];
        for (k, tk) in t.iter_mut().enumerate() {
            // SAFETY: 16 * k + 16 <= 256: the 16 bytes read lie inside `table`.
            *tk = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(table.as_ptr().add(16 * k).cast()) });
        }
        let nib = _mm256_set1_epi8(0x0F);
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n: in bounds.
            let x = unsafe { _mm256_loadu_si256(input.as_ptr().add(i).cast()) };
            let lo = _mm256_and_si256(x, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), nib);
            let mut r = _mm256_shuffle_epi8(t[0], lo);
            for (k, tk) in t.iter().enumerate().skip(1) {
                let m = _mm256_cmpeq_epi8(hi, _mm256_set1_epi8(k as i8));
                r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(*tk, lo), m);
            }
            // SAFETY: in bounds, as above.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), r) };
            i += 32;
        }
        i
    }
}

/// AVX-512 BW/VL (and VBMI for [`avx512::lut_vbmi`]).
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use crate::elementwise::consts::{AddConsts, MulConsts};
    use crate::x86::masks::{mask16, mask64};

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn widen<const S: bool>(x: __m128i) -> __m512i {
        if S { _mm512_cvtepi8_epi32(x) } else { _mm512_cvtepu8_epi32(x) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn add16<const S: bool>(a: __m128i, b: __m128i, k: &AddConsts) -> __m128i {
        let af = _mm512_cvtepi32_ps(widen::<S>(a));
        let bf = _mm512_cvtepi32_ps(widen::<S>(b));
        let da = _mm512_fmadd_ps(_mm512_set1_ps(k.sa), af, _mm512_set1_ps(k.pa));
        let db = _mm512_fmadd_ps(_mm512_set1_ps(k.sb), bf, _mm512_set1_ps(k.pb));
        let mut c = _mm512_add_ps(da, db);
        if k.relu {
            c = _mm512_max_ps(c, _mm512_setzero_ps());
        }
        let t = _mm512_min_ps(_mm512_mul_ps(c, _mm512_set1_ps(k.inv)), _mm512_set1_ps(2_147_483_520.0));
        let r = _mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(k.zp));
        let (lo, hi) = if S { (-128, 127) } else { (0, 255) };
        _mm512_cvtepi32_epi8(_mm512_min_epi32(
            _mm512_max_epi32(r, _mm512_set1_epi32(lo)),
            _mm512_set1_epi32(hi),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn add<const S: bool>(k: &AddConsts, a: &[u8], b: &[u8], out: &mut [u8]) -> usize {
        let n = out.len().min(a.len()).min(b.len());
        let mut i = 0;
        while i + 64 <= n {
            for j in (0..64).step_by(16) {
                // SAFETY: i + j + 16 <= i + 64 <= n: in bounds.
                let (va, vb) = unsafe {
                    (
                        _mm_loadu_si128(a.as_ptr().add(i + j).cast()),
                        _mm_loadu_si128(b.as_ptr().add(i + j).cast()),
                    )
                };
                let r = add16::<S>(va, vb, k);
                // SAFETY: in bounds, as above.
                unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i + j).cast(), r) };
            }
            i += 64;
        }
        while i < n {
            let m = mask16(n - i);
            // SAFETY: masked loads and stores touch only the first n - i lanes, which are in
            // bounds; masked-off lanes are neither read nor written (no fault, no access).
            unsafe {
                let va = _mm_maskz_loadu_epi8(m, a.as_ptr().add(i).cast());
                let vb = _mm_maskz_loadu_epi8(m, b.as_ptr().add(i).cast());
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, add16::<S>(va, vb, k));
            }
            i += 16;
        }
        n
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn mul16<const S: bool>(a: __m128i, b: __m128i, k: &MulConsts) -> __m128i {
        let da = _mm512_sub_epi32(widen::<S>(a), _mm512_set1_epi32(k.za));
        let db = _mm512_sub_epi32(widen::<S>(b), _mm512_set1_epi32(k.zb));
        let p = _mm512_cvtepi32_ps(_mm512_mullo_epi32(da, db));
        let r = _mm512_add_epi32(
            _mm512_cvtps_epi32(_mm512_mul_ps(p, _mm512_set1_ps(k.multiplier))),
            _mm512_set1_epi32(k.zp),
        );
        let (lo, hi) = if S { (-128, 127) } else { (0, 255) };
        let lo = if k.relu { k.zp.max(lo) } else { lo };
        _mm512_cvtepi32_epi8(_mm512_min_epi32(
            _mm512_max_epi32(r, _mm512_set1_epi32(lo)),
            _mm512_set1_epi32(hi),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn mul<const S: bool>(k: &MulConsts, a: &[u8], b: &[u8], out: &mut [u8]) -> usize {
        let n = out.len().min(a.len()).min(b.len());
        let mut i = 0;
        while i < n {
            let m = mask16(n - i);
            // SAFETY: masked accesses touch only the first min(16, n - i) lanes, in bounds.
            unsafe {
                let va = _mm_maskz_loadu_epi8(m, a.as_ptr().add(i).cast());
                let vb = _mm_maskz_loadu_epi8(m, b.as_ptr().add(i).cast());
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, mul16::<S>(va, vb, k));
            }
            i += 16;
        }
        n
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn clamp<const S: bool>(input: &[u8], out: &mut [u8], lo: u8, hi: u8) -> usize {
        let n = out.len().min(input.len());
        let (vlo, vhi) = (_mm512_set1_epi8(lo as i8), _mm512_set1_epi8(hi as i8));
        let f = |x: __m512i| {
            if S {
                _mm512_min_epi8(_mm512_max_epi8(x, vlo), vhi)
            } else {
                _mm512_min_epu8(_mm512_max_epu8(x, vlo), vhi)
            }
        };
        let mut i = 0;
        while i + 128 <= n {
            // SAFETY: i + 128 <= n: both 64-byte accesses are in bounds.
            unsafe {
                let x0 = _mm512_loadu_si512(input.as_ptr().add(i).cast());
                let x1 = _mm512_loadu_si512(input.as_ptr().add(i + 64).cast());
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), f(x0));
                _mm512_storeu_si512(out.as_mut_ptr().add(i + 64).cast(), f(x1));
            }
            i += 128;
        }
        while i < n {
            let m = mask64(n - i);
            // SAFETY: masked accesses touch only the first min(64, n - i) bytes, in bounds.
            unsafe {
                let x = _mm512_maskz_loadu_epi8(m, input.as_ptr().add(i).cast());
                _mm512_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, f(x));
            }
            i += 64;
        }
        n
    }

    /// 256-entry lookup with AVX-512 BW: 16 masked `vpshufb`, one per high nibble.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(crate) fn lut(table: &[u8; 256], input: &[u8], out: &mut [u8]) -> usize {
        let n = out.len().min(input.len());
        let mut t = [_mm512_setzero_si512(); 16];
        for (k, tk) in t.iter_mut().enumerate() {
            // SAFETY: 16 * k + 16 <= 256: in bounds of `table`.
            *tk = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(table.as_ptr().add(16 * k).cast()) });
        }
        let nib = _mm512_set1_epi8(0x0F);
        let step = |x: __m512i| {
            let lo = _mm512_and_si512(x, nib);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(x), nib);
            let mut r = _mm512_shuffle_epi8(t[0], lo);
            for (k, tk) in t.iter().enumerate().skip(1) {
                let sel = _mm512_cmpeq_epi8_mask(hi, _mm512_set1_epi8(k as i8));
                r = _mm512_mask_shuffle_epi8(r, sel, *tk, lo);
            }
            r
        };
        let mut i = 0;
        while i + 64 <= n {
            // SAFETY: i + 64 <= n: in bounds.
            unsafe {
                let x = _mm512_loadu_si512(input.as_ptr().add(i).cast());
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), step(x));
            }
            i += 64;
        }
        if i < n {
            let m = mask64(n - i);
            // SAFETY: masked accesses touch only the first n - i (< 64) bytes, in bounds.
            unsafe {
                let x = _mm512_maskz_loadu_epi8(m, input.as_ptr().add(i).cast());
                _mm512_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, step(x));
            }
        }
        n
    }

    /// 256-entry lookup with AVX-512 VBMI: two `vpermi2b` over 128-entry halves, blended by bit 7.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma")]
    pub(crate) fn lut_vbmi(table: &[u8; 256], input: &[u8], out: &mut [u8]) -> usize {
        let n = out.len().min(input.len());
        // SAFETY: four 64-byte loads at offsets 0, 64, 128, 192 cover exactly the 256-byte table.
        let (t0, t1, t2, t3) = unsafe {
            let p = table.as_ptr();
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(64).cast()),
                _mm512_loadu_si512(p.add(128).cast()),
                _mm512_loadu_si512(p.add(192).cast()),
            )
        };
        let mut i = 0;
        let step = |x: __m512i| {
            let low = _mm512_permutex2var_epi8(t0, x, t1);
            let high = _mm512_permutex2var_epi8(t2, x, t3);
            _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), low, high)
        };
        while i + 128 <= n {
            // SAFETY: i + 128 <= n: both 64-byte accesses are in bounds.
            unsafe {
                let x0 = _mm512_loadu_si512(input.as_ptr().add(i).cast());
                let x1 = _mm512_loadu_si512(input.as_ptr().add(i + 64).cast());
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), step(x0));
                _mm512_storeu_si512(out.as_mut_ptr().add(i + 64).cast(), step(x1));
            }
            i += 128;
        }
        while i < n {
            let m = mask64(n - i);
            // SAFETY: masked accesses touch only the first min(64, n - i) bytes, in bounds.
            unsafe {
                let x = _mm512_maskz_loadu_epi8(m, input.as_ptr().add(i).cast());
                _mm512_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, step(x));
            }
            i += 64;
        }
        n
    }
}
