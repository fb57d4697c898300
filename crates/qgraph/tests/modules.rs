//! The weighted layers: float forward against naive references, quantized forward against
//! PyTorch's outputs (the workflow fixtures of `tools/golden/gen_workflow.py`), PyTorch's
//! printouts, and save / load round trips.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use qgraph::nn::{
    BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv, Conv1d, Conv2d, Conv3d, Linear, manual_seed,
};
use qgraph::quantized::{QuantizedAct, QuantizedBatchNorm, QuantizedConv, QuantizedLinear, QuantizedWeight};
use qgraph::record::{RawTensor, Record, TensorView, Tensors};
use qgraph::{GraphError, GraphResult, Module, QuantTensor, Value};
use qkernels::conv::PaddingMode;
use qkernels::elementwise::PerTensor;
use qobserve::{ObserverSpec, QDType, QScheme, defaults};
use qtest::{Fixture, XorShift};

mod common;
use common::fixture;

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = XorShift::new(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

fn assert_close(what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>) {
    assert_eq!(got.shape(), expected.shape(), "{what}: shape");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{what}[{i}]: {g} vs {e}");
    }
}

fn float(m: &dyn Module, x: &ArrayD<f32>) -> ArrayD<f32> {
    m.forward(Value::from(x.clone())).unwrap().into_float("test").unwrap()
}

fn repr(m: &dyn Module) -> String {
    m.to_string()
}

/// Naive convolution over any number of spatial dimensions, f64 sums, zero padding.
fn naive_conv(x: &ArrayD<f32>, conv: &Conv) -> ArrayD<f32> {
    let o = conv.options();
    let (w, d) = (conv.weight(), o.dims());
    let (cg, og) = (o.in_channels / o.groups, o.out_channels / o.groups);
    let mut shape = vec![x.shape()[0], o.out_channels];
    for a in 0..d {
        let span = o.dilation[a] * (o.kernel_size[a] - 1) + 1;
        shape.push((x.shape()[a + 2] + 2 * o.padding[a] - span) / o.stride[a] + 1);
    }
    ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let (n, oc) = (idx[0], idx[1]);
        let g = oc / og;
        let mut acc = conv.bias().map_or(0.0, |b| f64::from(b[[oc]]));
        for ic in 0..cg {
            for k in ndarray::indices(o.kernel_size.clone()) {
                let mut src = vec![n, g * cg + ic];
                let mut inside = true;
                for a in 0..d {
                    let pos =
                        (idx[a + 2] * o.stride[a] + k[a] * o.dilation[a]) as isize - o.padding[a] as isize;
                    inside &= pos >= 0 && (pos as usize) < x.shape()[a + 2];
                    src.push(pos.max(0) as usize);
                }
                if inside {
                    let mut widx = vec![oc, ic];
                    widx.extend((0..d).map(|a| k[a]));
                    acc += f64::from(x[IxDyn(&src)]) * f64::from(w[IxDyn(&widx)]);
                }
            }
        }
        acc as f32
    })
}

#[test]
fn float_conv_matches_the_naive_definition_in_1_2_and_3_d() {
    manual_seed(1);
    let convs = [
        Conv1d::new(4, 6, [3]).stride([2]).padding([1]).build().unwrap(),
        Conv2d::new(4, 6, [3, 2]).stride([1, 2]).padding([1, 0]).dilation([2, 1]).groups(2).build().unwrap(),
        Conv2d::new(6, 6, [3, 3]).padding([1, 1]).groups(6).bias(false).build().unwrap(),
        Conv2d::new(8, 5, [1, 1]).build().unwrap(),
        Conv3d::new(2, 3, [2, 3, 2]).padding([1, 0, 1]).stride([1, 2, 1]).build().unwrap(),
    ];
    for (i, conv) in convs.iter().enumerate() {
        let c = conv.in_channels();
        let mut shape = vec![2, c];
        shape.extend(std::iter::repeat_n(7, conv.dims()));
        let x = random(&shape, 10 + i as u64);
        assert_close(conv.type_name(), &float(conv, &x), &naive_conv(&x, conv));
    }
}

