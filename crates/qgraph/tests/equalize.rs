//! `qgraph::equalize`: PyTorch's `_equalize` bit for bit on fixtures
//! (`tools/golden/gen_equalize.py`), grouped convolutions, the group finder, errors, bias
//! correction, and the accuracy gain on a MobileNetV2 with per-tensor weights.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::equalize::{self, bias_correction, channel_range, equalize, find_equalizable_groups};
use qgraph::nn::{BatchNorm2d, Conv1d, Conv2d, Fused, FusedKind, Linear, ReLU};
use qgraph::qconfig::{default_per_channel_qconfig, default_qconfig};
use qgraph::{Module, Sequential, Value, eval, load_state_dict};
use qtest::{Fixture, name};

#[path = "../examples/equalize_setup/mod.rs"]
mod equalize_setup;
use equalize_setup::{images, quantize, skewed_mobilenet_v2};

/// The model of a fixture case, as `gen_equalize.py` builds it.
fn fixture_model(case: &str) -> Box<dyn Module> {
    let relu = || Box::new(ReLU::new()) as Box<dyn Module>;
    let layers: Vec<Box<dyn Module>> = match case {
        "conv_chain" => vec![
            Box::new(Conv2d::new(3, 8, [3, 3]).build().unwrap()),
            relu(),
            Box::new(Conv2d::new(8, 6, [3, 3]).padding([1, 1]).build().unwrap()),
            relu(),
            Box::new(Conv2d::new(6, 4, [1, 1]).bias(false).build().unwrap()),
        ],
        "fused_linear" => vec![
            Box::new(Fused::new(FusedKind::LinearReLU, Box::new(Linear::new(5, 7, true)), relu()).unwrap()),
            Box::new(Linear::new(7, 3, true)),
        ],
        "conv1d_pair" => vec![
            Box::new(
                Fused::new(FusedKind::ConvReLU(1), Box::new(Conv1d::new(4, 6, [3]).build().unwrap()), relu())
                    .unwrap(),
            ),
            Box::new(Conv1d::new(6, 5, [2]).build().unwrap()),
        ],
        other => panic!("unknown case {other}"),
    };
    let mut model: Box<dyn Module> = Box::new(Sequential::new(layers));
    eval(&mut model);
    model
}

/// Every weight and bias after `equalize(model, groups, 1e-4)` equals PyTorch's bit for bit: each
/// step (range, + 1e-9, divide, sqrt, reciprocal, multiply) is one correctly rounded f32
/// operation in both, and the ranges are exact.
#[test]
fn equalize_matches_pytorch_bit_for_bit() {
    let fx = Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/equalize"), "equalize");
    assert_eq!(fx.cases.len(), 3);
    for case in &fx.cases {
        let n = name(case);
        let groups: Vec<Vec<String>> = serde_json::from_value(case["groups"].clone()).unwrap();
        let mut model = fixture_model(n);
        let keys: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
        let state: BTreeMap<String, ArrayD<f32>> =
            keys.iter().map(|k| (k.clone(), fx.tensor(n, k))).collect();
        load_state_dict(&mut model, state).unwrap();
        let sweeps = equalize(&mut model, &groups, 1e-4).unwrap();
        assert!(sweeps > 1, "{n}: one sweep only; the fixture does not exercise convergence");
        for (key, got) in model.state_dict() {
            let expected: ArrayD<f32> = fx.tensor(n, &format!("{key}.eq"));
            let before: ArrayD<f32> = fx.tensor(n, &key);
            if key.ends_with("weight") {
                assert_ne!(before, expected, "{n} {key}: PyTorch left it unchanged");
            }
            qtest::assert_bits_eq(n, &key, got, &expected);
        }
    }
}

