//! HistogramObserver against PyTorch: the histogram itself, the chosen bins and the parameters.

use qobserve::{HistogramObserver, ObserverSpec, QParams};

use crate::fixture::{self, assert_bits, name, spec};

#[test]
fn histogram_observer_matches_pytorch() {
    let fx = fixture::load("histogram");
    let mut exact_hist = 0;
    let mut exact_scale = 0;
    let mut report = Vec::new();
    for case in &fx.cases {
        let n = name(case);
        let s = spec(case);
        let mut obs = HistogramObserver::from_spec(&s).unwrap_or_else(|e| panic!("{n}: {e}"));
        let dynamic: &mut dyn qobserve::Observer = &mut obs;
        for x in fixture::batches(&fx, case) {
            dynamic.observe(x.view()).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        let h = obs.histogram().unwrap_or_else(|| panic!("{n}: empty"));
        assert_bits(n, "min_val", h.min, fx.tensor::<f32>(n, "min_val")[0]);
        assert_bits(n, "max_val", h.max, fx.tensor::<f32>(n, "max_val")[0]);
        let expected = fx.tensor::<f32>(n, "histogram");
        let max_abs = h.counts.iter().zip(expected.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let differing = h.counts.iter().zip(expected.iter()).filter(|(a, b)| a != b).count();
        if differing == 0 {
            exact_hist += 1;
        }
        let search = obs.search().unwrap();
        let qp = qobserve::Observer::calculate_qparams(&obs).unwrap_or_else(|e| panic!("{n}: {e}"));
        let QParams::PerTensor { scale, zero_point } = qp else { panic!("{n}: per tensor") };
        let exp_scale = fx.tensor::<f32>(n, "scale")[0];
        let exp_zp = fx.tensor::<i64>(n, "zero_point").into_raw_vec_and_offset().0[0];
        report.push(format!(
            "{n}: hist bins differing {differing} (max |diff| {max_abs}), bins {}..{} vs {}..{}, evals {} vs {}, scale {:e} vs {:e}, zp {} vs {}",
            search.start_bin,
            search.end_bin,
            case["start_bin"],
            case["end_bin"],
            search.evaluations,
            case["evaluations"],
            scale,
            exp_scale,
            zero_point,
            exp_zp
        ));
        assert_eq!(
            (search.start_bin as u64, search.end_bin as u64),
            (case["start_bin"].as_u64().unwrap(), case["end_bin"].as_u64().unwrap()),
            "{n}: chosen bins\n{}",
            report.last().unwrap()
        );
        let rel = (scale - f64::from(exp_scale)).abs() / f64::from(exp_scale);
        assert!(rel <= 1e-6, "{n}: scale {scale:e} vs PyTorch {exp_scale:e} (rel {rel:e})");
        assert_eq!(zero_point, exp_zp, "{n}: zero point");
        if (scale as f32).to_bits() == exp_scale.to_bits() {
            exact_scale += 1;
        }
        assert_eq!(
            search.evaluations as u64,
            case["evaluations"].as_u64().unwrap(),
            "{n}: candidates evaluated"
        );
        if let Some(norm) = case["norm"].as_f64() {
            assert_eq!(
                search.norm.to_bits(),
                norm.to_bits(),
                "{n}: L2 norm {} vs PyTorch {norm}",
                search.norm
            );
        }
        if differing == 0 {
            assert_bits(n, "new_min", search.new_min, fx.tensor::<f32>(n, "new_min")[0]);
            assert_bits(n, "new_max", search.new_max, fx.tensor::<f32>(n, "new_max")[0]);
        }
    }
    eprintln!("{}", report.join("\n"));
    eprintln!(
        "histogram cases: {}, histograms bit-exact: {exact_hist}, scales bit-exact: {exact_scale}",
        fx.cases.len()
    );
    assert_eq!(fx.cases.len(), 49);
    let _ = ObserverSpec::histogram();
}