#[test]
fn reflect_padding_pads_first_then_convolves() {
    manual_seed(2);
    let conv = Conv2d::new(2, 3, [3, 3]).padding([1, 2]).padding_mode(PaddingMode::Reflect).build().unwrap();
    let plain = {
        let mut c = Conv2d::new(2, 3, [3, 3]).build().unwrap();
        c.set_weight_bias(conv.weight().clone(), conv.bias().cloned()).unwrap();
        c
    };
    let x = random(&[1, 2, 4, 5], 3);
    // Reflect-pad by hand: rows 1 and cols 2 mirrored without repeating the edge.
    let reflect = |i: isize, len: isize| if i < 0 { -i } else if i >= len { 2 * (len - 1) - i } else { i } as usize;
    let padded = ArrayD::from_shape_fn(IxDyn(&[1, 2, 6, 9]), |i| {
        x[[0, i[1], reflect(i[2] as isize - 1, 4), reflect(i[3] as isize - 2, 5)]]
    });
    assert_close("reflect", &float(&conv, &x), &float(&plain, &padded));
    assert!(repr(&conv).ends_with("padding=(1, 2), padding_mode=reflect)"), "{}", repr(&conv));
    let too_small = random(&[1, 2, 2, 2], 4);
    let err = conv.forward(Value::from(too_small)).unwrap_err();
    assert!(err.to_string().contains("reflect padding"), "{err}");
}

#[test]
fn conv_arguments_and_inputs_are_checked() {
    let err = Conv2d::new(3, 16, [3, 3]).groups(2).build().unwrap_err();
    assert!(err.to_string().contains("groups") && err.to_string().contains("in_channels (3)"), "{err}");
    assert!(Conv2d::new(3, 16, [3, 0]).build().is_err());
    assert!(Conv2d::new(3, 16, [3, 3]).stride([0, 1]).build().is_err());
    assert!(Conv2d::new(0, 16, [3, 3]).build().is_err());
    let conv = Conv2d::new(3, 16, [3, 3]).build().unwrap();
    let err = conv.forward(Value::from(random(&[1, 4, 5, 5], 1))).unwrap_err();
    assert!(err.to_string().contains("input channels is 4 but must be 3"), "{err}");
    let err = conv.forward(Value::from(random(&[4, 5, 5], 1))).unwrap_err();
    assert!(err.to_string().contains("input rank"), "{err}");
    let q = QuantTensor::quantize(&random(&[1, 3, 5, 5], 1), PerTensor::new(0.1, 3)).unwrap();
    assert_eq!(
        conv.forward(Value::Quant(q)).unwrap_err(),
        GraphError::ExpectedFloat { module: "Conv2d".into() }
    );
    let mut conv = conv;
    assert!(conv.set_weight_bias(ArrayD::zeros(IxDyn(&[16, 3, 3])), None).is_err());
    conv.set_weight_bias(ArrayD::zeros(IxDyn(&[16, 3, 3, 3])), None).unwrap();
    assert!(conv.bias().is_none() && repr(&conv).ends_with("bias=False)"));
}

#[test]
fn float_printouts_are_pytorchs() {
    let cases: Vec<(Box<dyn Module>, &str)> = vec![
        (
            Box::new(Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build().unwrap()),
            "Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))",
        ),
        (
            Box::new(Conv1d::new(4, 8, [5]).stride([2]).dilation([2]).groups(4).bias(false).build().unwrap()),
            "Conv1d(4, 8, kernel_size=(5,), stride=(2,), dilation=(2,), groups=4, bias=False)",
        ),
        (
            Box::new(Conv3d::new(1, 2, [1, 2, 3]).build().unwrap()),
            "Conv3d(1, 2, kernel_size=(1, 2, 3), stride=(1, 1, 1))",
        ),
        (Box::new(Linear::new(24, 10, false)), "Linear(in_features=24, out_features=10, bias=False)"),
        (
            Box::new(BatchNorm1d::new(7).momentum(0.01)),
            "BatchNorm1d(7, eps=1e-05, momentum=0.01, affine=True, bias=True, track_running_stats=True)",
        ),
        (
            Box::new(BatchNorm3d::new(2).affine(false).eps(0.001)),
            "BatchNorm3d(2, eps=0.001, momentum=0.1, affine=False, bias=False, track_running_stats=True)",
        ),
    ];
    for (m, expected) in cases {
        assert_eq!(repr(m.as_ref()), expected);
    }
}