/// A pointwise -> depthwise -> pointwise chain (MobileNetV2's block): the function stays, and
/// after convergence each channel's output range in one layer equals its input range in the
/// next.
#[test]
fn depthwise_chain_keeps_the_function_and_evens_the_ranges() {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Conv2d::new(3, 12, [1, 1]).build().unwrap()),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(12, 12, [3, 3]).groups(12).padding([1, 1]).build().unwrap()),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(12, 5, [1, 1]).build().unwrap()),
    ]));
    eval(&mut model);
    // Skew the output channels of the first two layers (as batch-norm folding does).
    let mut state: BTreeMap<String, ArrayD<f32>> =
        model.state_dict().into_iter().map(|(k, v)| (k, v.clone())).collect();
    for (i, key) in ["0.weight", "2.weight"].iter().enumerate() {
        let w = state.get_mut(*key).unwrap();
        let u = qgraph::models::random_f32s(12, 40 + i as u64);
        for (mut row, u) in w.axis_iter_mut(Axis(0)).zip(u) {
            row.mapv_inplace(|v| v * (4.0 * u).exp2());
        }
    }
    load_state_dict(&mut model, state).unwrap();
    let x = Value::from(
        ArrayD::from_shape_vec(IxDyn(&[2, 3, 7, 7]), qgraph::models::random_f32s(294, 5)).unwrap(),
    );
    let before = model.forward(x.clone()).unwrap().into_float("model").unwrap();
    assert_eq!(find_equalizable_groups(model.as_ref()), [["0", "2", "4"]]);
    equalize(&mut model, &[["0", "2", "4"]], equalize::DEFAULT_THRESHOLD).unwrap();
    let after = model.forward(x).unwrap().into_float("model").unwrap();
    let scale = before.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
    }
    let w = |k: &str| model.state_dict().into_iter().find(|(n, _)| n == k).unwrap().1.clone();
    // Layer 0's output ranges against the depthwise layer's (one input channel per group: the
    // range of its row), and the depthwise output ranges against layer 4's input ranges.
    let pairs = [
        (channel_range(&w("0.weight"), 0).unwrap(), channel_range(&w("2.weight"), 0).unwrap()),
        (channel_range(&w("2.weight"), 0).unwrap(), channel_range(&w("4.weight"), 1).unwrap()),
    ];
    for (r1, r2) in pairs {
        for (a, b) in r1.iter().zip(&r2) {
            assert!((a - b).abs() <= 1e-3 * a.max(*b), "ranges {a} and {b} not equalized");
        }
    }
}

/// The groups of a fused MobileNetV2: chains run through each inverted residual and into the next
/// block unless that block has a skip connection.
#[test]
fn finds_the_chains_of_a_fused_mobilenet_v2() {
    let model = skewed_mobilenet_v2().unwrap();
    let groups = find_equalizable_groups(model.as_ref());
    let group_of = |layer: &str| groups.iter().find(|g| g.iter().any(|p| p == layer)).unwrap();
    assert_eq!(
        group_of("features.0.0"),
        &[
            "features.0.0",
            "features.1.conv.0.0",
            "features.1.conv.1",
            "features.2.conv.0.0",
            "features.2.conv.1.0",
            "features.2.conv.2",
        ]
    );
    // features.3 adds its input: its first conv starts a new chain that ends at its last.
    assert_eq!(
        group_of("features.3.conv.0.0"),
        &["features.3.conv.0.0", "features.3.conv.1.0", "features.3.conv.2"]
    );
    // The last block has no skip: it runs into features.18; the classifier is behind a flatten.
    let last = group_of("features.18.0");
    assert_eq!(last[last.len() - 2..], ["features.17.conv.2", "features.18.0"]);
    assert!(groups.iter().flatten().all(|p| !p.starts_with("classifier")));
    let layers: usize = groups.iter().map(Vec::len).sum();
    assert_eq!(layers, 52, "every conv of MobileNetV2 is in one chain");
}

/// Bad groups and layers are errors naming them.
#[test]
fn bad_groups_are_errors() {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Conv2d::new(3, 8, [3, 3]).build().unwrap()),
        Box::new(BatchNorm2d::new(8)),
        Box::new(Conv2d::new(6, 4, [1, 1]).build().unwrap()),
    ]));
    let err = equalize(&mut model, &[["0"]], 1e-4).unwrap_err().to_string();
    assert!(err.contains("at least two modules"), "{err}");
    let err = equalize(&mut model, &[["0", "1"]], 1e-4).unwrap_err().to_string();
    assert!(err.contains("BatchNorm2d") && err.contains("fuse batch norms first"), "{err}");
    let err = equalize(&mut model, &[["0", "2"]], 1e-4).unwrap_err().to_string();
    assert!(err.contains("8 output channels") && err.contains("6 input channels"), "{err}");
    let err = equalize(&mut model, &[["0", "9"]], 1e-4).unwrap_err().to_string();
    assert!(err.contains('9'), "{err}");
    // A dead output channel (constant weights) would divide by zero.
    let mut state: BTreeMap<String, ArrayD<f32>> =
        model.state_dict().into_iter().map(|(k, v)| (k, v.clone())).collect();
    state.get_mut("0.weight").unwrap().index_axis_mut(Axis(0), 3).fill(0.5);
    load_state_dict(&mut model, state).unwrap();
    let mut model2: Box<dyn Module> = Box::new(Sequential::new(vec![
        model.get("0").unwrap().clone_module(),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(8, 4, [1, 1]).build().unwrap()),
    ]));
    let err = equalize(&mut model2, &[["0", "2"]], 1e-4).unwrap_err().to_string();
    assert!(err.contains("output channel = 3") && err.contains("range 0"), "{err}");
}

