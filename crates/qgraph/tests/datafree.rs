//! The data-free steps of `qgraph::equalize` (Nagel et al. 2019) from batch-norm statistics:
//! the clipped-normal mean against integration and sampling, statistics followed through
//! equalization, high-bias absorption keeping the float model where the ReLU stays active, and
//! analytic bias correction reducing the output bias of weight quantization.

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::equalize::{
    Activation, BnStatistics, absorb_high_bias_from_bn, absorb_high_biases_from_bn, analytic_bias_correction,
    equalize_model,
};
use qgraph::fuse::fuse_modules;
use qgraph::models::random_f32s;
use qgraph::nn::{BatchNorm, BatchNorm2d, Conv, Conv2d, ReLU, ReLU6};
use qgraph::qconfig::default_qconfig;
use qgraph::quantized::QuantizedWeight;
use qgraph::{Module, QConfigMapping, Sequential, Value, eval, slot_mut};

/// A seeded `[n]` vector in `[lo, hi)`.
fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> ArrayD<f32> {
    let v = random_f32s(n, seed).into_iter().map(|u| lo + (hi - lo) * (u + 1.0) / 2.0).collect();
    ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap()
}

/// Sets the weight (seeded, row `o` scaled by `row_scale(o)`) and bias of the conv at `path`.
fn set_conv(model: &mut Box<dyn Module>, path: &str, seed: u64, row_scale: impl Fn(usize) -> f32) {
    let conv = (**slot_mut(model, path).unwrap()).downcast_mut::<Conv>().unwrap();
    let shape = conv.weight().shape().to_vec();
    let mut w = ArrayD::from_shape_vec(IxDyn(&shape), random_f32s(shape.iter().product(), seed)).unwrap();
    for (o, mut row) in w.axis_iter_mut(Axis(0)).enumerate() {
        let s = row_scale(o);
        row.mapv_inplace(|v| v * s);
    }
    let b = uniform(shape[0], seed + 1, -0.1, 0.1);
    conv.set_weight_bias(w, Some(b)).unwrap();
}

/// Sets the batch norm at `path`: running statistics and affine `gamma`, `beta`.
fn set_bn(
    model: &mut Box<dyn Module>,
    path: &str,
    mean: ArrayD<f32>,
    var: ArrayD<f32>,
    gamma: ArrayD<f32>,
    beta: ArrayD<f32>,
) {
    let bn = (**slot_mut(model, path).unwrap()).downcast_mut::<BatchNorm>().unwrap();
    bn.set_params(mean, var, Some((gamma, beta))).unwrap();
}

/// Per-channel (axis 1) mean and variance of `outputs`, in f64.
fn channel_moments(outputs: &[ArrayD<f32>]) -> (Vec<f64>, Vec<f64>) {
    let c = outputs[0].shape()[1];
    let (mut s, mut s2, mut n) = (vec![0.0f64; c], vec![0.0f64; c], 0usize);
    for y in outputs {
        for (i, lane) in y.axis_iter(Axis(1)).enumerate() {
            for &v in lane {
                s[i] += f64::from(v);
                s2[i] += f64::from(v).powi(2);
            }
        }
        n += y.len() / c;
    }
    let mean: Vec<f64> = s.iter().map(|v| v / n as f64).collect();
    let var = s2.iter().zip(&mean).map(|(v, m)| v / n as f64 - m * m).collect();
    (mean, var)
}

/// The output of the module at `path` of `model` (alone) on each of `inputs`.
fn run_at(model: &dyn Module, path: &str, inputs: &[ArrayD<f32>]) -> Vec<ArrayD<f32>> {
    let m = model.get(path).unwrap();
    inputs.iter().map(|x| m.forward(Value::from(x.clone())).unwrap().into_float("test").unwrap()).collect()
}

/// `count` seeded batches `[2, channels, 6, 6]` in [-1, 1).
fn inputs(count: u64, seed: u64, channels: usize) -> Vec<ArrayD<f32>> {
    let shape = [2, channels, 6, 6];
    (0..count)
        .map(|i| {
            ArrayD::from_shape_vec(IxDyn(&shape), random_f32s(shape.iter().product(), seed + i)).unwrap()
        })
        .collect()
}

