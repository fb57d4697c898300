//! Activations, pooling, dropout, upsample and softmax (float modules on float and quantized
//! values) and the quantized activations, against PyTorch 2.15 (`tools/golden/gen_activations.py`):
//! quantized outputs bit-exact, float outputs within 1e-5 relative, printouts identical, and a
//! save/load round trip per module. `Hardsigmoid` and `Threshold` (fixture `activations_added`)
//! are checked bit for bit in float too.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use qgraph::mappings::Mappings;
use qgraph::nn::{
    AvgPool2d, Dropout, ELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, MaxPool, ReLU, ReLU6, Sigmoid,
    Size, Softmax, Tanh, Threshold, Upsample, UpsampleMode,
};
use qgraph::quantized::activation as qa;
use qgraph::record::{Record, Tensors};
use qgraph::{GraphError, MemoryFormat, Module, QuantTensor, Value};
use qkernels::Isa;
use qkernels::elementwise::{self, PerTensor, Unary};
use qkernels::qcore::QDType;
use qtest::{Fixture, f64_of, i64_of, name};
use serde_json::Value as Json;

fn load() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "activations")
}

fn size<const D: usize>(v: &Json) -> Size<D> {
    match v {
        Json::Array(a) => {
            let values: Vec<usize> = a.iter().map(|x| x.as_u64().unwrap() as usize).collect();
            Size::from(<[usize; D]>::try_from(values).unwrap())
        }
        x => Size::from(x.as_u64().unwrap() as usize),
    }
}

fn f64_or(args: &Json, key: &str, default: f64) -> f64 {
    args.get(key).map_or(default, f64_of)
}

fn max_pool<const D: usize>(a: &Json) -> Box<dyn Module> {
    let mut m = MaxPool::<D>::new(size::<D>(&a["kernel_size"]));
    if let Some(s) = a.get("stride") {
        m = m.stride(size::<D>(s));
    }
    if let Some(p) = a.get("padding") {
        m = m.padding(size::<D>(p));
    }
    if let Some(d) = a.get("dilation") {
        m = m.dilation(size::<D>(d));
    }
    Box::new(m.ceil_mode(a.get("ceil_mode") == Some(&Json::Bool(true))))
}

/// The module a case describes, as PyTorch built it.
fn build(case: &Json) -> Box<dyn Module> {
    let a = &case["args"];
    let kind = case["kind"].as_str().unwrap();
    let out_q = || PerTensor::new(f64_of(&a["scale"]), i64_of(&a["zero_point"]));
    if case["quantized"] == true {
        return match kind {
            "ReLU6" => Box::new(qa::ReLU6::new()),
            "Hardswish" => Box::new(qa::Hardswish::new(out_q()).unwrap()),
            "ELU" => Box::new(qa::ELU::new(out_q(), f64_or(a, "alpha", 1.0)).unwrap()),
            "LeakyReLU" => Box::new(qa::LeakyReLU::new(out_q(), f64_or(a, "negative_slope", 0.01)).unwrap()),
            "Dropout" => Box::new(qa::Dropout::new(f64_of(&a["p"])).unwrap()),
            other => panic!("no quantized {other}"),
        };
    }
    match kind {
        "ReLU" => Box::new(ReLU::new()),
        "ReLU6" => Box::new(ReLU6::new()),
        "Hardtanh" => Box::new(Hardtanh::new(f64_or(a, "min_val", -1.0), f64_or(a, "max_val", 1.0))),
        "Hardswish" => Box::new(Hardswish::new()),
        "Hardsigmoid" => Box::new(Hardsigmoid::new()),
        "Threshold" => Box::new(Threshold::new(f64_of(&a["threshold"]), f64_of(&a["value"]))),
        "Sigmoid" => Box::new(Sigmoid::new()),
        "Tanh" => Box::new(Tanh::new()),
        "LeakyReLU" => Box::new(LeakyReLU::new(f64_or(a, "negative_slope", 0.01))),
        "ELU" => Box::new(ELU::new(f64_or(a, "alpha", 1.0))),
        "Dropout" => Box::new(Dropout::new(f64_of(&a["p"])).unwrap()),
        "Softmax" => Box::new(Softmax::new(i64_of(&a["dim"]))),
        "MaxPool1d" => max_pool::<1>(a),
        "MaxPool2d" => max_pool::<2>(a),
        "MaxPool3d" => max_pool::<3>(a),
        "AvgPool2d" => {
            let mut m = AvgPool2d::new(size::<2>(&a["kernel_size"]));
            if let Some(s) = a.get("stride") {
                m = m.stride(size::<2>(s));
            }
            if let Some(p) = a.get("padding") {
                m = m.padding(size::<2>(p));
            }
            Box::new(
                m.ceil_mode(a.get("ceil_mode") == Some(&Json::Bool(true)))
                    .count_include_pad(a.get("count_include_pad") != Some(&Json::Bool(false)))
                    .divisor_override(a.get("divisor_override").map(i64_of)),
            )
        }
        "Upsample" => {
            let mut m = match (a.get("size"), a.get("scale_factor")) {
                (Some(s), None) => Upsample::size(size::<2>(s)),
                (None, Some(Json::Array(v))) => Upsample::scale_factors([f64_of(&v[0]), f64_of(&v[1])]),
                (None, Some(s)) => Upsample::scale_factor(f64_of(s)),
                _ => panic!("size or scale_factor"),
            };
            if a.get("mode").and_then(Json::as_str) == Some("bilinear") {
                m = m.mode(UpsampleMode::Bilinear);
            }
            if let Some(ac) = a.get("align_corners") {
                m = m.align_corners(ac == true);
            }
            Box::new(m)
        }
        other => panic!("no module {other}"),
    }
}

