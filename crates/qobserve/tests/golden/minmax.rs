//! MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMinMaxObserver and
//! MovingAveragePerChannelMinMaxObserver: running statistics, scales and zero points bit-identical
//! to PyTorch on every case.

use qobserve::{ObservedRange, QParams};

use crate::fixture::{self, assert_bits, name, spec};

#[test]
fn minmax_family_is_bit_exact() {
    let fx = fixture::load("minmax");
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for case in &fx.cases {
        let n = name(case);
        let mut obs = spec(case).build().unwrap_or_else(|e| panic!("{n}: {e}"));
        for x in fixture::batches(&fx, case) {
            obs.observe(x.view()).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        let (mins, maxs) = match obs.stats().range.unwrap_or_else(|| panic!("{n}: no range")) {
            ObservedRange::PerTensor { min, max } => (vec![min], vec![max]),
            ObservedRange::PerChannel { min, max, .. } => (min, max),
        };
        let exp_min = fx.tensor::<f32>(n, "min_val");
        let exp_max = fx.tensor::<f32>(n, "max_val");
        assert_eq!(mins.len(), exp_min.len(), "{n}: channels");
        for (i, (g, e)) in mins.iter().zip(exp_min.iter()).enumerate() {
            assert_bits(n, &format!("min_val[{i}]"), *g, *e);
        }
        for (i, (g, e)) in maxs.iter().zip(exp_max.iter()).enumerate() {
            assert_bits(n, &format!("max_val[{i}]"), *g, *e);
        }
        let exp_scale = fx.tensor::<f32>(n, "scale");
        let qparams = obs.calculate_qparams().unwrap_or_else(|e| panic!("{n}: {e}"));
        match qparams {
            QParams::PerTensor { scale, zero_point } => {
                assert_eq!(exp_scale.len(), 1, "{n}");
                assert_eq!(scale, f64::from(scale as f32), "{n}: scale is an f32 value");
                assert_bits(n, "scale", scale as f32, exp_scale[0]);
                assert_eq!(
                    zero_point,
                    fx.tensor::<i64>(n, "zero_point").into_raw_vec_and_offset().0[0],
                    "{n}: zero_point"
                );
            }
            QParams::PerChannel { scales, zero_points, .. } => {
                let exp_zp = fx.tensor::<i64>(n, "zero_point").into_raw_vec_and_offset().0;
                assert_eq!(scales.len(), exp_scale.len(), "{n}");
                for (i, (g, e)) in scales.iter().zip(exp_scale.iter()).enumerate() {
                    assert_bits(n, &format!("scale[{i}]"), *g as f32, *e);
                }
                assert_eq!(zero_points, exp_zp, "{n}: zero_points");
            }
            QParams::PerChannelFloat { scales, zero_points, .. } => {
                let exp_zp = fx.tensor::<f32>(n, "zero_point");
                for (i, (g, e)) in scales.iter().zip(exp_scale.iter()).enumerate() {
                    assert_bits(n, &format!("scale[{i}]"), *g, *e);
                }
                for (i, (g, e)) in zero_points.iter().zip(exp_zp.iter()).enumerate() {
                    assert_bits(n, &format!("zero_point[{i}]"), *g, *e);
                }
            }
        }
        *counts.entry(case["observer"].as_str().unwrap().to_string()).or_default() += 1;
    }
    eprintln!("bit-exact cases: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), fx.cases.len());
    assert!(fx.cases.len() >= 600, "{counts:?}");
}