#[test]
fn manual_seed_makes_initialisation_repeatable_and_bounded() {
    manual_seed(5);
    let a = Conv2d::new(4, 8, [3, 3]).build().unwrap();
    manual_seed(5);
    let b = Conv2d::new(4, 8, [3, 3]).build().unwrap();
    assert_eq!(a.weight(), b.weight());
    assert_eq!(a.bias(), b.bias());
    let c = Conv2d::new(4, 8, [3, 3]).build().unwrap();
    assert_ne!(a.weight(), c.weight());
    let bound = 1.0 / 36f32.sqrt();
    assert!(a.weight().iter().chain(a.bias().unwrap()).all(|w| w.abs() <= bound));
    assert!(a.weight().iter().any(|w| w.abs() > bound * 0.9));
}

#[test]
fn linear_matches_the_naive_definition_on_any_leading_shape() {
    manual_seed(3);
    let linear = Linear::new(5, 3, true);
    let x = random(&[2, 4, 5], 8);
    let expected = ArrayD::from_shape_fn(IxDyn(&[2, 4, 3]), |i| {
        let b = linear.bias().unwrap()[[i[2]]];
        (0..5).fold(f64::from(b), |acc, k| {
            acc + f64::from(x[[i[0], i[1], k]]) * f64::from(linear.weight()[[i[2], k]])
        }) as f32
    });
    assert_close("linear", &float(&linear, &x), &expected);
    let err = linear.forward(Value::from(random(&[2, 4], 1))).unwrap_err();
    assert!(err.to_string().contains("input features"), "{err}");
    // No input features: the output is the bias, one row per input row.
    let empty = Linear::new(0, 3, true);
    let y = float(&empty, &ArrayD::zeros(IxDyn(&[2, 0])));
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(
        y.index_axis(ndarray::Axis(0), 1).iter().collect::<Vec<_>>(),
        empty.bias().unwrap().iter().collect::<Vec<_>>()
    );
}

fn batch_norm_with_stats(n: usize, dims: usize, seed: u64) -> BatchNorm {
    let mut bn = match dims {
        1 => BatchNorm1d::new(n),
        2 => BatchNorm2d::new(n),
        _ => BatchNorm3d::new(n),
    };
    let v = |s: u64| random(&[n], seed + s);
    bn.set_params(v(0) * 0.2, v(1).mapv(|x| x.abs() + 0.5), Some((v(2) * 0.1 + 1.0, v(3) * 0.1))).unwrap();
    bn.set_training(false);
    bn
}

#[test]
fn batch_norm_normalises_with_running_statistics_in_eval_mode_only() {
    let bn = batch_norm_with_stats(3, 2, 20);
    let x = random(&[2, 3, 4, 4], 9);
    let p = bn.fold_params();
    let expected = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4, 4]), |i| {
        let c = i[1];
        let inv = 1.0 / (f64::from(p.running_var[c]) + p.eps).sqrt();
        ((f64::from(x[i.clone()]) - f64::from(p.running_mean[c])) * inv * f64::from(p.weight.unwrap()[c])
            + f64::from(p.bias.unwrap()[c])) as f32
    });
    assert_close("bn", &float(&bn, &x), &expected);
    let fresh = BatchNorm2d::new(3);
    assert!(fresh.training());
    let err = fresh.forward(Value::from(x.clone())).unwrap_err();
    assert!(err.to_string().contains("eval(&mut model)"), "{err}");
    let err = bn.forward(Value::from(random(&[2, 3, 4], 1))).unwrap_err();
    assert!(err.to_string().contains("expected 4D input"), "{err}");
    assert_eq!(
        bn.params().iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ["weight", "bias", "running_mean", "running_var"]
    );
    // BatchNorm1d takes [N, C] and [N, C, L].
    let bn1 = batch_norm_with_stats(3, 1, 30);
    assert_eq!(float(&bn1, &random(&[4, 3], 2)).shape(), &[4, 3]);
    assert_eq!(float(&bn1, &random(&[4, 3, 5], 2)).shape(), &[4, 3, 5]);
}

// ---------------------------------------------------------------------------------------------
// Quantized layers against PyTorch (the workflow fixtures).

fn qparams_of(fx: &Fixture, case: &str, path: &str) -> PerTensor {
    let scale = fx.tensor::<f64>(case, &format!("{path}.scale"))[[0]];
    let zp = fx.tensor::<i64>(case, &format!("{path}.zero_point"))[[0]];
    PerTensor::new(scale, zp)
}