/// Saves `m` (its configuration through JSON text, as a file would) and rebuilds it.
fn reload(m: &dyn Module) -> Box<dyn Module> {
    assert!(m.tensors().is_empty(), "{}: these modules save no tensors", m.type_name());
    let text = serde_json::to_string(&m.config()).unwrap();
    let record = Record {
        path: "m".into(),
        config: serde_json::from_str(&text).unwrap(),
        tensors: Tensors::new("m", BTreeMap::new()),
        children: Vec::new(),
    };
    qgraph::io::Loaders::default().build(m.saved_type(), record).unwrap()
}

/// The quantized input of a case: `x` quantized (checked against PyTorch's `xq`), or for the
/// sweeps, which have no float input, `xq` itself (rank 2, stored as it is).
fn quant_input(fx: &Fixture, n: &str, case: &Json) -> Value {
    let q = PerTensor::new(f64_of(&case["scale"]), i64_of(&case["zero_point"]));
    let expected = fx.tensor::<u8>(n, "xq");
    if !fx.has(n, "x") {
        let shape = expected.shape().to_vec();
        return Value::Quant(QuantTensor::new(expected.into_raw_vec_and_offset().0, shape, q).unwrap());
    }
    let xq = QuantTensor::quantize(&fx.tensor::<f32>(n, "x"), q).unwrap();
    assert_eq!(xq.int_repr(), expected, "{n}: quantize_per_tensor");
    // The fixtures run the modules on channels-last inputs, as after a convolution.
    Value::Quant(xq.with_memory_format(MemoryFormat::ChannelsLast))
}

/// Checks the quantized output of `m` against the case; returns it for further checks.
fn check_quant(fx: &Fixture, n: &str, case: &Json, m: &dyn Module) {
    let got = m.forward(quant_input(fx, n, case));
    if case["quant_error"] == true {
        let err = got.expect_err(n);
        assert!(matches!(err, GraphError::ExpectedFloat { .. }), "{n}: {err}");
        return;
    }
    let Value::Quant(y) = got.unwrap_or_else(|e| panic!("{n}: {e}")) else { panic!("{n}: float output") };
    let q = y.qparams();
    assert_eq!((q.scale, q.zero_point), (f64_of(&case["out_scale"]), i64_of(&case["out_zero_point"])), "{n}");
    qtest::assert_ints_eq(n, "int_repr", &y.int_repr().mapv(i32::from), &fx.ints(n, "yq"));
}

fn check_float(fx: &Fixture, n: &str, m: &dyn Module) {
    let y = m.forward(Value::Float(fx.tensor::<f32>(n, "x"))).unwrap().into_float(n).unwrap();
    let e: ArrayD<f32> = fx.tensor(n, "y");
    assert_eq!(y.shape(), e.shape(), "{n}: shape");
    for (i, (&g, &e)) in y.iter().zip(&e).enumerate() {
        // Relative 1e-5, absolute 1e-5 near zero (outputs cancel to zero; inputs are of order 1).
        assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{n}: y[{i}] = {g:e}, PyTorch {e:e}");
    }
}

#[test]
fn quantized_paths_are_bit_exact_with_pytorch() {
    let fx = load();
    assert!(fx.cases.len() >= 90, "{} cases", fx.cases.len());
    for case in &fx.cases {
        let n = name(case);
        let m = build(case);
        check_quant(&fx, n, case, m.as_ref());
        // Twice: the second run reuses the cached lookup table.
        check_quant(&fx, n, case, m.as_ref());
    }
}

#[test]
fn float_paths_match_pytorch() {
    let fx = load();
    // The sweeps (every input byte through PyTorch's vector body and scalar tail) have no float
    // output.
    for case in fx.cases.iter().filter(|c| c["quantized"] == false && c.get("sweep").is_none()) {
        check_float(&fx, name(case), build(case).as_ref());
    }
}