/// After bias correction, the float layer with the int8 weights has the float layer's mean
/// output per channel on the calibration data (it did not before).
#[test]
fn bias_correction_removes_the_mean_output_error() {
    let mut float: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(qgraph::QuantStub::new()),
        Box::new(Conv2d::new(3, 6, [3, 3]).build().unwrap()),
        Box::new(qgraph::DeQuantStub::new()),
    ]));
    eval(&mut float);
    let mut state: BTreeMap<String, ArrayD<f32>> =
        float.state_dict().into_iter().map(|(k, v)| (k, v.clone())).collect();
    let u = qgraph::models::random_f32s(6, 3);
    for (mut row, u) in state.get_mut("1.weight").unwrap().axis_iter_mut(Axis(0)).zip(u) {
        row.mapv_inplace(|v| v * (3.0 * u).exp2());
    }
    load_state_dict(&mut float, state).unwrap();
    // Inputs with a nonzero mean, so that the weight error has a mean effect.
    let calibration: Vec<ArrayD<f32>> =
        images(4, 11, 2, 12).unwrap().into_iter().map(|x| x.mapv(|v| v + 0.7)).collect();
    let values: Vec<Value> = calibration.iter().cloned().map(Value::from).collect();
    let quantized = quantize(float.as_ref(), default_qconfig(), &calibration).unwrap();
    let mean_error = |model: &dyn Module| -> Vec<f64> {
        let weights_only = equalize::with_quantized_weights(model, quantized.as_ref()).unwrap();
        let mut sums = [0.0f64; 6];
        for x in &values {
            let a = float.forward(x.clone()).unwrap().into_float("float").unwrap();
            let b = weights_only.forward(x.clone()).unwrap().into_float("weights").unwrap();
            for (c, (la, lb)) in a.axis_iter(Axis(1)).zip(b.axis_iter(Axis(1))).enumerate() {
                sums[c] += la.iter().zip(&lb).map(|(p, q)| f64::from(q - p)).sum::<f64>() / la.len() as f64;
            }
        }
        sums.iter().map(|s| s / values.len() as f64).collect()
    };
    let before = mean_error(float.as_ref());
    let mut corrected = float.clone();
    let done = bias_correction(&mut corrected, quantized.as_ref(), &values).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].path, "1");
    let after = mean_error(corrected.as_ref());
    let worst_before = before.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst_after = after.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(worst_before > 1e-3, "the weight error has no mean effect to correct: {before:?}");
    assert!(worst_after < 1e-5, "still {after:?} after correction (before {before:?})");
    assert!((f64::from(done[0].max_abs) - worst_before).abs() < 1e-5);
}

