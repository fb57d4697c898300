//! Batch-norm folding and default qconfigs against PyTorch 2.15 (`tools/golden/gen_qgraph.py`).

use ndarray::Ix1;
use qgraph::fusion::{BatchNormParams, fuse_conv_bn_weights, fuse_linear_bn_weights};
use qgraph::qconfig::{self, QConfig, get_default_qconfig};
use qobserve::ObserverSpec;
use qtest::{Fixture, assert_bits_eq, f64_of, name};
use serde_json::Value;

fn load(name: &str) -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name)
}

/// Folding is bit-exact: PyTorch's CPU `rsqrt` is `1.0f / sqrtf(x)` and every later step is one
/// float32 rounding on both sides (`docs/NUMERICS.md` section 10).
#[test]
fn batch_norm_folding_matches_pytorch_bit_for_bit() {
    let fx = load("fusion");
    assert!(fx.cases.len() >= 50, "{} cases", fx.cases.len());
    let mut total = 0;
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
        // PyTorch keeps a one-feature batch norm's bias at one element; ours is broadcast to
        // every output, so expected values repeat.
        let pairs = [
            ("weight", fw, fx.tensor::<f32>(n, "fused_w")),
            ("bias", fb.into_dyn(), fx.tensor::<f32>(n, "fused_b")),
        ];
        for (what, got, expected) in pairs {
            let expected = expected.broadcast(got.shape()).expect("PyTorch's fused shape broadcasts");
            assert_bits_eq(n, &format!("fused {what}"), &got, &expected.to_owned());
            total += got.len();
        }
    }
    println!("{total} folded values, all equal to PyTorch's");
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
