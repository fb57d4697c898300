//! Property tests of the saturation semantics: quantization lands in range, round-trips, errs by
//! at most half a step, is monotone, and requantization saturates instead of overflowing.
//!
//! PyTorch's per-tensor quint8/qint8 rule adds the zero point with a wrapping i32 add after
//! clipping `x / scale` at 2^31 - 128 (NUMERICS.md), so values beyond about 2^31 quantization
//! steps can wrap, and we reproduce that bit for bit. The monotonicity properties of that rule
//! are therefore stated for `|x / scale| < 2^31 - 256`, every value short of that absurd range;
//! the scalar rule (`quantize_val`) is monotone over every non-NaN input.

use ndarray::Array1;
use proptest::prelude::*;
use qcore::requant::{AddRequant, BiasTerm, ConvRequant, MulRequant};
use qcore::{
    AffineQuantizer, QDType, dequantize_per_channel_val, dequantize_val, quantize_per_channel, quantize_val,
};

fn dtype() -> impl Strategy<Value = QDType> {
    prop_oneof![Just(QDType::QUInt8), Just(QDType::QInt8), Just(QDType::QInt32)]
}

fn dtype8() -> impl Strategy<Value = QDType> {
    prop_oneof![Just(QDType::QUInt8), Just(QDType::QInt8)]
}

/// Scales from 1e-30 to 1e30, log-uniform, as doubles that are not always f32-exact.
fn scale() -> impl Strategy<Value = f64> {
    (-30.0f64..30.0).prop_map(|e| 10f64.powf(e))
}

fn zero_point(dtype: QDType) -> impl Strategy<Value = i64> {
    dtype.min()..=dtype.max()
}

/// Any f32 at all: every bit pattern, NaNs and infinities included.
fn any_f32() -> impl Strategy<Value = f32> {
    any::<u32>().prop_map(f32::from_bits)
}

const F32_WRAP_FREE: f32 = 2_147_483_392.0; // 2^31 - 256

