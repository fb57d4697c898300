//! qfake::grad against PyTorch 2.15 autograd (`tools/golden/gen_grad.py`): convolution, linear,
//! batch norm, activations, pooling, cross-entropy and MSE, forward and backward. Results that
//! follow ATen's order of operations are compared bit for bit; GEMM-based ones (and the sums ATen
//! vectorizes) to `1e-6 * max |torch|` per tensor (docs/NUMERICS.md, "Training gradients").

use ndarray::{ArrayD, IxDyn};
use qfake::grad::*;
use qgraph::nn::{Conv1d, Conv2d, Conv3d, ConvOptions};
use qtest::{Fixture, assert_bits_eq, name};
use serde_json::Value;

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "grad")
}

/// Asserts `max |got - expected| <= 1e-6 * max |expected|` (same shapes).
fn assert_close(case: &str, what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>) {
    assert_eq!(got.shape(), expected.shape(), "{case}: {what} shape");
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        if !e.is_finite() {
            assert!(g == e || (g.is_nan() && e.is_nan()), "{case}: {what}[{i}] = {g}, PyTorch {e}");
        }
    }
    let finite = |v: &f32| v.is_finite();
    let scale = expected.iter().filter(|v| finite(v)).fold(0.0f32, |m, &v| m.max(v.abs()));
    let pairs = got.iter().zip(expected).filter(|(_, e)| finite(e));
    let err =
        pairs.fold(0.0f32, |m, (&g, &e)| if (g - e).is_nan() { f32::INFINITY } else { m.max((g - e).abs()) });
    assert!(err <= 1e-6 * scale, "{case}: {what}: max error {err:e} > 1e-6 * {scale:e}");
}

fn cases<'a>(fx: &'a Fixture, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
    let found: Vec<_> =
        fx.cases.iter().filter(|c| name(c).starts_with(prefix)).map(|c| (name(c), c)).collect();
    assert!(!found.is_empty(), "no {prefix} cases");
    found.into_iter()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("unsigned integer") as usize
}

fn conv_options(case: &Value, w: &ArrayD<f32>) -> ConvOptions {
    let (s, p, d, g, bias) = (
        usize_of(&case["stride"]),
        usize_of(&case["padding"]),
        usize_of(&case["dilation"]),
        usize_of(&case["groups"]),
        case["bias"].as_bool().unwrap(),
    );
    let (o, c) = (w.shape()[0], w.shape()[1] * g);
    let k = w.shape()[2];
    let conv = match usize_of(&case["dims"]) {
        1 => Conv1d::new(c, o, [k]).stride([s]).padding([p]).dilation([d]).groups(g).bias(bias).build(),
        2 => Conv2d::new(c, o, [k; 2])
            .stride([s; 2])
            .padding([p; 2])
            .dilation([d; 2])
            .groups(g)
            .bias(bias)
            .build(),
        _ => Conv3d::new(c, o, [k; 3])
            .stride([s; 3])
            .padding([p; 3])
            .dilation([d; 3])
            .groups(g)
            .bias(bias)
            .build(),
    };
    conv.expect("valid conv").options().clone()
}

#[test]
fn conv_forward_and_backward_match_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "conv") {
        let (x, w, dy) = (fx.tensor::<f32>(n, "x"), fx.tensor::<f32>(n, "w"), fx.tensor::<f32>(n, "dy"));
        let options = conv_options(case, &w);
        let b = fx.has(n, "b").then(|| fx.tensor::<f32>(n, "b"));
        let y = conv_forward(&x, &w, b.as_ref(), &options).unwrap();
        assert_close(n, "y", &y, &fx.tensor(n, "y"));
        let needs = ConvNeeds { input: true, weight: true, bias: b.is_some() };
        let g = conv_backward(&x, &w, &options, &dy, needs).unwrap();
        assert_close(n, "dx", g.input.as_ref().unwrap(), &fx.tensor(n, "dx"));
        assert_close(n, "dw", g.weight.as_ref().unwrap(), &fx.tensor(n, "dw"));
        if let Some(db) = &g.bias {
            assert_close(n, "db", db, &fx.tensor(n, "db"));
        }
        let only_w =
            conv_backward(&x, &w, &options, &dy, ConvNeeds { input: false, weight: true, bias: false })
                .unwrap();
        assert!(only_w.input.is_none() && only_w.bias.is_none());
        assert_eq!(only_w.weight, g.weight, "{n}: the weight gradient does not depend on the other needs");
    }
}

#[test]
fn linear_backward_matches_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "linear") {
        let (x, w, dy) = (fx.tensor::<f32>(n, "x"), fx.tensor::<f32>(n, "w"), fx.tensor::<f32>(n, "dy"));
        let bias = case["bias"].as_bool().unwrap();
        let (dx, dw, db) = linear_backward(&x, &w, &dy, bias).unwrap();
        assert_close(n, "dx", &dx, &fx.tensor(n, "dx"));
        assert_close(n, "dw", &dw, &fx.tensor(n, "dw"));
        assert_eq!(db.is_some(), bias);
        if let Some(db) = db {
            assert_close(n, "db", &db, &fx.tensor(n, "db"));
        }
    }
}

