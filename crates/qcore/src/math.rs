//! PyTorch's float `sigmoid` and `tanh` on x86, one value at a time: the scalar oracle of the
//! vector kernels in `qkernels::float`.
//!
//! ATen's CPU kernels compute these functions two ways (`docs/NUMERICS.md`, section 12):
//!
//! * its vector body (`Vectorized<float>`, the AVX2 or AVX-512 build) calls SLEEF's `expf_u10`
//!   and `tanhf_u10` in their FMA variants: [`exp_u10`], [`tanh_u10`], [`sigmoid_vector_lane`];
//! * the scalar tail of a sigmoid loop calls the C library's `expf`: [`sigmoid_scalar`].
//!
//! The SLEEF functions here are ports of the operation sequence of SLEEF's `xexpf` and `xtanhf`
//! (`src/libm/sleefsimdsp.c`, double-float helpers of `src/common/df.h` with `ENABLE_FMA_SP`):
//! every `vmla`/`vfma` is an [`f32::mul_add`], every other step one rounded `f32` operation, the
//! float-to-int conversion `cvtps2dq` (round to nearest even, `i32::MIN` when out of range).
//!
//! ```
//! use qcore::math::{exp_u10, sigmoid_scalar, sigmoid_vector_lane};
//!
//! assert_eq!(exp_u10(0.0), 1.0);
//! assert_eq!(exp_u10(-200.0), 0.0);
//! assert_eq!(sigmoid_vector_lane(0.0), 0.5);
//! assert_eq!(sigmoid_scalar(-200.0), 0.0);
//! ```

// SLEEF's decimal constants are kept digit for digit, so they can be compared with its source;
// each parses to the same `f32` as its shortest form.
#![allow(clippy::excessive_precision)]

use crate::scalar::cvt_f32_to_i32_x86;

/// `1 / ln 2` (SLEEF's `R_LN2f`).
pub const R_LN2: f32 = std::f32::consts::LOG2_E;
/// The high part of `ln 2` (SLEEF's `L2Uf`): its low bits are zero, so `q * L2U` is exact.
pub const L2U: f32 = 0.693_145_751_953_125;
/// The low part of `ln 2` (SLEEF's `L2Lf`).
pub const L2L: f32 = 1.428_606_765_330_187e-6;
/// The polynomial of [`exp_u10`], highest degree first (Horner with FMA, then `1 + s + s^2 u`).
pub const EXP_POLY: [f32; 6] = [
    0.000_198_527_617_612_853_646_278_381,
    0.001_393_043_552_525_341_510_772_71,
    0.008_333_360_776_305_198_669_433_59,
    0.041_666_485_369_205_474_853_515_6,
    0.166_666_671_633_720_397_949_219,
    0.5,
];
/// [`exp_u10`] is `+0.0` for inputs below this.
pub const EXP_UNDERFLOW: f32 = -104.0;
/// [`exp_u10`] is `+inf` for inputs above this.
pub const EXP_OVERFLOW: f32 = 100.0;

/// `2^q` for `-126 <= q <= 127`, built in the exponent field as SLEEF's `vpow2i_vf_vi2` does
/// (wrapping integer arithmetic outside that range, as the vector instructions).
#[inline(always)]
fn pow2i(q: i32) -> f32 {
    f32::from_bits((q.wrapping_add(0x7f) as u32) << 23)
}

/// `d * 2^e` in two steps (SLEEF's `vldexp2_vf_vf_vi2`): `d * 2^(e >> 1) * 2^(e - (e >> 1))`.
#[inline(always)]
fn ldexp2(d: f32, e: i32) -> f32 {
    let half = e >> 1;
    d * pow2i(half) * pow2i(e.wrapping_sub(half))
}

/// `q = cvtps2dq(x * (1 / ln 2))` as SLEEF's `vrint_vi2_vf` on x86.
#[inline(always)]
fn rint(x: f32) -> i32 {
    cvt_f32_to_i32_x86(x)
}

/// The vector `andnot(mask, bits)` SLEEF uses to flush a result to `+0.0`: `+0.0` if `cond`.
#[inline(always)]
fn zero_if(cond: bool, x: f32) -> f32 {
    if cond { 0.0 } else { x }
}

