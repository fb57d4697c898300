//! qfake::grad against PyTorch 2.15 autograd (`tools/golden/gen_grad.py`): convolution, linear,
//! batch norm, activations, pooling, cross-entropy and MSE, forward and backward. Results that
//! follow ATen's order of operations are compared bit for bit; GEMM-based ones (and the sums ATen
//! vectorizes) to `1e-6 * max |torch|` per tensor (docs/NUMERICS.md, "Training gradients").

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
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
        // 2-D layers larger than 1x1, not depthwise, sum in oneDNN's order: PyTorch's bits for
        // batches of two or more (a single image takes ATen's im2col + MKL path).
        let depthwise = options.groups == options.in_channels && options.groups == options.out_channels;
        let onednn = options.dims() == 2 && w.shape()[2..].iter().product::<usize>() > 1 && !depthwise;
        if onednn && x.shape()[0] > 1 {
            assert_bits_eq(n, "y", &y, &fx.tensor(n, "y"));
        } else {
            assert_close(n, "y", &y, &fx.tensor(n, "y"));
        }
        let needs = ConvNeeds { input: true, weight: true, bias: b.is_some() };
        let g = conv_backward(&x, &w, &options, &dy, needs).unwrap();
        assert_close(n, "dx", g.input.as_ref().unwrap(), &fx.tensor(n, "dx"));
        // The weight gradient is one fused multiply-add chain over (image, position), oneDNN's
        // order for kernels larger than 1x1; the bias gradient a float sum in that order, which
        // PyTorch takes for batches of two or more.
        if w.shape()[2..].iter().all(|&k| k == 1) {
            assert_close(n, "dw", g.weight.as_ref().unwrap(), &fx.tensor(n, "dw"));
        } else {
            assert_bits_eq(n, "dw", g.weight.as_ref().unwrap(), &fx.tensor(n, "dw"));
        }
        if let Some(db) = &g.bias {
            if x.shape()[0] > 1 {
                assert_bits_eq(n, "db", db, &fx.tensor(n, "db"));
            } else {
                assert_close(n, "db", db, &fx.tensor(n, "db"));
            }
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
        // Both GEMMs sum in MKL's order here, except the input gradient of a single row.
        if x.len() / x.shape()[x.ndim() - 1] > 1 {
            assert_bits_eq(n, "dx", &dx, &fx.tensor(n, "dx"));
        } else {
            assert_close(n, "dx", &dx, &fx.tensor(n, "dx"));
        }
        assert_bits_eq(n, "dw", &dw, &fx.tensor(n, "dw"));
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

/// One entry per spatial axis: a case's list, or its single value repeated.
fn list(v: &Value, len: usize) -> Vec<usize> {
    match v.as_array() {
        Some(values) => values.iter().map(usize_of).collect(),
        None => vec![usize_of(v); len],
    }
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

/// The convolution gradients by direct loops in f64 over every (output, tap) pair: `dx`, `dw`,
/// `db` and, per element, the sum of the absolute terms (for the tolerance).
fn naive_conv_backward(
    x: &ArrayD<f32>,
    w: &ArrayD<f32>,
    o: &ConvOptions,
    dy: &ArrayD<f32>,
) -> [(Vec<f64>, Vec<f64>); 3] {
    let d = o.dims();
    let pad3 = |v: &[usize], fill: usize| {
        let mut r = [fill; 3];
        r[3 - d..].copy_from_slice(v);
        r
    };
    let (isp, osp) = (pad3(&x.shape()[2..], 1), pad3(&dy.shape()[2..], 1));
    let (k, s, p, dl) =
        (pad3(&o.kernel_size, 1), pad3(&o.stride, 1), pad3(&o.padding, 0), pad3(&o.dilation, 1));
    let (n, c, oc, g) = (x.shape()[0], o.in_channels, o.out_channels, o.groups);
    let (cg, og) = (c / g, oc / g);
    let (xs, ws, gs) = (x.as_slice().unwrap(), w.as_slice().unwrap(), dy.as_slice().unwrap());
    let mut dx = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
    let mut dw = (vec![0.0; ws.len()], vec![0.0; ws.len()]);
    let mut db = (vec![0.0; oc], vec![0.0; oc]);
    let ivol = isp[0] * isp[1] * isp[2];
    let ovol = osp[0] * osp[1] * osp[2];
    let kvol = k[0] * k[1] * k[2];
    for b in 0..n {
        for oo in 0..oc {
            let gi = oo / og;
            for op in 0..ovol {
                let ocoord = [op / (osp[1] * osp[2]), op / osp[2] % osp[1], op % osp[2]];
                let gy = gs[(b * oc + oo) * ovol + op] as f64;
                db.0[oo] += gy;
                db.1[oo] += gy.abs();
                for ci in 0..cg {
                    for kk in 0..kvol {
                        let kc = [kk / (k[1] * k[2]), kk / k[2] % k[1], kk % k[2]];
                        let mut idx = 0usize;
                        let mut inside = true;
                        for a in 0..3 {
                            let pos = (ocoord[a] * s[a] + kc[a] * dl[a]) as i64 - p[a] as i64;
                            inside &= pos >= 0 && (pos as usize) < isp[a];
                            idx = idx * isp[a] + pos.max(0) as usize;
                        }
                        if !inside {
                            continue;
                        }
                        let xi = (b * c + gi * cg + ci) * ivol + idx;
                        let wi = (oo * cg + ci) * kvol + kk;
                        dx.0[xi] += ws[wi] as f64 * gy;
                        dx.1[xi] += (ws[wi] as f64 * gy).abs();
                        dw.0[wi] += xs[xi] as f64 * gy;
                        dw.1[wi] += (xs[xi] as f64 * gy).abs();
                    }
                }
            }
        }
    }
    [dx, dw, db]
}

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let len = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), qtest::random_f32s(len, seed)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// conv_backward against direct loops on random small geometries (1-3 spatial axes, groups,
    /// stride, padding, dilation): checks the im2col / col2im index arithmetic, including the
    /// transposed (input-gradient) direction, to float rounding of the summed terms.
    #[test]
    fn conv_backward_matches_direct_loops(
        dims in 1usize..=3,
        n in 1usize..=3,
        groups in 1usize..=3,
        cg in 1usize..=3,
        og in 1usize..=3,
        k in 1usize..=3,
        stride in 1usize..=3,
        dilation in 1usize..=2,
        pad in 0usize..=2,
        extra in 0usize..=4,
        seed in any::<u64>(),
    ) {
        let span = dilation * (k - 1) + 1;
        let size = (span + extra).saturating_sub(2 * pad).max(1);
        prop_assume!(size + 2 * pad >= span);
        let (c, o) = (cg * groups, og * groups);
        let options = ConvOptions {
            in_channels: c,
            out_channels: o,
            kernel_size: vec![k; dims],
            stride: vec![stride; dims],
            padding: vec![pad; dims],
            dilation: vec![dilation; dims],
            groups,
            bias: true,
            padding_mode: qgraph::qkernels::conv::PaddingMode::Zeros,
        };
        let mut xshape = vec![n, c];
        xshape.extend(vec![size; dims]);
        let x = random(&xshape, seed);
        let w = random(&options.weight_shape(), seed ^ 1);
        let y = conv_forward(&x, &w, None, &options).unwrap();
        let dy = random(y.shape(), seed ^ 2);
        let grads = conv_backward(&x, &w, &options, &dy, ConvNeeds::ALL).unwrap();
        let reference = naive_conv_backward(&x, &w, &options, &dy);
        for (what, got, (exact, abs)) in [
            ("dx", grads.input.unwrap(), &reference[0]),
            ("dw", grads.weight.unwrap(), &reference[1]),
            ("db", grads.bias.unwrap(), &reference[2]),
        ] {
            prop_assert_eq!(got.len(), exact.len());
            for (i, ((&g, &e), &a)) in got.iter().zip(exact).zip(abs).enumerate() {
                prop_assert!((g as f64 - e).abs() <= 1e-5 * a + 1e-30, "{} [{}]: {} vs {}", what, i, g, e);
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = random(&[2, 3, 5, 5], 1);
    let options = Conv2d::new(3, 4, [3, 3]).build().unwrap().options().clone();
    let w = random(&options.weight_shape(), 2);
    let dy = random(&[2, 4, 3, 3], 3);
    assert!(conv_backward(&x, &w, &options, &random(&[2, 4, 3, 2], 4), ConvNeeds::ALL).is_err());
    assert!(conv_backward(&random(&[2, 2, 5, 5], 1), &w, &options, &dy, ConvNeeds::ALL).is_err());
    assert!(conv_backward(&random(&[2, 3, 5], 1), &w, &options, &dy, ConvNeeds::ALL).is_err());
    assert!(conv_forward(&x, &random(&[4, 3, 2, 2], 5), None, &options).is_err());
    assert!(conv_forward(&x, &w, Some(&random(&[3], 5)), &options).is_err());
    let reflect = Conv2d::new(3, 4, [3, 3])
        .padding([1, 1])
        .padding_mode(qgraph::qkernels::conv::PaddingMode::Reflect)
        .build()
        .unwrap();
    let err =
        conv_backward(&x, &w, reflect.options(), &random(&[2, 4, 5, 5], 6), ConvNeeds::ALL).unwrap_err();
    assert!(err.to_string().contains("reflect"), "{err}");

    assert!(linear_backward(&random(&[5, 7], 1), &random(&[3, 6], 2), &random(&[5, 3], 3), true).is_err());
    assert!(linear_backward(&random(&[5, 7], 1), &random(&[3, 7], 2), &random(&[4, 3], 3), true).is_err());
    assert!(linear_backward(&random(&[5, 7], 1), &random(&[21], 2), &random(&[5, 3], 3), true).is_err());

    let (mut rm, mut rv) = (ArrayD::zeros(IxDyn(&[3])), ArrayD::ones(IxDyn(&[3])));
    assert!(batch_norm_train(&random(&[3], 1), None, None, &mut rm, &mut rv, 0.1, 1e-5).is_err());
    assert!(batch_norm_train(&random(&[1, 3], 1), None, None, &mut rm, &mut rv, 0.1, 1e-5).is_err());
    assert!(
        batch_norm_train(&random(&[4, 3], 1), Some(&random(&[2], 1)), None, &mut rm, &mut rv, 0.1, 1e-5)
            .is_err()
    );
    assert!(batch_norm_train(&random(&[4, 2], 1), None, None, &mut rm, &mut rv, 0.1, 1e-5).is_err());
    let (_, saved) = batch_norm_train(&random(&[4, 3], 1), None, None, &mut rm, &mut rv, 0.1, 1e-5).unwrap();
    assert!(
        batch_norm_backward(&random(&[4, 3], 1), None, &saved, &random(&[4, 2], 1), BatchNormNeeds::ALL)
            .is_err()
    );
    assert!(
        batch_norm_backward(&random(&[4, 2], 1), None, &saved, &random(&[4, 2], 1), BatchNormNeeds::ALL)
            .is_err()
    );

    assert!(Activation::Relu.backward(&random(&[4], 1), &random(&[5], 1)).is_err());
    let max = MaxPoolOptions {
        kernel_size: vec![3, 3],
        stride: vec![1, 1],
        padding: vec![2, 2],
        dilation: vec![1, 1],
        ceil_mode: false,
    };
    assert!(max_pool_with_indices(&x, &max).is_err(), "padding above half the kernel");
    let max = MaxPoolOptions { padding: vec![1, 1], ..max };
    assert!(max_pool_with_indices(&random(&[5, 5], 1), &max).is_err());
    let (_, idx) = max_pool_with_indices(&x, &max).unwrap();
    let bad_idx = idx.mapv(|i| i + 100);
    assert!(max_pool_backward(&random(&[2, 3, 5, 5], 1), &bad_idx, x.shape()).is_err());
    assert!(max_pool_backward(&random(&[2, 3, 5], 1), &idx, x.shape()).is_err());
    let err = max_pool_with_indices(&random(&[1, 2, 4, 4, 4], 1), &max).unwrap_err().to_string();
    assert!(err.contains("needs 3 entries"), "3-D pooling with 2-D options: {err}");
    assert!(adaptive_max_pool(&x, &[0, 2]).is_err());
    assert!(adaptive_max_pool(&x, &[2]).is_err());
    assert!(adaptive_avg_pool_backward(&random(&[2, 3, 2], 1), x.shape()).is_err());

    let logits = random(&[2, 3], 1);
    assert!(cross_entropy(&logits, &[0], &CrossEntropyOptions::default()).is_err());
    assert!(cross_entropy(&logits, &[0, 3], &CrossEntropyOptions::default()).is_err());
    let smoothing = CrossEntropyOptions { label_smoothing: 1.5, ..Default::default() };
    assert!(cross_entropy(&logits, &[0, 1], &smoothing).is_err());
    let weighted = CrossEntropyOptions { weight: Some(vec![1.0; 2]), ..Default::default() };
    assert!(cross_entropy(&logits, &[0, 1], &weighted).is_err());
    assert!(mse_loss(&logits, &random(&[3, 2], 1), Reduction::Mean).is_err());
    assert!(dropout_train(&logits, 1.5, &mut DropoutRng::new(1)).is_err());
}

#[test]
fn dropout_scales_kept_elements_and_backward_uses_the_mask() {
    let x = random(&[64, 33], 7);
    let (y, mask) = dropout_train(&x, 0.25, &mut DropoutRng::new(3)).unwrap();
    let kept = mask.iter().filter(|&&m| m).count() as f64 / mask.len() as f64;
    assert!((kept - 0.75).abs() < 0.05, "kept fraction {kept}");
    let scale = (1.0 / 0.75f64) as f32;
    for ((&yv, &xv), &m) in y.iter().zip(&x).zip(&mask) {
        assert_eq!(yv, if m { xv * scale } else { 0.0 });
    }
    let (y2, mask2) = dropout_train(&x, 0.25, &mut DropoutRng::new(3)).unwrap();
    assert_eq!((y2, mask2.clone()), (y.clone(), mask.clone()), "same seed, same mask");
    let g = dropout_backward(&x, &mask, 0.25).unwrap();
    assert_eq!(g, y, "the backward of dropout is the same masked scaling");
    let (all, _) = dropout_train(&x, 1.0, &mut DropoutRng::new(3)).unwrap();
    assert!(all.iter().all(|&v| v == 0.0));
    let (none, _) = dropout_train(&x, 0.0, &mut DropoutRng::new(3)).unwrap();
    assert_eq!(none, x);
}

#[test]
fn cumulative_momentum_averages_the_batches() {
    // momentum=None: after k batches the running mean is the average of the k batch means.
    let (mut rm, mut rv) = (ArrayD::zeros(IxDyn(&[1])), ArrayD::ones(IxDyn(&[1])));
    let mut tracked = 0;
    for v in [1.0f32, 2.0, 6.0] {
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![v - 1.0, v + 1.0]).unwrap();
        let m = cumulative_momentum(&mut tracked);
        batch_norm_train(&x, None, None, &mut rm, &mut rv, m, 1e-5).unwrap();
    }
    assert_eq!(tracked, 3);
    assert_eq!(rm[[0]], 3.0);
    assert_eq!(rv[[0]], 2.0);
}

/// A `MaxPool3d` in a model trains through `Backprop` with the 3-D pooling above: its forward
/// equals the module's inference forward and its input gradient is `max_pool_backward`'s.
#[test]
fn max_pool3d_trains_in_a_model() {
    use qfake::train::Backprop;
    use qgraph::nn::MaxPool3d;
    use qgraph::{Module, Sequential, Value};
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(MaxPool3d::new(2).stride(1))]));
    qgraph::train(&mut model, true);
    let x = random(&[1, 2, 3, 4, 5], 9);
    let backprop = Backprop::default();
    let (y, tape) = backprop.forward(model.as_mut(), Value::Float(x.clone())).unwrap();
    let y = y.into_float("test").unwrap();
    assert_eq!(y, model.forward(Value::Float(x.clone())).unwrap().into_float("test").unwrap());
    let g = random(y.shape(), 10);
    let (dx, _) = backprop.backward(model.as_ref(), tape, Value::Float(g.clone())).unwrap();
    let options = MaxPoolOptions {
        kernel_size: vec![2; 3],
        stride: vec![1; 3],
        padding: vec![0; 3],
        dilation: vec![1; 3],
        ceil_mode: false,
    };
    let (_, idx) = max_pool_with_indices(&x, &options).unwrap();
    assert_eq!(dx.into_float("test").unwrap(), max_pool_backward(&g, &idx, x.shape()).unwrap());
}