/// A recorded quantized output of the converted PyTorch model, as a `QuantTensor`.
fn recorded(fx: &Fixture, path: &str) -> QuantTensor {
    let x = fx.tensor::<u8>("output", path);
    let rank = x.ndim();
    let data: Vec<u8> = if rank < 3 {
        x.iter().copied().collect()
    } else {
        let mut axes = vec![0];
        axes.extend(2..rank);
        axes.push(1);
        x.view().permuted_axes(IxDyn(&axes)).iter().copied().collect()
    };
    QuantTensor::new(data, x.shape().to_vec(), qparams_of(fx, "output", path)).unwrap()
}

fn fixture_weight(fx: &Fixture, path: &str) -> QuantizedWeight {
    let int = fx.tensor::<i8>("quantized", &format!("{path}.weight_int"));
    let scales =
        fx.tensor::<f64>("quantized", &format!("{path}.weight_scale")).iter().copied().collect::<Vec<_>>();
    let zps = fx.tensor::<i64>("quantized", &format!("{path}.weight_zero_point")).iter().copied().collect();
    let per_channel = scales.len() > 1;
    QuantizedWeight::new(int, scales, zps, per_channel).unwrap()
}

fn fixture_conv(fx: &Fixture, path: &str, conv: Conv, act: QuantizedAct) -> QuantizedConv {
    let bias = fx
        .has("quantized", &format!("{path}.bias"))
        .then(|| fx.tensor::<f32>("quantized", &format!("{path}.bias")));
    let options = conv.options().clone();
    QuantizedConv::from_parts(options, act, fixture_weight(fx, path), bias, qparams_of(fx, "quantized", path))
        .unwrap()
}

fn printed_converted(fx: &Fixture) -> String {
    let case = fx.cases.iter().find(|c| c["name"] == "printed").unwrap();
    case["converted"].as_str().unwrap().to_string()
}

fn check_against_pytorch(fx: &Fixture, m: &dyn Module, input: &str, path: &str) {
    let out = m.forward(Value::Quant(recorded(fx, input))).unwrap().into_quant("test").unwrap();
    let expected = fx.tensor::<u8>("output", path);
    assert_eq!(out.qparams(), qparams_of(fx, "output", path), "{path}: output parameters");
    assert_eq!(out.int_repr(), expected, "{path}: output integers");
    let name = path.rsplit('.').next().unwrap();
    let line = format!("({name}): {m}");
    assert!(printed_converted(fx).contains(&line), "{line} not in\n{}", printed_converted(fx));
}

#[test]
fn quantized_conv_relu_per_tensor_matches_pytorch() {
    let fx = fixture("workflow_seed");
    let conv1 = fixture_conv(
        &fx,
        "1",
        Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build().unwrap(),
        QuantizedAct::Relu,
    );
    assert_eq!(
        repr(&conv1),
        "QuantizedConvReLU2d(3, 16, kernel_size=(3, 3), stride=(1, 1), scale=0.005716023501008749, zero_point=0, padding=(1, 1))"
    );
    assert_eq!(
        conv1.extra_repr(),
        "3, 16, kernel_size=(3, 3), stride=(1, 1), scale=0.005716023501008749, zero_point=0, padding=(1, 1)"
    );
    check_against_pytorch(&fx, &conv1, "0", "1");
    let conv4 = fixture_conv(
        &fx,
        "4",
        Conv2d::new(16, 24, [3, 3]).padding([1, 1]).build().unwrap(),
        QuantizedAct::Relu,
    );
    check_against_pytorch(&fx, &conv4, "3", "4");
    // The same input again reuses the cached output stage and gives the same bits.
    let x = Value::Quant(recorded(&fx, "3"));
    assert_eq!(conv4.forward(x.clone()).unwrap(), conv4.forward(x).unwrap());
}

#[test]
fn quantized_convs_and_linear_per_channel_match_pytorch() {
    let fx = fixture("workflow_resnet");
    // PyTorch's fused conv gets the folded bias: the quantized module has one.
    let with_bias = |c: usize, o: usize, k: usize, s: usize, p: usize| {
        Conv2d::new(c, o, [k, k]).stride([s, s]).padding([p, p]).build().unwrap()
    };
    let cases = [
        ("quant", "conv1", with_bias(3, 8, 3, 1, 1), QuantizedAct::Relu),
        ("maxpool", "layer1.0.conv1", with_bias(8, 8, 3, 1, 1), QuantizedAct::Relu),
        ("layer1.0.relu", "layer1.0.conv2", with_bias(8, 8, 3, 1, 1), QuantizedAct::None),
        ("layer1.0.skip_add_relu", "layer2.0.conv1", with_bias(8, 16, 3, 2, 1), QuantizedAct::Relu),
        ("layer1.0.skip_add_relu", "layer2.0.downsample.0", with_bias(8, 16, 1, 2, 0), QuantizedAct::None),
    ];
    for (input, path, conv, act) in cases {
        let q = fixture_conv(&fx, path, conv, act);
        assert!(q.weight_qparams().is_per_channel());
        check_against_pytorch(&fx, &q, input, path);
    }
    let fc = QuantizedLinear::from_parts(
        16,
        10,
        QuantizedAct::None,
        fixture_weight(&fx, "fc"),
        Some(fx.tensor::<f32>("quantized", "fc.bias")),
        qparams_of(&fx, "quantized", "fc"),
    )
    .unwrap();
    assert_eq!(
        repr(&fc),
        "QuantizedLinear(in_features=16, out_features=10, scale=0.004778733476996422, zero_point=48, qscheme=torch.per_channel_affine)"
    );
    check_against_pytorch(&fx, &fc, "flatten", "fc");
}