/// Sets the running statistics of the batch norm at `bn` to the measured moments of the conv
/// at `conv` on what reaches it: the batch norm's statistics describe the data, as in a trained
/// model.
fn match_statistics(
    model: &mut Box<dyn Module>,
    conv: &str,
    bn: &str,
    conv_inputs: &[ArrayD<f32>],
    gamma: ArrayD<f32>,
    beta: ArrayD<f32>,
) {
    let (mean, var) = channel_moments(&run_at(model.as_ref(), conv, conv_inputs));
    let f = |v: Vec<f64>| {
        ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.into_iter().map(|x| x as f32).collect()).unwrap()
    };
    set_bn(model, bn, f(mean), f(var), gamma, beta);
}

#[test]
fn clipped_normal_mean_matches_integration_and_sampling() {
    let acts = [Activation::Identity, Activation::ReLU, Activation::ReLU6];
    let cases =
        [(0.0, 1.0), (1.5, 0.5), (-2.0, 1.0), (-0.3, 2.5), (5.5, 1.0), (7.0, 3.0), (3.0, 0.0), (-1.0, 0.0)];
    for act in acts {
        let f = |z: f64| match act {
            Activation::Identity => z,
            Activation::ReLU => z.max(0.0),
            Activation::ReLU6 => z.clamp(0.0, 6.0),
        };
        for (mean, std) in cases {
            let analytic = act.mean_of_normal(mean, std);
            if std == 0.0 {
                assert_eq!(analytic, f(mean), "{act:?} at a point mass {mean}");
                continue;
            }
            // Simpson's rule over ±12 standard deviations (the kinks at 0 and 6 cost O(h²)).
            let (lo, hi, n) = (mean - 12.0 * std, mean + 12.0 * std, 200_000);
            let h = (hi - lo) / n as f64;
            let pdf = |z: f64| {
                (-0.5 * ((z - mean) / std).powi(2)).exp() / (std * (2.0 * std::f64::consts::PI).sqrt())
            };
            let integral: f64 = (0..=n)
                .map(|i| {
                    let z = lo + i as f64 * h;
                    let w = if i == 0 || i == n {
                        1.0
                    } else if i % 2 == 1 {
                        4.0
                    } else {
                        2.0
                    };
                    w * f(z) * pdf(z)
                })
                .sum::<f64>()
                * h
                / 3.0;
            assert!(
                (analytic - integral).abs() <= 1e-6 * std.max(1.0),
                "{act:?} N({mean}, {std}²): closed form {analytic}, integral {integral}"
            );
        }
    }
    // Monte Carlo with a seeded Box-Muller normal: within 4 standard errors.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        // SplitMix64 to a uniform in (0, 1].
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON
    };
    let n = 200_000;
    let normals: Vec<f64> = (0..n)
        .map(|_| {
            let (u1, u2) = (next(), next());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    for act in [Activation::ReLU, Activation::ReLU6] {
        for (mean, std) in [(0.0, 1.0), (1.0, 2.0), (4.5, 2.0), (-1.0, 0.7)] {
            let samples: Vec<f64> = normals
                .iter()
                .map(|z| {
                    let v = mean + std * z;
                    if act == Activation::ReLU { v.max(0.0) } else { v.clamp(0.0, 6.0) }
                })
                .collect();
            let m = samples.iter().sum::<f64>() / n as f64;
            let sd = (samples.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n as f64).sqrt();
            let analytic = act.mean_of_normal(mean, std);
            assert!(
                (analytic - m).abs() < 4.0 * sd / (n as f64).sqrt(),
                "{act:?} N({mean}, {std}²): closed form {analytic}, sampled {m} (sd {sd})"
            );
        }
    }
}

/// Conv(3→6, 1x1) → BN → ReLU → Conv(6→4, 1x1), weights seeded with output channel ranges
/// spread over 16x (so equalization rescales), unfused, in evaluation mode.
fn pair_model() -> Box<dyn Module> {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Conv2d::new(3, 6, [1, 1]).build().unwrap()),
        Box::new(BatchNorm2d::new(6)),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(6, 4, [1, 1]).build().unwrap()),
    ]));
    eval(&mut model);
    set_conv(&mut model, "0", 11, |o| (o as f32 - 2.5).exp2());
    set_conv(&mut model, "3", 13, |_| 1.0);
    model
}