#[test]
fn batch_norm_matches_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "bn_") {
        let x = fx.tensor::<f32>(n, "x");
        let (w, b) = (
            fx.has(n, "w").then(|| fx.tensor::<f32>(n, "w")),
            fx.has(n, "b").then(|| fx.tensor::<f32>(n, "b")),
        );
        let (mut rm, mut rv) = (fx.tensor::<f32>(n, "rm0"), fx.tensor::<f32>(n, "rv0"));
        let (momentum, eps) = (case["momentum"].as_f64().unwrap(), case["eps"].as_f64().unwrap());
        let (y, saved) =
            batch_norm_train(&x, w.as_ref(), b.as_ref(), &mut rm, &mut rv, momentum, eps).unwrap();
        let c = x.shape()[1];
        let vec1 = |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[c]), v.to_vec()).unwrap();
        assert_bits_eq(n, "mean", &vec1(&saved.mean), &fx.tensor(n, "mean"));
        assert_bits_eq(n, "invstd", &vec1(&saved.invstd), &fx.tensor(n, "invstd"));
        assert_bits_eq(n, "running_mean", &rm, &fx.tensor(n, "rm"));
        assert_bits_eq(n, "running_var", &rv, &fx.tensor(n, "rv"));
        assert_bits_eq(n, "y", &y, &fx.tensor(n, "y"));
        let dy = fx.tensor::<f32>(n, "dy");
        let g = batch_norm_backward(&x, w.as_ref(), &saved, &dy, BatchNormNeeds::ALL).unwrap();
        assert_close(n, "dx", g.input.as_ref().unwrap(), &fx.tensor(n, "dx"));
        let e = batch_norm_eval_backward(&x, w.as_ref(), &rm, &rv, eps, &dy, BatchNormNeeds::ALL).unwrap();
        assert_bits_eq(n, "eval dx", e.input.as_ref().unwrap(), &fx.tensor(n, "eval_dx"));
        if w.is_some() {
            assert_close(n, "dw", g.weight.as_ref().unwrap(), &fx.tensor(n, "dw"));
            assert_close(n, "db", g.bias.as_ref().unwrap(), &fx.tensor(n, "db"));
            assert_close(n, "eval dw", e.weight.as_ref().unwrap(), &fx.tensor(n, "eval_dw"));
            assert_close(n, "eval db", e.bias.as_ref().unwrap(), &fx.tensor(n, "eval_db"));
        }
    }
}

fn activation(case: &Value) -> Activation {
    match case["act"].as_str().unwrap() {
        "relu" => Activation::Relu,
        "relu6" => Activation::Relu6,
        "hardswish" => Activation::Hardswish,
        "hardsigmoid" => Activation::Hardsigmoid,
        "leaky_relu" => Activation::LeakyRelu { negative_slope: case["slope"].as_f64().unwrap() as f32 },
        "elu" => Activation::Elu { alpha: case["alpha"].as_f64().unwrap() as f32 },
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "gelu" => Activation::Gelu,
        other => panic!("unknown activation {other}"),
    }
}

#[test]
fn activations_match_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "act_") {
        let act = activation(case);
        let (x, dy) = (fx.tensor::<f32>(n, "x"), fx.tensor::<f32>(n, "dy"));
        let y = act.forward(&x).unwrap();
        let expected_y = fx.tensor(n, "y");
        let saved = if act.saves_output() { &y } else { &x };
        let dx = act.backward(saved, &dy).unwrap();
        if matches!(act, Activation::Gelu) {
            // ATen's vector erf gives NaN at infinity; ours (the C library's) gives +-1.
            let finite = |a: &ArrayD<f32>| {
                a.iter().zip(&x).map(|(&v, &xv)| if xv.is_finite() { v } else { 0.0 }).collect()
            };
            let (yf, ef): (Vec<f32>, Vec<f32>) = (finite(&y), finite(&expected_y));
            assert_close(
                n,
                "y",
                &ndarray::Array1::from(yf).into_dyn(),
                &ndarray::Array1::from(ef).into_dyn(),
            );
            let (dxf, edxf): (Vec<f32>, Vec<f32>) = (finite(&dx), finite(&fx.tensor(n, "dx")));
            assert_close(
                n,
                "dx",
                &ndarray::Array1::from(dxf).into_dyn(),
                &ndarray::Array1::from(edxf).into_dyn(),
            );
            continue;
        }
        if matches!(act, Activation::Elu { .. }) {
            assert_close(n, "y", &y, &expected_y);
        } else {
            assert_bits_eq(n, "y", &y, &expected_y);
        }
        assert_bits_eq(n, "dx", &dx, &fx.tensor(n, "dx"));
    }
}