#[test]
fn printouts_match_pytorch() {
    let fx = load();
    for case in &fx.cases {
        let m = build(case);
        assert_eq!(m.to_string(), case["str"].as_str().unwrap(), "{}", name(case));
    }
}

#[test]
fn save_and_load_round_trip() {
    let fx = load();
    for case in &fx.cases {
        let n = name(case);
        let m = build(case);
        let back = reload(m.as_ref());
        assert_eq!(back.to_string(), m.to_string(), "{n}");
        assert_eq!(back.config(), m.config(), "{n}");
        check_quant(&fx, n, case, back.as_ref());
    }
}

#[test]
fn quantized_modules_need_quantized_input() {
    let x = Value::Float(ArrayD::zeros(ndarray::IxDyn(&[1, 2, 2, 2])));
    let m = qa::Hardswish::new(PerTensor::new(0.1, 3)).unwrap();
    let err = m.forward(x).unwrap_err();
    assert!(
        matches!(err, GraphError::ExpectedQuantized { ref module } if module == "QuantizedHardswish"),
        "{err}"
    );
}

#[test]
fn swap_follows_pytorchs_static_mapping() {
    let q = PerTensor::new(0.1, 3);
    let mappings = Mappings::default();
    let qconfig = qgraph::qconfig::default_qconfig();
    let names = |m: &dyn Module| {
        assert!(mappings.is_observed(m), "{m}");
        mappings.quantize(m, &qconfig, q).unwrap().to_string()
    };
    assert_eq!(names(&ReLU6::new()), "QuantizedReLU6()");
    assert_eq!(names(&ELU::new(0.5)), "QuantizedELU(alpha=0.5)");
    assert_eq!(names(&LeakyReLU::new(0.2)), "QuantizedLeakyReLU(negative_slope=0.2)");
    assert_eq!(names(&Hardswish::new()), "QuantizedHardswish()");
    // Dropout is not observed: prepare marks it, convert swaps it when it had a qconfig.
    let mut dropout: Box<dyn Module> = Box::new(Dropout::new(0.5).unwrap());
    assert!(!mappings.is_observed(dropout.as_ref()));
    assert!(mappings.mark(dropout.as_mut(), Some(&qconfig)));
    let swapped = mappings.take(dropout.as_ref()).unwrap().expect("marked with a qconfig");
    assert_eq!(swapped.to_string(), "QuantizedDropout(p=0.5, inplace=False)");
    assert!(mappings.mark(dropout.as_mut(), None));
    assert!(mappings.take(dropout.as_ref()).unwrap().is_none());
    for m in [&Sigmoid::new() as &dyn Module, &Tanh::new(), &ReLU::new(), &Softmax::new(1)] {
        assert!(!mappings.is_observed(m), "{m}");
        let err = mappings.quantize(m, &qconfig, q).unwrap_err();
        assert!(err.to_string().contains("register_static"), "{err}");
    }
    assert_eq!(qa::is_fixed_qparams("Sigmoid"), Some(PerTensor::new(1.0 / 256.0, 0)));
    assert_eq!(qa::is_fixed_qparams("Softmax"), Some(PerTensor::new(1.0 / 256.0, 0)));
    assert_eq!(qa::is_fixed_qparams("Tanh"), Some(PerTensor::new(2.0 / 256.0, 128)));
    assert_eq!(qa::is_fixed_qparams("ReLU"), None);
}

#[test]
fn dropout_refuses_training_mode() {
    let mut m: Box<dyn Module> = Box::new(Dropout::new(0.5).unwrap());
    qgraph::train(&mut m, true);
    let err = m.forward(Value::Float(ArrayD::zeros(ndarray::IxDyn(&[2])))).unwrap_err();
    assert!(err.to_string().contains("eval"), "{err}");
    qgraph::eval(&mut m);
    assert!(m.forward(Value::Float(ArrayD::zeros(ndarray::IxDyn(&[2])))).is_ok());
    assert!(Dropout::new(1.5).is_err());
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let xq = Value::Quant(
        QuantTensor::quantize(&ArrayD::zeros(ndarray::IxDyn(&[1, 2, 3, 3])), PerTensor::new(0.1, 0)).unwrap(),
    );
    let xf = Value::Float(ArrayD::zeros(ndarray::IxDyn(&[1, 2, 3, 3])));
    let bad: Vec<Box<dyn Module>> = vec![
        Box::new(MaxPool::<2>::new(5)),
        Box::new(MaxPool::<2>::new(2).padding(2)),
        Box::new(MaxPool::<2>::new(2).stride(0)),
        Box::new(MaxPool::<1>::new(2)),
        Box::new(MaxPool::<3>::new(2)),
        Box::new(AvgPool2d::new(2).divisor_override(Some(0))),
        Box::new(Hardtanh::new(1.0, -1.0)),
        Box::new(Softmax::new(4)),
        Box::new(Upsample::scale_factor(2.0).align_corners(true)),
        Box::new(Upsample::scale_factor(-1.0)),
        Box::new(Upsample::size(0)),
    ];
    for m in &bad {
        let quant_ok = m.type_name() == "Softmax";
        assert!(m.forward(xf.clone()).is_err(), "{m} on float");
        assert!(quant_ok || m.forward(xq.clone()).is_err(), "{m} on quantized");
    }
    // Non-integer scale factors need scale-based indices the quantized kernels do not take.
    let up = Upsample::scale_factor(2.5).mode(UpsampleMode::Bilinear);
    assert!(up.forward(xf).is_ok());
    assert!(up.forward(xq).is_err());
}