/// The float weight of `path` after fusion, as PyTorch computed it.
fn fused_weight(fx: &Fixture, key: &str) -> ArrayD<f32> {
    fx.tensor::<f32>("fused", key)
}

#[test]
fn weights_are_quantized_as_pytorchs_convert_does() {
    let seed = fixture("workflow_seed");
    let per_tensor =
        ObserverSpec::min_max().with_args(|a| a.dtype(QDType::QInt8).qscheme(QScheme::PerTensorAffine));
    for (key, path) in [("1.0.weight", "1"), ("4.0.weight", "4")] {
        let w = QuantizedWeight::from_observer(&fused_weight(&seed, key), &per_tensor).unwrap();
        assert_eq!(w, fixture_weight(&seed, path), "{path}");
    }
    let resnet = fixture("workflow_resnet");
    let per_channel = defaults::default_per_channel_weight_observer();
    for (key, path) in [
        ("conv1.0.weight", "conv1"),
        ("layer2.0.downsample.0.weight", "layer2.0.downsample.0"),
        ("fc.weight", "fc"),
    ] {
        let w = QuantizedWeight::from_observer(&fused_weight(&resnet, key), &per_channel).unwrap();
        assert_eq!(w, fixture_weight(&resnet, path), "{path}");
        assert_eq!(w.qscheme(), QScheme::PerChannelAffine);
    }
}

#[test]
fn narrow_weight_observers_clamp_and_non_qint8_observers_are_refused() {
    // -127..127: a weight whose minimum maps to -128 under affine parameters is clamped to -127.
    let w = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![-1.0f32, 0.5, 0.25, -0.3, 0.9, 0.1]).unwrap();
    let narrow = ObserverSpec::min_max().with_args(|a| a.dtype(QDType::QInt8).quant_range(-127, 127));
    let q = QuantizedWeight::from_observer(&w, &narrow).unwrap();
    assert!(q.int().iter().all(|&v| v >= -127));
    let err = QuantizedWeight::from_observer(&w, &ObserverSpec::min_max()).unwrap_err();
    assert!(err.to_string().contains("qint8"), "{err}");
    let err = QuantizedWeight::from_observer(&w, &ObserverSpec::placeholder()).unwrap_err();
    assert!(err.to_string().contains("weight observer"), "{err}");
}

