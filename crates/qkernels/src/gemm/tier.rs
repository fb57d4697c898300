//! The per-tier vector operations the generic GEMM and depthwise loops are written in.
//!
//! A tier is a type implementing [`Tier`]: `LANES` i32 accumulator lanes, a prepared activation
//! dword (4 u8 of one row, broadcast), a prepared weight vector (`LANES` x 4 i8 of the packed
//! panel) and an exact 4-deep dot product. The output pipeline operations implement qcore's
//! `ConvRequant` arithmetic lane by lane. Every method is `#[inline]` and, on x86, compiled with
//! the tier's target features, so it inlines into the `#[target_feature]` entry points of
//! `crate::x86::gemm`, which are the only callers. The scalar tier is here; the x86 tiers are in
//! `crate::x86::gemm`.

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
    /// then `min(y, 32767) + zp` clamped to `[lo, hi]`, which equals the saturating i16 pack,
    /// `+ zp`, u8 pack, ReLU floor `lo` (0 or zp) and ceiling `hi` (255 unless the pipeline has a
    /// range), for `0 <= lo <= hi <= 255`. Lanes hold values in 0..=255.
    unsafe fn requant(
        acc: Self::V,
        bias: Self::F,
        mult: Self::F,
        zp: Self::V,
        lo: Self::V,
        hi: Self::V,
    ) -> Self::V;
    /// `store_u8(p, requant(acc, bias, mult, splat(zp), splat(lo), splat(hi)), count)`; tiers may
    /// fuse it.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn requant_store_u8(
        p: *mut u8,
        acc: Self::V,
        bias: Self::F,
        mult: Self::F,
        zp: i32,
        lo: i32,
        hi: i32,
        count: usize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            let (zp, lo, hi) = (Self::splat(zp), Self::splat(lo), Self::splat(hi));
            Self::store_u8(p, Self::requant(acc, bias, mult, zp, lo, hi), count)
        }
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
    unsafe fn requant(acc: i32, bias: f32, mult: f32, zp: i32, lo: i32, hi: i32) -> i32 {
        let y = cvt_f32_to_i32_x86((acc as f32 + bias) * mult);
        (y.min(32767) + zp).max(lo).min(hi)
    }
    #[inline(always)]
    unsafe fn dequant(acc: i32, scale: f32, bias: f32, relu: bool) -> f32 {
        // One rounding: FBGEMM's AVX2 `requantizeForFloatAvx2` mul + add, contracted to FMA by
        // the compiler PyTorch is built with.
        let y = (acc as f32).mul_add(scale, bias);
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