#[test]
fn softmax_without_dim_picks_pytorchs_implicit_dim() {
    let m = Softmax::implicit();
    assert_eq!((&m as &dyn Module).to_string(), "Softmax(dim=None)");
    // Rank 4: dim 1, so every pixel's channels sum to one.
    let x =
        ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 3, 2, 2]), |i| (i[1] * 4 + i[2] * 2 + i[3]) as f32 * 0.1);
    let y = m.forward(Value::Float(x)).unwrap().into_float("test").unwrap();
    for s in y.sum_axis(ndarray::Axis(1)) {
        assert!((s - 1.0).abs() < 1e-6, "{s}");
    }
}

#[test]
fn added_activations_match_pytorch_bit_for_bit() {
    let fx = Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "activations_added");
    // The `parts` case is split in two by PyTorch's threads; the other cases are below 32768.
    let threads = fx.threads.expect("the fixture records PyTorch's thread count");
    assert!(threads >= 2, "the `parts` case needs PyTorch with two or more threads");
    let previous = qgraph::set_pytorch_threads(threads);
    let (mut floats, mut quint8, mut qint8) = (0, 0, 0);
    for case in &fx.cases {
        let n = name(case);
        let m = build(case);
        assert_eq!(m.to_string(), case["str"].as_str().unwrap(), "{n}");
        if fx.has(n, "y") {
            let y = m.forward(Value::Float(fx.tensor::<f32>(n, "x"))).unwrap().into_float(n).unwrap();
            qtest::assert_bits_eq(n, "y", &y, &fx.tensor(n, "y"));
            floats += 1;
        }
        if case["qint8"] == true {
            // The kernel on qint8 (qgraph's activations are quint8): every value, vector body.
            let in_q = PerTensor::new(f64_of(&case["scale"]), i64_of(&case["zero_point"]));
            let out_q = Unary::Hardsigmoid.output_qparams(in_q, QDType::QInt8);
            assert_eq!(
                (out_q.scale, out_q.zero_point),
                (f64_of(&case["out_scale"]), i64_of(&case["out_zero_point"]))
            );
            let x = fx.tensor::<i8>(n, "xq").into_raw_vec_and_offset().0;
            let expected = fx.ints(n, "yq");
            for isa in Isa::supported() {
                let mut out = vec![0i8; x.len()];
                elementwise::unary(Unary::Hardsigmoid, &x, in_q, &mut out, out_q, isa).unwrap();
                let got =
                    ArrayD::from_shape_vec(expected.raw_dim(), out.iter().map(|&v| i32::from(v)).collect());
                qtest::assert_ints_eq(&format!("{n} on {isa}"), "int_repr", &got.unwrap(), &expected);
            }
            qint8 += 1;
        } else if case.get("quant_error").is_some() {
            check_quant(&fx, n, case, m.as_ref());
            check_quant(&fx, n, case, reload(m.as_ref()).as_ref());
            quint8 += 1;
        }
    }
    qgraph::set_pytorch_threads(previous);
    assert_eq!((floats, quint8, qint8), (12, 73, 3));
}

#[test]
fn hardsigmoid_and_threshold_stay_in_place_at_convert() {
    let q = PerTensor::new(0.1, 3);
    let mappings = Mappings::default();
    let qconfig = qgraph::qconfig::default_qconfig();
    for m in [&Hardsigmoid::new() as &dyn Module, &Threshold::new(0.1, 20.0)] {
        assert!(!mappings.is_observed(m) && mappings.quantize(m, &qconfig, q).is_err(), "{m}");
    }
    assert_eq!(qa::is_fixed_qparams("Hardsigmoid"), Some(PerTensor::new(1.0 / 256.0, 0)));
}