proptest! {
    #[test]
    fn quantize_always_lands_in_the_dtype_range(
        (dtype, zp) in dtype().prop_flat_map(|d| (Just(d), zero_point(d))),
        scale in scale(),
        x in any_f32(),
    ) {
        let q = AffineQuantizer::new(scale, zp, dtype).unwrap();
        for v in [q.quantize(x), quantize_val(scale, zp, x, dtype)] {
            prop_assert!((dtype.min()..=dtype.max()).contains(&i64::from(v)), "{v} outside {dtype}");
        }
    }

    #[test]
    fn quantize_of_dequantize_is_the_identity(
        (dtype, zp, qv) in dtype8().prop_flat_map(|d| (Just(d), zero_point(d), zero_point(d))),
        scale in scale(),
    ) {
        let q = AffineQuantizer::new(scale, zp, dtype).unwrap();
        let x = dequantize_val(scale, zp, qv as i32);
        prop_assert_eq!(q.quantize(x), qv as i32);
        let xc = dequantize_per_channel_val(scale, zp, qv as i32);
        prop_assert_eq!(quantize_val(scale, zp, xc, dtype), qv as i32);
    }

    #[test]
    fn qint32_round_trips_where_f32_holds_the_value_exactly(
        zp in -1_000_000i64..1_000_000,
        offset in -(1i64 << 22)..(1i64 << 22),
        scale in (-10.0f64..10.0).prop_map(|e| 10f64.powf(e)),
    ) {
        let qv = (zp + offset) as i32;
        let q = AffineQuantizer::new(scale, zp, QDType::QInt32).unwrap();
        prop_assert_eq!(q.quantize(dequantize_val(scale, zp, qv)), qv);
    }

    #[test]
    fn quantization_error_is_at_most_half_a_step_in_range(
        (dtype, zp) in dtype8().prop_flat_map(|d| (Just(d), zero_point(d))),
        scale in scale(),
        t in 0.0f64..=1.0,
    ) {
        let s = scale as f32 as f64;
        let (lo, hi) = ((dtype.min() - zp) as f64 * s, (dtype.max() - zp) as f64 * s);
        let x = (lo + t * (hi - lo)) as f32;
        let q = AffineQuantizer::new(scale, zp, dtype).unwrap();
        let back = dequantize_val(scale, zp, q.quantize(x));
        // Half a step, plus the f32 rounding of x / scale and of the dequantized product.
        let bound = s / 2.0 * (1.0 + 1e-6) + f64::from(x.abs()) * 1e-6;
        prop_assert!((f64::from(back) - f64::from(x)).abs() <= bound, "x={x} back={back} scale={s}");
    }

    #[test]
    fn quantize_is_monotone(
        (dtype, zp) in dtype().prop_flat_map(|d| (Just(d), zero_point(d))),
        scale in scale(),
        a in any_f32(),
        b in any_f32(),
    ) {
        prop_assume!(!a.is_nan() && !b.is_nan());
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(quantize_val(scale, zp, lo, dtype) <= quantize_val(scale, zp, hi, dtype));
        let q = AffineQuantizer::new(scale, zp, dtype).unwrap();
        let wrap_free = |x: f32| (x * q.inv_scale()).abs() < F32_WRAP_FREE;
        if wrap_free(lo) && wrap_free(hi) {
            prop_assert!(q.quantize(lo) <= q.quantize(hi), "{lo} -> {}, {hi} -> {}", q.quantize(lo), q.quantize(hi));
        }
    }

    #[test]
    fn per_channel_quantize_saturates_per_channel(
        values in proptest::collection::vec(-1e6f32..1e6, 12),
        scales in proptest::collection::vec(scale(), 3),
        zps in proptest::collection::vec(-128i64..=127, 3),
    ) {
        let x = Array1::from(values).into_shape_with_order((3, 4)).unwrap();
        let q = quantize_per_channel(&x, &scales, &zps, 0, QDType::QInt8).unwrap();
        for ((row, v), (&s, &zp)) in q.int_repr().to_i32().outer_iter().zip(x.outer_iter()).zip(scales.iter().zip(&zps)) {
            for (&qv, &xv) in row.iter().zip(v.iter()) {
                prop_assert!((-128..=127).contains(&qv), "{xv} -> {qv}");
                prop_assert_eq!(qv, quantize_val(s, zp, xv, QDType::QInt8));
            }
        }
    }

    #[test]
    fn conv_requantize_saturates_and_is_monotone(
        acc_a in any::<i32>(),
        acc_b in any::<i32>(),
        act_scale in 1e-4f64..1.0,
        w_scale in 1e-4f64..1.0,
        out_scale in 1e-3f64..10.0,
        bias in -100.0f32..100.0,
        zp in any::<u8>(),
        relu in any::<bool>(),
        per_channel in any::<bool>(),
    ) {
        let r = ConvRequant::new(act_scale, w_scale, out_scale).unwrap();
        prop_assume!(r.multiplier() <= 1.0);
        let mode = if per_channel { BiasTerm::Division } else { BiasTerm::Reciprocal };
        let bias_term = r.bias_term(bias, mode);
        let (lo, hi) = if acc_a <= acc_b { (acc_a, acc_b) } else { (acc_b, acc_a) };
        let (ql, qh) = (r.requantize(lo, bias_term, zp, relu), r.requantize(hi, bias_term, zp, relu));
        prop_assert!(ql <= qh, "acc {lo} -> {ql}, {hi} -> {qh}");
        if relu {
            prop_assert!(ql >= zp);
        }
        // Extreme accumulators saturate instead of wrapping (any multiplier >= 1e-6 reaches 255
        // from i32::MAX).
        if r.multiplier() >= 1e-6 {
            prop_assert_eq!(r.requantize(i32::MAX, bias_term, zp, relu), 255);
            prop_assert_eq!(r.requantize(i32::MIN, bias_term, zp, relu), if relu { zp } else { 0 });
        }
    }

    #[test]
    fn add_and_mul_saturate_and_are_monotone(
        (dtype, za, zb, zo) in dtype8().prop_flat_map(|d| (Just(d), zero_point(d), zero_point(d), zero_point(d))),
        (sa, sb, so) in (1e-4f64..10.0, 1e-4f64..10.0, 1e-4f64..10.0),
        (a1, a2, b) in (-128i32..=255, -128i32..=255, -128i32..=255),
        relu in any::<bool>(),
    ) {
        let clamp = |v: i32| v.clamp(dtype.min() as i32, dtype.max() as i32);
        let (a1, a2, b) = (clamp(a1), clamp(a2), clamp(b));
        let (lo, hi) = if a1 <= a2 { (a1, a2) } else { (a2, a1) };
        let add = AddRequant::new((sa, za), (sb, zb), (so, zo), dtype, relu).unwrap();
        prop_assert!(add.apply(lo, b) <= add.apply(hi, b));
        let mul = MulRequant::new((sa, za), (sb, zb), (so, zo), dtype, relu).unwrap();
        let (m1, m2) = (mul.apply(lo, b), mul.apply(hi, b));
        for v in [add.apply(lo, b), add.apply(hi, b), m1, m2] {
            prop_assert!((dtype.min()..=dtype.max()).contains(&i64::from(v)));
            if relu {
                prop_assert!(i64::from(v) >= zo);
            }
        }
        // The product is monotone in `a` in the direction of the sign of (b - zb).
        if b as i64 >= zb { prop_assert!(m1 <= m2) } else { prop_assert!(m1 >= m2) }
    }
}

/// PyTorch's scalar loop of `quantized::add`: plain dequantize, f32 sum, `quantize_val`. It
/// agrees with the FMA vector rule except where one f32 ulp moves the sum across a rounding tie,
/// and then by exactly 1. Example from the layout fixtures: inputs at scale 0.1 and an output at
/// 0.2 make ties of every odd sum.
#[test]
fn add_scalar_loop_is_the_plain_rule_and_differs_from_the_vector_body_by_at_most_one() {
    let (qa, qb, qo) = ((0.1, 117), (0.1, 99), (0.2, 128));
    for relu in [false, true] {
        let add = AddRequant::new(qa, qb, qo, QDType::QUInt8, relu).unwrap();
        let mut differing = 0;
        for a in 0..=255 {
            for b in 0..=255 {
                let sum = dequantize_val(qa.0, qa.1, a) + dequantize_val(qb.0, qb.1, b);
                let sum = if relu { sum.max(0.0) } else { sum };
                let expected = quantize_val(qo.0, qo.1, sum, QDType::QUInt8);
                let got = add.apply_scalar_loop(a, b);
                assert_eq!(got, expected, "a {a}, b {b}");
                let vector = add.apply(a, b);
                assert!((got - vector).abs() <= 1, "a {a}, b {b}: {got} vs {vector}");
                differing += usize::from(got != vector);
            }
        }
        assert!(differing > 1000, "the two rules differ on {differing} pairs");
    }
}
