//! Batch-norm folding and default qconfigs against PyTorch 2.15 (`tools/golden/gen_qgraph.py`).

use ndarray::{ArrayD, Ix1};
use qgraph::fusion::{BatchNormParams, fuse_conv_bn_weights, fuse_linear_bn_weights};
use qgraph::qconfig::{self, QConfig, get_default_qconfig};
use qobserve::ObserverSpec;
use qtest::{Fixture, f64_of, name};
use serde_json::Value;

fn load(name: &str) -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name)
}

/// PyTorch's CPU `rsqrt` is an approximation within 1 ulp (relative 2^-23 = f32::EPSILON) of
/// the true value and ours is correctly rounded; each later product rounds on both sides (at most
/// 2^-24 each). So a folded weight, `w * (gamma * rsqrt)`, differs by at most 3 epsilon relative,
/// and the bias, one rounding more and a sum, by 4 epsilon of its terms' magnitude.
const WEIGHT_BOUND: f64 = 3.0 * f32::EPSILON as f64;
/// See [`WEIGHT_BOUND`].
const BIAS_BOUND: f64 = 4.0 * f32::EPSILON as f64;

/// Asserts the folded weights are within [`WEIGHT_BOUND`] of PyTorch's, returning how many differ.
fn assert_weights_close(case: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>) -> usize {
    assert_eq!(got.shape(), expected.shape(), "{case}: fused weight shape");
    let mut differing = 0;
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let bound = WEIGHT_BOUND * f64::from(e.abs());
        assert!(f64::from(g - e).abs() <= bound, "{case}: fused weight[{i}] = {g:e}, PyTorch {e:e}");
        differing += usize::from(g != e);
    }
    differing
}

#[test]
fn batch_norm_folding_matches_pytorch_within_rsqrt_rounding() {
    let fx = load("fusion");
    assert!(fx.cases.len() >= 50, "{} cases", fx.cases.len());
    let (mut differing, mut total) = (0, 0);
    for case in &fx.cases {
        let n = name(case);
        let vec = |field: &str| {
            fx.has(n, field).then(|| fx.tensor::<f32>(n, field).into_dimensionality::<Ix1>().unwrap())
        };
        let (rm, rv, bn_w, bn_b, bias) =
            (vec("rm").unwrap(), vec("rv").unwrap(), vec("bn_w"), vec("bn_b"), vec("b"));
        let bn = BatchNormParams {
            running_mean: rm.view(),
            running_var: rv.view(),
            eps: f64_of(&case["eps"]),
            weight: bn_w.as_ref().map(|a| a.view()),
            bias: bn_b.as_ref().map(|a| a.view()),
        };
        let w = fx.tensor::<f32>(n, "w");
        let (fw, fb) = if case["kind"] == "conv" {
            fuse_conv_bn_weights(w.view(), bias.as_ref().map(|a| a.view()), &bn, case["transpose"] == true)
        } else {
            fuse_linear_bn_weights(w.view(), bias.as_ref().map(|a| a.view()), &bn)
        }
        .unwrap();
        differing += assert_weights_close(n, &fw, &fx.tensor::<f32>(n, "fused_w"));
        // The bias is a sum, (b - mean) * rsqrt * gamma + beta: where it cancels, a last-bit
        // difference in rsqrt is many ulps of a small result, so bound it by its terms instead.
        let expected_b = fx.tensor::<f32>(n, "fused_b");
        for (j, (&g, &e)) in fb.iter().zip(&expected_b).enumerate() {
            let inv = 1.0 / (f64::from(rv[j % rv.len()]) + f64_of(&case["eps"])).sqrt();
            let gamma = bn_w.as_ref().map_or(1.0, |w| f64::from(w[j % w.len()]));
            let beta = bn_b.as_ref().map_or(0.0, |b| f64::from(b[j % b.len()]).abs());
            let term =
                (f64::from(bias.as_ref().map_or(0.0, |b| b[j])) - f64::from(rm[j % rm.len()])) * inv * gamma;
            let bound = BIAS_BOUND * (term.abs() + beta);
            assert!(
                f64::from(g - e).abs() <= bound,
                "{n}: fused bias[{j}] = {g:e}, PyTorch {e:e}, bound {bound:e}"
            );
            differing += usize::from(g != e);
        }
        total += fw.len() + fx.tensor::<f32>(n, "fused_b").len();
    }
    println!("folded values that differ from PyTorch (within the rsqrt bound): {differing} of {total}");
}

/// Checks one observer description against PyTorch's instantiated observer.
fn assert_spec_matches(case: &str, spec: &ObserverSpec, torch: &Value) {
    assert_eq!(spec.name(), torch["class"].as_str().unwrap(), "{case}: class");
    let Some(args) = spec.args() else {
        assert!(torch.get("dtype").is_none(), "{case}: PyTorch's {} carries range arguments", spec.name());
        return;
    };
    let debug = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase().replace('_', "");
    assert_eq!(debug(&args.dtype), torch["dtype"].as_str().unwrap().replace('_', ""), "{case}: dtype");
    assert_eq!(debug(&args.qscheme), torch["qscheme"].as_str().unwrap().replace('_', ""), "{case}: qscheme");
    assert_eq!(args.reduce_range, torch["reduce_range"].as_bool().unwrap(), "{case}: reduce_range");
    assert_eq!(args.quant_min, torch["quant_min"].as_i64(), "{case}: quant_min");
    assert_eq!(args.quant_max, torch["quant_max"].as_i64(), "{case}: quant_max");
    assert_eq!(f64::from(args.eps), f64_of(&torch["eps"]), "{case}: eps");
    assert_eq!(args.is_dynamic, torch["is_dynamic"].as_bool().unwrap(), "{case}: is_dynamic");
    if let ObserverSpec::PerChannelMinMax { ch_axis, .. }
    | ObserverSpec::MovingAveragePerChannelMinMax { ch_axis, .. } = spec
    {
        assert_eq!(Some(*ch_axis), torch["ch_axis"].as_i64(), "{case}: ch_axis");
    }
}

#[test]
fn default_qconfigs_match_pytorch() {
    let fx = load("qconfig");
    let ours = |case: &str| -> QConfig {
        match case.strip_prefix("get_default_qconfig_") {
            Some(backend) => get_default_qconfig(backend).unwrap(),
            None => match case {
                "default_qconfig" => qconfig::default_qconfig(),
                "default_per_channel_qconfig" => qconfig::default_per_channel_qconfig(),
                "default_dynamic_qconfig" => qconfig::default_dynamic_qconfig(),
                "default_debug_qconfig" => qconfig::default_debug_qconfig(),
                "default_symmetric_qnnpack_qconfig" => qconfig::default_symmetric_qnnpack_qconfig(),
                "default_per_channel_symmetric_qnnpack_qconfig" => {
                    qconfig::default_per_channel_symmetric_qnnpack_qconfig()
                }
                other => panic!("no qconfig named {other}"),
            },
        }
    };
    assert_eq!(fx.cases.len(), 10);
    for case in &fx.cases {
        let n = name(case);
        let qconfig = ours(n);
        assert_spec_matches(&format!("{n}.activation"), &qconfig.activation, &case["activation"]);
        assert_spec_matches(&format!("{n}.weight"), &qconfig.weight, &case["weight"]);
    }
}