#[test]
fn quantized_conv_extensions_and_errors() {
    manual_seed(9);
    let conv = Conv2d::new(4, 6, [3, 3]).padding([1, 1]).build().unwrap();
    let spec = defaults::default_per_channel_weight_observer();
    let out_q = PerTensor::new(0.02, 10);
    let wide_q = PerTensor::new(0.05, 10);
    let relu = QuantizedConv::from_float(&conv, QuantizedAct::Relu, &spec, wide_q).unwrap();
    let relu6 = QuantizedConv::from_float(&conv, QuantizedAct::Relu6, &spec, wide_q).unwrap();
    assert_eq!(relu6.type_name(), "QuantizedConvReLU6_2d");
    let big = QuantTensor::quantize(&(random(&[1, 4, 5, 5], 3) * 12.0), PerTensor::new(0.1, 128)).unwrap();
    let a = relu.forward(Value::Quant(big.clone())).unwrap().into_quant("t").unwrap();
    let b = relu6.forward(Value::Quant(big)).unwrap().into_quant("t").unwrap();
    let six = 6.0f32 / 0.05 + 10.0;
    assert!(a.data().iter().any(|&v| f32::from(v) > six), "some outputs exceed 6.0");
    let clamped: Vec<u8> = a.data().iter().map(|&v| v.min(six as u8)).collect();
    assert_eq!(b.data(), clamped.as_slice());
    assert!(a.data().iter().all(|&v| v >= 10));
    let err = relu.forward(Value::from(random(&[1, 4, 5, 5], 1))).unwrap_err();
    assert_eq!(err, GraphError::ExpectedQuantized { module: "QuantizedConvReLU2d".into() });
    assert!(QuantizedConv::from_float(&conv, QuantizedAct::None, &spec, PerTensor::new(0.1, 300)).is_err());
    // 1-d and 3-d convolutions run too, reflect padding included.
    let c1 =
        Conv1d::new(2, 3, [3]).padding([1]).padding_mode(PaddingMode::Reflect).bias(false).build().unwrap();
    let q1 = QuantizedConv::from_float(&c1, QuantizedAct::None, &spec, out_q).unwrap();
    assert_eq!(
        repr(&q1),
        "QuantizedConv1d(2, 3, kernel_size=(3,), stride=(1,), scale=0.02, zero_point=10, padding=(1,), bias=False)"
    );
    let x1 = QuantTensor::quantize(&random(&[2, 2, 6], 4), PerTensor::new(0.01, 128)).unwrap();
    assert_eq!(q1.forward(Value::Quant(x1)).unwrap().shape().unwrap(), &[2, 3, 6]);
    let c3 = Conv3d::new(2, 4, [1, 2, 2]).stride([1, 2, 2]).build().unwrap();
    let q3 = QuantizedConv::from_float(&c3, QuantizedAct::Relu, &spec, out_q).unwrap();
    let x3 = QuantTensor::quantize(&random(&[1, 2, 3, 4, 4], 5), PerTensor::new(0.01, 128)).unwrap();
    assert_eq!(q3.forward(Value::Quant(x3)).unwrap().shape().unwrap(), &[1, 4, 3, 2, 2]);
    assert_eq!(q3.type_name(), "QuantizedConvReLU3d");
}

#[test]
fn quantized_linear_matches_the_integer_definition() {
    manual_seed(4);
    let linear = Linear::new(6, 4, true);
    let out_q = PerTensor::new(0.03, 100);
    let q =
        QuantizedLinear::from_float(&linear, QuantizedAct::None, &defaults::default_weight_observer(), out_q)
            .unwrap();
    assert_eq!(q.type_name(), "QuantizedLinear");
    assert!(repr(&q).ends_with("qscheme=torch.per_tensor_affine)"), "{}", repr(&q));
    let in_q = PerTensor::new(0.02, 60);
    let x = QuantTensor::quantize(&random(&[3, 6], 6), in_q).unwrap();
    let y = q.forward(Value::Quant(x.clone())).unwrap().into_quant("t").unwrap();
    // FBGEMM's per-tensor rule: (acc + bias * (1 / (a_scale * w_scale))) * (a_scale * w_scale / out_scale).
    let w = q.weight_qparams();
    let (ws, wz) = (w.scales()[0] as f32, w.zero_points()[0] as i32);
    let act_w = in_q.scale as f32 * ws;
    let mult = act_w / out_q.scale as f32;
    let xi = x.int_repr();
    for r in 0..3 {
        for j in 0..4 {
            let acc: i32 =
                (0..6).map(|k| (i32::from(xi[[r, k]]) - 60) * (i32::from(q.weight_int()[[j, k]]) - wz)).sum();
            let bias = q.bias().unwrap()[[j]] * (1.0 / f64::from(act_w)) as f32;
            let v = ((acc as f32 + bias) * mult).round_ties_even() as i32 + 100;
            assert_eq!(i32::from(y.int_repr()[[r, j]]), v.clamp(0, 255), "[{r}, {j}]");
        }
    }
    // [*, in] inputs: the rows of a rank-3 input give the rows of the rank-3 output.
    let x3 = QuantTensor::quantize(&random(&[2, 3, 6], 6), in_q).unwrap();
    let y3 = q.forward(Value::Quant(x3.clone())).unwrap().into_quant("t").unwrap();
    let rows = QuantTensor::new(x3.int_repr().iter().copied().collect(), vec![6, 6], in_q).unwrap();
    let y2 = q.forward(Value::Quant(rows)).unwrap().into_quant("t").unwrap();
    assert_eq!(
        y3.int_repr().iter().copied().collect::<Vec<_>>(),
        y2.int_repr().iter().copied().collect::<Vec<_>>()
    );
    let relu =
        QuantizedLinear::from_float(&linear, QuantizedAct::Relu, &defaults::default_weight_observer(), out_q)
            .unwrap();
    assert_eq!(relu.type_name(), "QuantizedLinearReLU");
}