/// SLEEF's `expf_u10` (`xexpf`, FMA build), the `exp` of ATen's `Vectorized<float>`.
///
/// `0` below -104, `+inf` above 100, NaN for NaN; at most 1 ulp from `e^d`.
///
/// ```
/// assert_eq!(qcore::math::exp_u10(1.0), std::f32::consts::E);
/// assert_eq!(qcore::math::exp_u10(100.5), f32::INFINITY);
/// ```
#[inline(always)]
pub fn exp_u10(d: f32) -> f32 {
    let q = rint(d * R_LN2);
    let qf = q as f32;
    let mut s = qf.mul_add(-L2U, d);
    s = qf.mul_add(-L2L, s);

    let mut u = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        u = u.mul_add(s, *c);
    }
    u = 1.0 + (s * s).mul_add(u, s);

    u = ldexp2(u, q);
    u = zero_if(d < EXP_UNDERFLOW, u);
    if EXP_OVERFLOW < d { f32::INFINITY } else { u }
}

/// A double-float `x + y` (`y` the rounding error of `x`), SLEEF's `vfloat2`.
#[derive(Clone, Copy)]
struct F2 {
    x: f32,
    y: f32,
}

/// `dfadd2_vf2_vf2_vf`: `a + b` without an order assumption.
#[inline(always)]
fn add2_f2_f(a: F2, b: f32) -> F2 {
    let s = a.x + b;
    let v = s - a.x;
    let t = (a.x - (s - v)) + (b - v);
    F2 { x: s, y: t + a.y }
}

/// `dfadd2_vf2_vf2_vf2`: `a + b` without an order assumption.
#[inline(always)]
fn add2_f2_f2(a: F2, b: F2) -> F2 {
    let s = a.x + b.x;
    let v = s - a.x;
    let t = (a.x - (s - v)) + (b.x - v);
    F2 { x: s, y: t + (a.y + b.y) }
}

/// `dfadd_vf2_vf_vf2`: `a + b` for `|a| >= |b|`.
#[inline(always)]
fn add_f_f2(a: f32, b: F2) -> F2 {
    let s = a + b.x;
    F2 { x: s, y: ((a - s) + b.x) + b.y }
}

/// `dfadd_vf2_vf2_vf2`: `a + b` for `|a| >= |b|`.
#[inline(always)]
fn add_f2_f2(a: F2, b: F2) -> F2 {
    let s = a.x + b.x;
    F2 { x: s, y: (((a.x - s) + b.x) + a.y) + b.y }
}

/// `dfneg_vf2_vf2`.
#[inline(always)]
fn neg(a: F2) -> F2 {
    F2 { x: -a.x, y: -a.y }
}

/// `dfmul_vf2_vf2_vf` (FMA): `a * b`.
#[inline(always)]
fn mul_f2_f(a: F2, b: f32) -> F2 {
    let s = a.x * b;
    F2 { x: s, y: a.y.mul_add(b, a.x.mul_add(b, -s)) }
}

/// `dfmul_vf2_vf2_vf2` (FMA): `a * b`.
#[inline(always)]
fn mul_f2_f2(a: F2, b: F2) -> F2 {
    let s = a.x * b.x;
    F2 { x: s, y: a.x.mul_add(b.y, a.y.mul_add(b.x, a.x.mul_add(b.x, -s))) }
}

/// `dfsqu_vf2_vf2` (FMA): `a * a`.
#[inline(always)]
fn square(a: F2) -> F2 {
    let s = a.x * a.x;
    F2 { x: s, y: (a.x + a.x).mul_add(a.y, a.x.mul_add(a.x, -s)) }
}

/// `dfrec_vf2_vf2` (FMA): `1 / d`.
#[inline(always)]
fn recip(d: F2) -> F2 {
    let s = 1.0 / d.x;
    F2 { x: s, y: s * (-d.y).mul_add(s, (-d.x).mul_add(s, 1.0)) }
}

/// `dfdiv_vf2_vf2_vf2` (FMA): `n / d`.
#[inline(always)]
fn div(n: F2, d: F2) -> F2 {
    let t = 1.0 / d.x;
    let s = n.x * t;
    let u = t.mul_add(n.x, -s);
    let v = (-d.y).mul_add(t, (-d.x).mul_add(t, 1.0));
    F2 { x: s, y: s.mul_add(v, n.y.mul_add(t, u)) }
}

/// SLEEF's `expk2f`: `e^d` of a double-float, as a double-float.
#[inline(always)]
fn expk2(d: F2) -> F2 {
    let q = rint((d.x + d.y) * R_LN2);
    let qf = q as f32;
    let mut s = add2_f2_f(d, qf * -L2U);
    s = add2_f2_f(s, qf * -L2L);

    let mut u = 0.198_096_022_4e-3_f32;
    u = u.mul_add(s.x, 0.139_425_648_4e-2);
    u = u.mul_add(s.x, 0.833_345_670_3e-2);
    u = u.mul_add(s.x, 0.416_663_736_1e-1);

    let mut t = add2_f2_f(mul_f2_f(s, u), 0.166_666_659_414_234_244_790_680_580_464);
    t = add2_f2_f(mul_f2_f2(s, t), 0.5);
    t = add2_f2_f2(s, mul_f2_f2(square(s), t));
    t = add_f_f2(1.0, t);

    let flush = d.x < EXP_UNDERFLOW;
    F2 { x: zero_if(flush, ldexp2(t.x, q)), y: zero_if(flush, ldexp2(t.y, q)) }
}