/// MobileNetV2 with per-tensor weights (`default_qconfig`): CLE keeps the float function and
/// raises the output SQNR. Measured (64x64, 4 calibration and 4 test batches of 4): int8 14.25 ->
/// 14.85 dB, weights only 24.30 -> 26.69 dB, per-channel weights only 29.61 dB; the bounds are
/// about half the measured margins.
#[test]
fn cle_improves_per_tensor_mobilenet_v2() {
    let float = skewed_mobilenet_v2().unwrap();
    let calibration = images(4, 1, 4, 64).unwrap();
    let test: Vec<Value> = images(4, 1000, 4, 64).unwrap().into_iter().map(Value::from).collect();
    let mut equalized = float.clone();
    let groups = equalize::equalize_model(&mut equalized, equalize::DEFAULT_THRESHOLD, None).unwrap();
    assert_eq!(groups.len(), 16);
    for x in &test {
        let a = float.forward(x.clone()).unwrap().into_float("float").unwrap();
        let b = equalized.forward(x.clone()).unwrap().into_float("equalized").unwrap();
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-4 * scale, "float output {p} became {q}");
        }
    }
    let measure = |model: &dyn Module, qconfig| {
        let q = quantize(model, qconfig, &calibration).unwrap();
        let int8 = equalize::output_agreement(float.as_ref(), q.as_ref(), &test).unwrap().sqnr_db;
        let w = equalize::with_quantized_weights(model, q.as_ref()).unwrap();
        let weights = equalize::output_agreement(float.as_ref(), w.as_ref(), &test).unwrap().sqnr_db;
        (int8, weights)
    };
    let (plain_int8, plain_w) = measure(float.as_ref(), default_qconfig());
    let (cle_int8, cle_w) = measure(equalized.as_ref(), default_qconfig());
    let (_, channel_w) = measure(float.as_ref(), default_per_channel_qconfig());
    let table = format!(
        "per-tensor int8 {plain_int8:.2} dB, weights only {plain_w:.2} dB; with CLE {cle_int8:.2} / {cle_w:.2} dB; \
         per-channel weights only {channel_w:.2} dB"
    );
    println!("{table}");
    assert!(cle_w >= plain_w + 1.0, "{table}");
    assert!(cle_int8 >= plain_int8 + 0.3, "{table}");
    assert!(channel_w >= plain_w + 2.0, "{table}");
}

/// High-bias absorption keeps the function on the calibration data and lowers the first layer's
/// bias by the smallest pre-activation of each channel; a padded second layer is an error.
#[test]
fn high_bias_absorption_keeps_the_function_on_calibration_data() {
    let conv = Conv2d::new(3, 6, [1, 1]).build().unwrap();
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Fused::new(FusedKind::ConvReLU(2), Box::new(conv), Box::new(ReLU::new())).unwrap()),
        Box::new(Conv2d::new(6, 4, [1, 1]).build().unwrap()),
        Box::new(Conv2d::new(4, 4, [3, 3]).padding([1, 1]).build().unwrap()),
    ]));
    eval(&mut model);
    let mut state: BTreeMap<String, ArrayD<f32>> =
        model.state_dict().into_iter().map(|(k, v)| (k, v.clone())).collect();
    // Channels 0, 2, 4 get a bias of 3: their pre-activation stays positive.
    for (c, b) in state.get_mut("0.0.bias").unwrap().iter_mut().enumerate() {
        if c % 2 == 0 {
            *b = 3.0;
        }
    }
    load_state_dict(&mut model, state).unwrap();
    let inputs: Vec<Value> = images(3, 21, 2, 5).unwrap().into_iter().map(Value::from).collect();
    let before: Vec<ArrayD<f32>> =
        inputs.iter().map(|x| model.forward(x.clone()).unwrap().into_float("model").unwrap()).collect();
    let bias = |m: &dyn Module| {
        m.get("0.0").unwrap().params().into_iter().find(|(n, _)| *n == "bias").unwrap().1.clone()
    };
    let b1 = bias(model.as_ref());
    let c = equalize::absorb_high_bias(&mut model, "0", "1", &inputs).unwrap();
    assert!(c.iter().step_by(2).all(|&v| v > 1.0), "{c:?}");
    let b1_after = bias(model.as_ref());
    for i in 0..6 {
        assert_eq!(b1_after[i], b1[i] - c[i]);
    }
    for (x, y0) in inputs.iter().zip(&before) {
        let y = model.forward(x.clone()).unwrap().into_float("model").unwrap();
        for (a, b) in y0.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
    let err = equalize::absorb_high_bias(&mut model, "1", "2", &inputs).unwrap_err().to_string();
    assert!(err.contains("no ReLU"), "{err}");
    let conv = Conv2d::new(3, 4, [1, 1]).build().unwrap();
    let mut padded: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Fused::new(FusedKind::ConvReLU(2), Box::new(conv), Box::new(ReLU::new())).unwrap()),
        Box::new(Conv2d::new(4, 4, [3, 3]).padding([1, 1]).build().unwrap()),
    ]));
    let err = equalize::absorb_high_bias(&mut padded, "0", "1", &inputs).unwrap_err().to_string();
    assert!(err.contains("pads its input"), "{err}");
}