#[test]
fn statistics_follow_equalization() {
    let mut model = pair_model();
    let data = inputs(4, 100, 3);
    match_statistics(&mut model, "0", "1", &data, uniform(6, 21, 0.5, 2.0), uniform(6, 22, -1.0, 1.0));
    let stats = first_group_stats(model.as_ref());
    fuse_modules(&mut model, &[&["0", "1", "2"]]).unwrap();
    let (beta, gamma) = stats.current(model.as_ref(), "0").unwrap();
    let before = channel_moments(&run_at(model.as_ref(), "0.0", &data));
    equalize_model(&mut model, 1e-4, None).unwrap();
    let (beta_eq, gamma_eq) = stats.current(model.as_ref(), "0").unwrap();
    let (mean, var) = channel_moments(&run_at(model.as_ref(), "0.0", &data));
    for c in 0..6 {
        let sd = var[c].sqrt();
        // The statistics describe the data before equalization...
        assert!(
            (beta[c] - before.0[c]).abs() < 1e-3 * gamma[c],
            "channel {c}: β {} vs mean {}",
            beta[c],
            before.0[c]
        );
        assert!((gamma[c] - before.1[c].sqrt()).abs() < 1e-3 * gamma[c], "channel {c}");
        // ...and after: equalization changed the channel's scale, and the statistics followed.
        assert!((gamma_eq[c] / gamma[c] - 1.0).abs() > 0.05, "channel {c} was not rescaled");
        assert!(
            (beta_eq[c] - mean[c]).abs() < 1e-3 * gamma_eq[c],
            "channel {c}: β {} vs mean {}",
            beta_eq[c],
            mean[c]
        );
        assert!((gamma_eq[c] - sd).abs() < 1e-3 * gamma_eq[c], "channel {c}: γ {} vs sd {sd}", gamma_eq[c]);
    }
}

/// The statistics of the test models' single group `[0, 1, 2]`.
fn first_group_stats(model: &dyn Module) -> BnStatistics {
    BnStatistics::from_fuse_groups(model, &[["0", "1", "2"]]).unwrap()
}

