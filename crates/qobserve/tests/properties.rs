//! Property tests: parameters are always valid, the observed range is always representable,
//! observing the same data twice leaves MinMax parameters unchanged, and observing a batch
//! repeatedly in one call equals observing it that many times.

use ndarray::{Array1, ArrayD, IxDyn};
use proptest::prelude::*;
use qobserve::{ObserverSpec, QDType, QParams, QScheme, UniformArgs};

fn dtype() -> impl Strategy<Value = QDType> {
    prop_oneof![Just(QDType::QUInt8), Just(QDType::QInt8), Just(QDType::QInt32)]
}

/// Valid per-tensor arguments: any dtype and scheme, reduce_range, custom ranges inside the
/// dtype, and eps; the one combination PyTorch refuses (symmetric + reduce_range + quint8) is
/// left out.
fn per_tensor_args() -> impl Strategy<Value = UniformArgs> {
    (dtype(), any::<bool>(), any::<bool>(), prop::option::of((0i64..=127, 1i64..=127)), -24i32..0)
        .prop_filter_map("valid combination", |(dtype, symmetric, reduce, custom, eps_exp)| {
            let qscheme = if symmetric { QScheme::PerTensorSymmetric } else { QScheme::PerTensorAffine };
            if symmetric && reduce && dtype == QDType::QUInt8 {
                return None;
            }
            let mut a = UniformArgs::per_tensor()
                .dtype(dtype)
                .qscheme(qscheme)
                .reduce_range(reduce)
                .eps(2f32.powi(eps_exp));
            if let Some((lo, hi)) = custom {
                a = match dtype {
                    QDType::QUInt8 => a.quant_range(0, hi + lo),
                    _ => a.quant_range(-lo, hi),
                };
                if reduce && (a.quant_max.unwrap() / 2 - a.quant_min.unwrap().div_euclid(2)) < 1 {
                    return None;
                }
            }
            Some(a)
        })
}

/// Finite data of magnitudes from 1e-30 to 1e30, including exact zeros and one-signed sets.
fn data() -> impl Strategy<Value = Vec<f32>> {
    (-30i32..30, prop::collection::vec(-1.0f32..1.0, 1..200), -1.0f32..1.0).prop_map(|(e, v, shift)| {
        let m = 10f32.powi(e);
        v.into_iter().map(|x| if x.abs() < 0.05 { 0.0 } else { (x + shift) * m }).collect()
    })
}

fn check_valid(qp: &QParams, args: &UniformArgs) -> Result<(), TestCaseError> {
    let (qmin, qmax) =
        qcore::calculate_qmin_qmax(args.quant_min, args.quant_max, args.dtype, args.reduce_range).unwrap();
    let QParams::PerTensor { scale, zero_point } = *qp else { return Err(TestCaseError::fail("per tensor")) };
    prop_assert!(qcore::inverse_scale("test", scale).is_ok(), "scale {scale}");
    prop_assert!(scale >= f64::from(args.eps), "scale {scale} below eps");
    prop_assert!((qmin..=qmax).contains(&zero_point), "zero point {zero_point} outside [{qmin}, {qmax}]");
    Ok(())
}