fn ints(fx: &Fixture, case: &str, field: &str) -> ArrayD<i64> {
    fx.tensor::<i64>(case, field)
}

fn list(v: &Value, len: usize) -> Vec<usize> {
    vec![usize_of(v); len]
}

#[test]
fn max_pooling_matches_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "maxpool") {
        let x = fx.tensor::<f32>(n, "x");
        let d = x.ndim() - 2;
        let options = MaxPoolOptions {
            kernel_size: list(&case["kernel"], d),
            stride: list(&case["stride"], d),
            padding: list(&case["padding"], d),
            dilation: list(&case["dilation"], d),
            ceil_mode: case["ceil_mode"].as_bool().unwrap(),
        };
        let (y, idx) = max_pool_with_indices(&x, &options).unwrap();
        assert_bits_eq(n, "y", &y, &fx.tensor(n, "y"));
        assert_eq!(idx, ints(&fx, n, "idx"), "{n}: indices");
        let dx = max_pool_backward(&fx.tensor(n, "dy"), &idx, x.shape()).unwrap();
        assert_bits_eq(n, "dx", &dx, &fx.tensor(n, "dx"));
    }
}

#[test]
fn avg_pooling_backward_matches_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "avgpool") {
        let x = fx.tensor::<f32>(n, "x");
        let d = x.ndim() - 2;
        let options = AvgPoolOptions {
            kernel_size: list(&case["kernel"], d),
            stride: list(&case["stride"], d),
            padding: list(&case["padding"], d),
            ceil_mode: case["ceil_mode"].as_bool().unwrap(),
            count_include_pad: case["count_include_pad"].as_bool().unwrap(),
            divisor_override: Some(usize_of(&case["divisor"])).filter(|&v| v > 0),
        };
        let dx = avg_pool_backward(&fx.tensor(n, "dy"), x.shape(), &options).unwrap();
        assert_bits_eq(n, "dx", &dx, &fx.tensor(n, "dx"));
    }
}

#[test]
fn adaptive_pooling_matches_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "adaptive") {
        let x = fx.tensor::<f32>(n, "x");
        let out: Vec<usize> = case["out"].as_array().unwrap().iter().map(usize_of).collect();
        let dy = fx.tensor::<f32>(n, "dy");
        let dx = adaptive_avg_pool_backward(&dy, x.shape()).unwrap();
        assert_bits_eq(n, "dx", &dx, &fx.tensor(n, "dx"));
        let (y, idx) = adaptive_max_pool(&x, &out).unwrap();
        assert_bits_eq(n, "max y", &y, &fx.tensor(n, "ymax"));
        assert_eq!(idx, ints(&fx, n, "idx"), "{n}: indices");
        let dx = max_pool_backward(&dy, &idx, x.shape()).unwrap();
        assert_bits_eq(n, "max dx", &dx, &fx.tensor(n, "dxmax"));
    }
}

fn reduction(case: &Value) -> Reduction {
    match case["reduction"].as_str().unwrap() {
        "mean" => Reduction::Mean,
        "sum" => Reduction::Sum,
        _ => Reduction::None,
    }
}

#[test]
fn cross_entropy_matches_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "ce_") {
        let logits = fx.tensor::<f32>(n, "logits");
        let targets: Vec<usize> = ints(&fx, n, "target").iter().map(|&t| t as usize).collect();
        let ignore = case["ignore"].as_i64().unwrap();
        let options = CrossEntropyOptions {
            reduction: reduction(case),
            label_smoothing: case["smoothing"].as_f64().unwrap() as f32,
            ignore_index: (ignore >= 0).then_some(ignore as usize),
            weight: fx.has(n, "weight").then(|| fx.tensor::<f32>(n, "weight").iter().copied().collect()),
        };
        let (loss, grad) = cross_entropy(&logits, &targets, &options).unwrap();
        let loss = loss
            .into_shape_with_order(IxDyn(&[usize::max(
                1,
                targets.len() * (options.reduction == Reduction::None) as usize,
            )]))
            .unwrap();
        assert_close(n, "loss", &loss, &fx.tensor(n, "loss"));
        assert_close(n, "dlogits", &grad, &fx.tensor(n, "dlogits"));
    }
}

#[test]
fn mse_loss_matches_pytorch() {
    let fx = fixture();
    for (n, case) in cases(&fx, "mse_") {
        let (x, t) = (fx.tensor::<f32>(n, "x"), fx.tensor::<f32>(n, "t"));
        let (loss, dx) = mse_loss(&x, &t, reduction(case)).unwrap();
        let len = loss.len();
        assert_close(n, "loss", &loss.into_shape_with_order(IxDyn(&[len])).unwrap(), &fx.tensor(n, "loss"));
        assert_bits_eq(n, "dx", &dx, &fx.tensor(n, "dx"));
    }
}