/// PyTorch's float `tanh` as closely as open code reproduces it: `tanh` in `f64` rounded to
/// `f32`.
///
/// PyTorch's x86 wheels (built with MKL) compute `torch.tanh` with MKL's `vmsTanh` in its
/// high-accuracy mode (`aten/src/ATen/cpu/vml.h`), closed source and not correctly rounded; this
/// rounding of the `f64` result agrees with it on 99.6% of the floats in [-10, 10] and differs
/// by one ulp elsewhere (the `f32` C library `tanhf` agrees on 94.5%, SLEEF's `tanhf_u10`, which
/// PyTorch builds without MKL use, on 96.1%).
///
/// ```
/// assert_eq!(qcore::math::tanh_value(0.5), 0.46211717);
/// ```
#[inline]
pub fn tanh_value(x: f32) -> f32 {
    (f64::from(x)).tanh() as f32
}

/// SLEEF's `tanhf_u10` (`xtanhf`, FMA build), the `tanh` of ATen's `Vectorized<float>`.
///
/// `±1` beyond `|x| > 8.664339742`; NaN input gives the NaN with every bit set (`0xffff_ffff`),
/// as the vector `or` with the NaN mask does.
///
/// ```
/// assert_eq!(qcore::math::tanh_u10(0.0), 0.0);
/// assert_eq!(qcore::math::tanh_u10(-9.0), -1.0);
/// assert_eq!(qcore::math::tanh_u10(f32::NAN).to_bits(), 0xffff_ffff);
/// ```
#[inline(always)]
pub fn tanh_u10(x: f32) -> f32 {
    let a = x.abs();
    let d = expk2(F2 { x: a, y: 0.0 });
    let e = recip(d);
    let r = div(add_f2_f2(d, neg(e)), add_f2_f2(d, e));
    let mut y = r.x + r.y;
    if a > 8.664_339_742 || y.is_nan() {
        y = 1.0;
    }
    // `vmulsign`: the sign bit of x moved onto y.
    y = f32::from_bits(y.to_bits() ^ (x.to_bits() & SIGN_BIT));
    if x.is_nan() { f32::from_bits(u32::MAX) } else { y }
}

/// One lane of ATen's vector sigmoid (`sigmoid_kernel`, `native/cpu/UnaryOpsKernel.cpp`):
/// `1 / (1 + exp_u10(-x))`, each step rounded to `f32`. A NaN comes out as `-x` quieted (sign
/// flipped, quiet bit set), as PyTorch 2.15's results show; it is set explicitly, since compilers
/// may fold the negation into an FMA and keep the sign.
///
/// ```
/// assert_eq!(qcore::math::sigmoid_vector_lane(f32::NEG_INFINITY), 0.0);
/// assert_eq!(qcore::math::sigmoid_vector_lane(f32::INFINITY), 1.0);
/// ```
#[inline(always)]
pub fn sigmoid_vector_lane(x: f32) -> f32 {
    if x.is_nan() { sigmoid_nan(x) } else { 1.0 / (1.0 + exp_u10(-x)) }
}

/// The NaN PyTorch's vector sigmoid returns for the NaN `x`: `-x` with the quiet bit set.
///
/// ```
/// assert_eq!(qcore::math::sigmoid_nan(f32::NAN).to_bits(), 0xffc0_0000);
/// assert_eq!(qcore::math::sigmoid_nan(f32::from_bits(0xff80_0001)).to_bits(), 0x7fc0_0001);
/// ```
#[inline(always)]
pub fn sigmoid_nan(x: f32) -> f32 {
    f32::from_bits((x.to_bits() ^ SIGN_BIT) | QUIET_BIT)
}

/// The sign bit of an `f32`.
pub const SIGN_BIT: u32 = 0x8000_0000;
/// The quiet bit of an `f32` NaN.
pub const QUIET_BIT: u32 = 0x0040_0000;

/// ATen's scalar sigmoid (the tail of each contiguous run and every strided element):
/// `1 / (1 + expf(-x))` with the C library's `expf` (Rust's [`f32::exp`] is that function on
/// Linux).
///
/// ```
/// assert_eq!(qcore::math::sigmoid_scalar(0.0), 0.5);
/// ```
#[inline(always)]
pub fn sigmoid_scalar(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