#[test]
fn quantized_batch_norm_uses_the_kernel_and_prints_as_pytorch() {
    let bn = batch_norm_with_stats(5, 2, 40);
    let out_q = PerTensor::new(0.05, 64);
    let q = QuantizedBatchNorm::from_float(&bn, false, out_q).unwrap();
    let qr = QuantizedBatchNorm::from_float(&bn, true, out_q).unwrap();
    assert_eq!(
        repr(&q),
        "QuantizedBatchNorm2d(5, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    );
    assert_eq!(qr.type_name(), "QuantizedBNReLU2d");
    let in_q = PerTensor::new(0.03, 120);
    let x = QuantTensor::quantize(&random(&[2, 5, 3, 3], 7), in_q).unwrap();
    let y = q.forward(Value::Quant(x.clone())).unwrap().into_quant("t").unwrap();
    let yr = qr.forward(Value::Quant(x.clone())).unwrap().into_quant("t").unwrap();
    let v = |a: &ArrayD<f32>| a.iter().copied().collect::<Vec<f32>>();
    let (w, b, m, var) =
        (v(bn.weight().unwrap()), v(bn.bias().unwrap()), v(bn.running_mean()), v(bn.running_var()));
    let params = qkernels::norm::BatchNormParams { weight: &w, bias: &b, mean: &m, var: &var, eps: 1e-5 };
    let folded = qkernels::norm::FusedBatchNorm::new(&params, in_q, out_q, false).unwrap();
    for (i, (&xi, &yi)) in x.data().iter().zip(y.data()).enumerate() {
        assert_eq!(yi, folded.element(i % 5, xi), "element {i}");
    }
    assert!(yr.data().iter().zip(y.data()).all(|(&r, &v)| r == v.max(64)));
    assert!(QuantizedBatchNorm::from_float(&batch_norm_with_stats(5, 1, 1), false, out_q).is_err());
    let q3 = QuantizedBatchNorm::from_float(&batch_norm_with_stats(2, 3, 1), true, out_q).unwrap();
    assert_eq!(q3.type_name(), "QuantizedBNReLU3d");
}

// ---------------------------------------------------------------------------------------------
// Save / load round trips.

/// Saves `m` through `config()` / `tensors()` and rebuilds it with `load`.
fn round_trip<M>(
    m: &dyn Module,
    children: Vec<(String, Box<dyn Module>)>,
    load: impl FnOnce(Record<'_>) -> GraphResult<M>,
) -> M {
    let config = serde_json::from_str(&serde_json::to_string(&m.config()).unwrap()).unwrap();
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = m
        .tensors()
        .into_iter()
        .map(|(name, t)| match t {
            TensorView::F32(a) => (
                name,
                safetensors::Dtype::F32,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            TensorView::I8(a) => (
                name,
                safetensors::Dtype::I8,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            TensorView::F64(a) => (
                name,
                safetensors::Dtype::F64,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            TensorView::I64(a) => (
                name,
                safetensors::Dtype::I64,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            TensorView::U8(a) => {
                (name, safetensors::Dtype::U8, a.shape().to_vec(), a.iter().copied().collect())
            }
        })
        .collect();
    let map: BTreeMap<String, RawTensor<'_>> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), RawTensor { dtype: *d, shape: s, bytes: b })).collect();
    let record = Record { path: "m".into(), config, tensors: Tensors::new("m", map), children };
    load(record).unwrap()
}

fn same_outputs(a: &dyn Module, b: &dyn Module, x: Value) {
    assert_eq!(a.to_string(), b.to_string());
    assert_eq!(a.forward(x.clone()).unwrap(), b.forward(x).unwrap());
}

#[test]
fn every_module_type_survives_a_save_load_round_trip() {
    manual_seed(11);
    let spec = defaults::default_per_channel_weight_observer();
    let conv = Conv2d::new(3, 4, [3, 3]).padding([1, 1]).padding_mode(PaddingMode::Reflect).build().unwrap();
    let x = random(&[1, 3, 5, 5], 1);
    same_outputs(&conv, &round_trip(&conv, vec![], Conv::from_record), Value::from(x.clone()));
    let nobias = Conv1d::new(3, 4, [2]).bias(false).build().unwrap();
    same_outputs(
        &nobias,
        &round_trip(&nobias, vec![], Conv::from_record),
        Value::from(random(&[1, 3, 5], 1)),
    );
    let linear = Linear::new(5, 2, true);
    same_outputs(&linear, &round_trip(&linear, vec![], Linear::from_record), Value::from(random(&[3, 5], 2)));
    let bn = batch_norm_with_stats(3, 2, 50);
    same_outputs(&bn, &round_trip(&bn, vec![], BatchNorm::from_record), Value::from(x.clone()));

    let out_q = PerTensor::new(0.04, 20);
    let xq = Value::Quant(QuantTensor::quantize(&x, PerTensor::new(0.02, 100)).unwrap());
    for act in [QuantizedAct::None, QuantizedAct::Relu, QuantizedAct::Relu6] {
        let q = QuantizedConv::from_float(&conv, act, &spec, out_q).unwrap();
        same_outputs(&q, &round_trip(&q, vec![], QuantizedConv::from_record), xq.clone());
    }
    let per_tensor =
        QuantizedConv::from_float(&nobias, QuantizedAct::None, &defaults::default_weight_observer(), out_q)
            .unwrap();
    let loaded = round_trip(&per_tensor, vec![], QuantizedConv::from_record);
    assert!(!loaded.weight_qparams().is_per_channel());
    let xq1 = Value::Quant(QuantTensor::quantize(&random(&[1, 3, 5], 1), PerTensor::new(0.02, 100)).unwrap());
    same_outputs(&per_tensor, &loaded, xq1);
    let ql = QuantizedLinear::from_float(&linear, QuantizedAct::Relu, &spec, out_q).unwrap();
    let xl = Value::Quant(QuantTensor::quantize(&random(&[3, 5], 2), PerTensor::new(0.02, 100)).unwrap());
    same_outputs(&ql, &round_trip(&ql, vec![], QuantizedLinear::from_record), xl);
    let qbn = QuantizedBatchNorm::from_float(&bn, true, out_q).unwrap();
    same_outputs(&qbn, &round_trip(&qbn, vec![], QuantizedBatchNorm::from_record), xq);

    let fused = qgraph::nn::Fused::new(
        qgraph::nn::FusedKind::ConvReLU(2),
        Box::new(conv.clone()),
        Box::new(qgraph::nn::ReLU::new()),
    )
    .unwrap();
    let children: Vec<(String, Box<dyn Module>)> =
        fused.children().into_iter().map(|(n, m)| (n.to_string(), m.clone_module())).collect();
    same_outputs(&fused, &round_trip(&fused, children, qgraph::nn::Fused::from_record), Value::from(x));
}

#[test]
fn quantized_reflect_padding_equals_padding_the_quantized_input() {
    manual_seed(12);
    let conv = Conv2d::new(2, 3, [3, 3]).padding([1, 2]).padding_mode(PaddingMode::Reflect).build().unwrap();
    let spec = defaults::default_per_channel_weight_observer();
    let out_q = PerTensor::new(0.03, 70);
    let q = QuantizedConv::from_float(&conv, QuantizedAct::None, &spec, out_q).unwrap();
    let plain_options = Conv2d::new(2, 3, [3, 3]).build().unwrap().options().clone();
    let plain = QuantizedConv::from_parts(
        plain_options,
        QuantizedAct::None,
        q.weight_qparams().clone(),
        q.bias().cloned(),
        out_q,
    )
    .unwrap();
    let x = QuantTensor::quantize(&random(&[1, 2, 4, 5], 13), PerTensor::new(0.01, 128)).unwrap();
    let xi = x.int_repr();
    let reflect = |i: isize, len: isize| if i < 0 { -i } else if i >= len { 2 * (len - 1) - i } else { i } as usize;
    // Channels-last [1, 6, 9, 2] storage of the reflect-padded input.
    let mut padded = Vec::new();
    for h in 0..6 {
        for w in 0..9 {
            for c in 0..2 {
                padded.push(xi[[0, c, reflect(h as isize - 1, 4), reflect(w as isize - 2, 5)]]);
            }
        }
    }
    let padded = QuantTensor::new(padded, vec![1, 2, 6, 9], x.qparams()).unwrap();
    assert_eq!(q.forward(Value::Quant(x)).unwrap(), plain.forward(Value::Quant(padded)).unwrap());
}