#[test]
fn absorption_keeps_the_float_model_where_the_relu_stays_active() {
    let mut model = pair_model();
    // |conv output| ≤ 3 · 2^2.5 + 0.1 < 17.1 with running mean 0 and variance 100: the normalized
    // value stays within ±1.71, and β − 3γ < β − 1.71γ, so every pre-activation stays above c.
    let gamma = uniform(6, 31, 0.2, 0.6);
    let beta = uniform(6, 32, 2.0, 4.0);
    let zeros = ArrayD::zeros(IxDyn(&[6]));
    set_bn(&mut model, "1", zeros, ArrayD::from_elem(IxDyn(&[6]), 100.0), gamma.clone(), beta.clone());
    let mut stats = first_group_stats(model.as_ref());
    fuse_modules(&mut model, &[&["0", "1", "2"]]).unwrap();
    equalize_model(&mut model, 1e-4, None).unwrap();
    let data: Vec<Value> = inputs(3, 200, 3).into_iter().map(Value::from).collect();
    let before: Vec<ArrayD<f32>> =
        data.iter().map(|x| model.forward(x.clone()).unwrap().into_float("t").unwrap()).collect();
    let (beta_now, gamma_now) = stats.current(model.as_ref(), "0").unwrap();
    let pairs = absorb_high_biases_from_bn(&mut model, &mut stats).unwrap();
    assert_eq!(pairs.len(), 1);
    let (first, second, c) = &pairs[0];
    assert_eq!((first.as_str(), second.as_str()), ("0", "3"));
    for i in 0..6 {
        let expected = (beta_now[i] - 3.0 * gamma_now[i]) as f32;
        assert!(
            expected > 0.0 && (c[i] - expected).abs() <= 1e-5 * expected,
            "channel {i}: c {} vs {expected}",
            c[i]
        );
        // In the units of the batch norm: c · s = β − 3γ.
        let s = f64::from(gamma[i]) / gamma_now[i];
        assert!((f64::from(c[i]) * s - f64::from(beta[i] - 3.0 * gamma[i])).abs() < 1e-4, "channel {i}");
    }
    let mut worst = 0.0f32;
    for (x, a) in data.iter().zip(&before) {
        let b = model.forward(x.clone()).unwrap().into_float("t").unwrap();
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        worst = worst.max(a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
    }
    assert!(worst < 1e-5, "relative output change {worst}");
    // The statistics followed the shift: β is now β − c.
    let (beta_after, _) = stats.current(model.as_ref(), "0").unwrap();
    for i in 0..6 {
        assert!((beta_after[i] - (beta_now[i] - f64::from(c[i]))).abs() < 1e-5, "channel {i}");
    }
    // Where the pre-activation dips below c the function changes: a large input (of either sign)
    // drives some channel there.
    let mut original = pair_model();
    let zeros = ArrayD::zeros(IxDyn(&[6]));
    set_bn(&mut original, "1", zeros, ArrayD::from_elem(IxDyn(&[6]), 100.0), gamma, beta);
    let changed = [-400.0f32, 400.0].iter().any(|&v| {
        let big = Value::from(ArrayD::from_elem(IxDyn(&[1, 3, 1, 1]), v));
        let a = original.forward(big.clone()).unwrap().into_float("t").unwrap();
        let b = model.forward(big).unwrap().into_float("t").unwrap();
        a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3 * x.abs().max(1.0))
    });
    assert!(changed, "absorption changed nothing where the pre-activation is below c");
}

#[test]
fn absorption_errors_name_the_module_and_the_fix() {
    let mut model = pair_model();
    let mut stats = first_group_stats(model.as_ref());
    // Before fusing: the batch norm is still there.
    let err = stats.current(model.as_ref(), "0").unwrap_err().to_string();
    assert!(err.contains('1') && err.contains("fuse"), "{err}");
    fuse_modules(&mut model, &[&["0", "1", "2"]]).unwrap();
    let err = absorb_high_bias_from_bn(&mut model, &mut stats, "3", "0").unwrap_err().to_string();
    assert!(err.contains("ReLU"), "{err}");
    // A ReLU6 after the batch norm: shifting would change the clip at 6.
    let mut six: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Conv2d::new(3, 6, [1, 1]).build().unwrap()),
        Box::new(BatchNorm2d::new(6)),
        Box::new(ReLU6::new()),
        Box::new(Conv2d::new(6, 4, [1, 1]).build().unwrap()),
    ]));
    eval(&mut six);
    let mut stats = first_group_stats(six.as_ref());
    assert_eq!(stats.activation("0"), Some(Activation::ReLU6));
    fuse_modules(&mut six, &[&["0", "1"]]).unwrap();
    let err = absorb_high_bias_from_bn(&mut six, &mut stats, "0", "3").unwrap_err().to_string();
    assert!(err.contains("\"0\"") || err.contains('0'), "{err}");
    assert!(err.contains("ReLU"), "{err}");
    // No statistics for a layer.
    let err = stats.current(six.as_ref(), "3").unwrap_err().to_string();
    assert!(err.contains('3') && err.contains("statistics"), "{err}");
}