fn observe(spec: &ObserverSpec, batches: &[&[f32]]) -> Box<dyn qobserve::Observer> {
    let mut obs = spec.build().unwrap();
    for b in batches {
        obs.observe(Array1::from(b.to_vec()).into_dyn().view()).unwrap();
    }
    obs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn qparams_are_always_valid(args in per_tensor_args(), a in data(), b in data()) {
        let specs = [
            ObserverSpec::MinMax { args },
            ObserverSpec::MovingAverageMinMax { averaging_constant: 0.3, args },
            ObserverSpec::Histogram { bins: 256, upsample_rate: 16, args },
            ObserverSpec::Percentile { percentile: 99.0, bins: 256, args },
            ObserverSpec::Entropy { bins: 512, args },
            ObserverSpec::Mse { bins: 256, args },
        ];
        for spec in &specs {
            let obs = observe(spec, &[&a, &b]);
            let qp = obs.calculate_qparams().map_err(|e| TestCaseError::fail(format!("{}: {e}", spec.name())))?;
            check_valid(&qp, &args)?;
        }
    }

    #[test]
    fn the_observed_range_is_representable(args in per_tensor_args(), a in data()) {
        // 8-bit only: qint32 quantization adds the zero point in f32 and is not exact above 2^24.
        prop_assume!(args.dtype != QDType::QInt32);
        let obs = observe(&ObserverSpec::MinMax { args }, &[&a]);
        let qp = obs.calculate_qparams().unwrap();
        let QParams::PerTensor { scale, zero_point } = qp else { unreachable!() };
        let x = Array1::from(a.clone());
        let dq = qcore::quantize_per_tensor(&x, scale, zero_point, args.dtype).unwrap().dequantize();
        let step = scale as f32;
        for (&v, &d) in a.iter().zip(dq.iter()) {
            // Half a step of rounding, plus float slack on the step and on v itself.
            let tol = 0.5 * step * (1.0 + 1e-5) + v.abs() * 1e-6;
            prop_assert!((v - d).abs() <= tol, "x {v} -> {d} with scale {scale}, zero point {zero_point}");
        }
    }

    #[test]
    fn observing_the_same_data_twice_changes_nothing(args in per_tensor_args(), a in data()) {
        let once = observe(&ObserverSpec::MinMax { args }, &[&a]);
        let twice = observe(&ObserverSpec::MinMax { args }, &[&a, &a]);
        prop_assert_eq!(once.calculate_qparams().unwrap(), twice.calculate_qparams().unwrap());
        prop_assert_eq!(once.stats().range, twice.stats().range);
    }

    #[test]
    fn per_channel_qparams_are_valid_and_idempotent(
        rows in 1usize..6, cols in 1usize..9, seed in data(), axis in -2i64..2, sym in any::<bool>(), dt in dtype(),
    ) {
        let n = rows * cols;
        let values: Vec<f32> = (0..n).map(|i| seed[i % seed.len()] * (1.0 + (i % 3) as f32)).collect();
        let x = ArrayD::from_shape_vec(IxDyn(&[rows, cols]), values).unwrap();
        let qscheme = if sym { QScheme::PerChannelSymmetric } else { QScheme::PerChannelAffine };
        let args = UniformArgs::per_channel().dtype(dt).qscheme(qscheme);
        let spec = ObserverSpec::PerChannelMinMax { ch_axis: axis, args };
        let mut obs = spec.build().unwrap();
        obs.observe(x.view()).unwrap();
        let first = obs.calculate_qparams().unwrap();
        obs.observe(x.view()).unwrap();
        prop_assert_eq!(&first, &obs.calculate_qparams().unwrap());
        let QParams::PerChannel { scales, zero_points, axis: resolved } = first else { unreachable!() };
        prop_assert_eq!(resolved, if axis < 0 { (axis + 2) as usize } else { axis as usize });
        prop_assert_eq!(scales.len(), x.shape()[resolved]);
        let (qmin, qmax) = qcore::calculate_qmin_qmax(None, None, dt, false).unwrap();
        for (s, z) in scales.iter().zip(&zero_points) {
            prop_assert!(qcore::inverse_scale("test", *s).is_ok());
            prop_assert!((qmin..=qmax).contains(z));
        }
    }

    #[test]
    fn observing_repeatedly_equals_observing_that_many_times(
        batches in prop::collection::vec(data(), 1..4),
        times in 0usize..4,
    ) {
        for spec in [ObserverSpec::histogram(), ObserverSpec::moving_average_min_max(), ObserverSpec::min_max()] {
            let (mut once, mut repeated) = (spec.build().unwrap(), spec.build().unwrap());
            for b in &batches {
                let x = Array1::from(b.clone()).into_dyn();
                for _ in 0..times {
                    once.observe(x.view()).unwrap();
                }
                repeated.observe_repeated(x.view(), times).unwrap();
            }
            prop_assert_eq!(once.state(), repeated.state(), "{}", spec.name());
        }
    }

    #[test]
    fn arbitrary_bits_never_panic(bits in prop::collection::vec(any::<u32>(), 0..64)) {
        let x = Array1::from_iter(bits.iter().map(|&b| f32::from_bits(b))).into_dyn();
        for spec in [ObserverSpec::min_max(), ObserverSpec::histogram(), ObserverSpec::entropy(), ObserverSpec::mse(), ObserverSpec::percentile(99.0), ObserverSpec::per_channel_min_max()] {
            let mut obs = spec.build().unwrap();
            let _ = obs.observe(x.view());
            if let Ok(qp) = obs.calculate_qparams() {
                match qp {
                    QParams::PerTensor { scale, .. } => prop_assert!(qcore::inverse_scale("t", scale).is_ok()),
                    QParams::PerChannel { scales, .. } => prop_assert!(scales.iter().all(|s| qcore::inverse_scale("t", *s).is_ok())),
                    QParams::PerChannelFloat { .. } => {}
                }
            }
        }
    }
}
