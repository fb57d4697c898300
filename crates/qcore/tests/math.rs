//! The SLEEF ports of `qcore::math` keep SLEEF's error bounds and special values: `exp_u10` and
//! `tanh_u10` within 1 ulp of the exact function (computed in f64) over dense sweeps, and the
//! documented results at the thresholds, infinities and NaN.

use qcore::math::{exp_u10, sigmoid_nan, sigmoid_scalar, sigmoid_vector_lane, tanh_u10};

/// The distance in representable floats between two finite floats of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

/// `steps + 1` evenly spaced floats from `lo` to `hi`.
fn sweep(lo: f32, hi: f32, steps: u32) -> impl Iterator<Item = f32> {
    (0..=steps).map(move |i| lo + (hi - lo) * (i as f32 / steps as f32))
}

#[test]
fn exp_u10_is_within_one_ulp() {
    // Above ~88.72 e^x overflows f32, below ~-87.3 the result is subnormal (ulps compress there).
    for x in sweep(-87.0, 88.7, 400_000) {
        let exact = f64::from(x).exp() as f32;
        assert!(ulps(exp_u10(x), exact) <= 1, "exp_u10({x:e}) = {:e}, exact {exact:e}", exp_u10(x));
    }
}

#[test]
fn exp_u10_thresholds_and_specials() {
    assert_eq!(exp_u10(0.0), 1.0);
    assert_eq!(exp_u10(-0.0), 1.0);
    assert_eq!(exp_u10(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp_u10(f32::NEG_INFINITY).to_bits(), 0);
    assert_eq!(exp_u10(100.01), f32::INFINITY);
    assert_eq!(exp_u10(89.0), f32::INFINITY);
    assert_eq!(exp_u10(-104.01).to_bits(), 0);
    assert!(exp_u10(-103.0) > 0.0, "subnormal results above -104");
    assert!(exp_u10(f32::NAN).is_nan());
}

#[test]
fn tanh_u10_is_within_one_ulp_and_saturates() {
    for x in sweep(-8.66, 8.66, 400_000) {
        let exact = f64::from(x).tanh() as f32;
        assert!(ulps(tanh_u10(x), exact) <= 1, "tanh_u10({x:e}) = {:e}, exact {exact:e}", tanh_u10(x));
    }
    assert_eq!(tanh_u10(8.67), 1.0);
    assert_eq!(tanh_u10(-1e30), -1.0);
    assert_eq!(tanh_u10(f32::INFINITY), 1.0);
    assert_eq!(tanh_u10(-0.0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(tanh_u10(1e-40), 1e-40);
}

#[test]
fn sigmoid_lanes_agree_within_four_ulps_and_keep_the_nan_rule() {
    for x in sweep(-100.0, 100.0, 200_000) {
        let (v, s) = (sigmoid_vector_lane(x), sigmoid_scalar(x));
        // Each exp is within 1 ulp; `1 + e` and the division round again.
        assert!(ulps(v, s) <= 4, "sigmoid({x:e}): {v:e} vs {s:e}");
    }
    assert_eq!(sigmoid_vector_lane(f32::NAN).to_bits(), sigmoid_nan(f32::NAN).to_bits());
    assert_eq!(sigmoid_vector_lane(-f32::NAN).to_bits(), 0x7fc0_0000);
    assert_eq!(sigmoid_vector_lane(90.0), 1.0);
    assert_eq!(sigmoid_vector_lane(-110.0).to_bits(), 0);
}