/// Conv(3→8, 3x3) → BN → ReLU → Conv(8→8, 1x1) → BN → ReLU → Conv(8→4, 1x1), seeded, rows of
/// the convs spread over 2^-3 .. 2^3 (per-tensor weights lose the small rows), batch-norm
/// statistics measured on `data`; then fused.
fn chain_model(data: &[ArrayD<f32>]) -> (Box<dyn Module>, BnStatistics) {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Conv2d::new(3, 8, [3, 3]).build().unwrap()),
        Box::new(BatchNorm2d::new(8)),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(8, 8, [1, 1]).build().unwrap()),
        Box::new(BatchNorm2d::new(8)),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(8, 4, [1, 1]).build().unwrap()),
    ]));
    eval(&mut model);
    let spread = |seed| {
        let u = random_f32s(8, seed);
        move |o: usize| (3.0 * u[o]).exp2()
    };
    set_conv(&mut model, "0", 41, spread(42));
    set_conv(&mut model, "3", 43, spread(44));
    set_conv(&mut model, "6", 45, |_| 1.0);
    match_statistics(&mut model, "0", "1", data, uniform(8, 51, 0.5, 1.5), uniform(8, 52, -0.5, 1.0));
    // What reaches the second conv: the first block's output.
    let parts: Vec<Box<dyn Module>> =
        ["0", "1", "2"].iter().map(|p| model.get(p).unwrap().clone_module()).collect();
    let head: Box<dyn Module> = Box::new(Sequential::new(parts));
    let mid: Vec<ArrayD<f32>> =
        data.iter().map(|x| head.forward(Value::from(x.clone())).unwrap().into_float("t").unwrap()).collect();
    match_statistics(&mut model, "3", "4", &mid, uniform(8, 53, 0.5, 1.5), uniform(8, 54, -0.5, 1.0));
    let stats = BnStatistics::from_fuse_groups(model.as_ref(), &[["0", "1", "2"], ["3", "4", "5"]]).unwrap();
    fuse_modules(&mut model, &[&["0", "1", "2"], &["3", "4", "5"]]).unwrap();
    (model, stats)
}

/// `model` with every conv weight quantized and dequantized as `convert` does with
/// `default_qconfig()` (per-tensor): weight quantization alone.
fn with_int8_weights(model: &dyn Module) -> Box<dyn Module> {
    let mut out = model.clone_module();
    for path in ["0.0", "3.0", "6"] {
        let conv = (**slot_mut(&mut out, path).unwrap()).downcast_mut::<Conv>().unwrap();
        let q = QuantizedWeight::from_observer(conv.weight(), &default_qconfig().weight).unwrap();
        let bias = conv.bias().cloned();
        conv.set_weight_bias(q.dequantize(), bias).unwrap();
    }
    out
}

/// The norm of the per-channel mean output error of `model` against `float` on `data`.
fn output_bias_error(float: &dyn Module, model: &dyn Module, data: &[ArrayD<f32>]) -> f64 {
    let diffs: Vec<ArrayD<f32>> = data
        .iter()
        .map(|x| {
            let a = float.forward(Value::from(x.clone())).unwrap().into_float("t").unwrap();
            let b = model.forward(Value::from(x.clone())).unwrap().into_float("t").unwrap();
            b - a
        })
        .collect();
    channel_moments(&diffs).0.iter().map(|m| m * m).sum::<f64>().sqrt()
}

#[test]
fn analytic_bias_correction_reduces_the_output_bias_error() {
    let data = inputs(8, 300, 3);
    let (float, stats) = chain_model(&data);
    let mapping = QConfigMapping::global(default_qconfig());
    let mut corrected = float.clone_module();
    let layers = analytic_bias_correction(&mut corrected, &stats, &mapping).unwrap();
    let paths: Vec<&str> = layers.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["3.0", "6"], "the layers whose input mean the statistics give");
    assert!(layers.iter().all(|c| c.max_abs > 0.0));
    let before = output_bias_error(float.as_ref(), with_int8_weights(float.as_ref()).as_ref(), &data);
    let after = output_bias_error(float.as_ref(), with_int8_weights(corrected.as_ref()).as_ref(), &data);
    eprintln!("output bias error: {before:.5} uncorrected, {after:.5} corrected");
    assert!(after < 0.5 * before, "bias error {before} before, {after} after");

    // A layer the mapping keeps float is left alone.
    let mapping = mapping.set_name("6", None);
    let mut partial = float.clone_module();
    let layers = analytic_bias_correction(&mut partial, &stats, &mapping).unwrap();
    assert_eq!(layers.len(), 1);
    let bias = |m: &dyn Module| m.get("6").unwrap().downcast_ref::<Conv>().unwrap().bias().cloned();
    assert_eq!(bias(partial.as_ref()), bias(float.as_ref()));
}
