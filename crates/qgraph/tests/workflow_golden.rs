//! The eager workflow against PyTorch (fixtures from `tools/golden/gen_workflow.py`): the seed's
//! model and a small ResNet-style model are built with PyTorch's float weights, fused, prepared,
//! calibrated on PyTorch's batches and converted; then fused weights, observer parameters,
//! quantized weights, every module's int8 output and the printout are compared.
//!
//! Float convolutions sum in a different order than PyTorch's, so activations (and the ranges
//! observers see) can differ in the last bit; observer parameters are therefore compared to a
//! relative 1e-5 with exact zero points, and int8 outputs must agree on at least 99.9% of
//! elements and never differ by more than 1 (the bar). A MobileNetV3-style
//! squeeze-excitation model (Hardsigmoid) goes through the same workflow.
//!
//! How often `prepare`'s observers run is compared exactly (fixture `workflow_observations`):
//! small models whose float outputs are exact in any summation order, calibrated with
//! moving-average observers, must end with PyTorch's call counts and bit-identical ranges.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use qgraph::fuse::fuse_modules;
use qgraph::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Hardsigmoid, Linear, ReLU, ReLU6};
use qgraph::qconfig::{QConfig, get_default_qconfig};
use qgraph::qobserve::ObservedRange;
use qgraph::qobserve::{ObserverSpec, QDType, QScheme};
use qgraph::quantized::{QuantizedConv, QuantizedLinear};
use qgraph::workflow::{Observed, ObserverModule};
use qgraph::{
    DeQuantStub, FloatFunctional, Functional, Graph, GraphResult, Module, QConfigMapping, QuantStub,
    Sequential, Value, calibrate, convert, debug, eval, load_state_dict, prepare,
};
use qtest::{Fixture, assert_bits_eq};

mod common;
use common::{RESNET_FUSE, agreement, fixture, mask_scales, mask_values, params, resnet_model, seed_model};

/// The model's parameters read from the fixture case `case` under the model's own names.
fn state_dict_of(model: &dyn Module, fx: &Fixture, case: &str) -> BTreeMap<String, ArrayD<f32>> {
    model.state_dict().into_iter().map(|(key, _)| (key.clone(), fx.tensor::<f32>(case, &key))).collect()
}

fn assert_close(what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>, rel: f32) {
    assert_eq!(got.shape(), expected.shape(), "{what}: shape");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= rel * scale, "{what}: largest difference {worst} exceeds {rel} x {scale}");
}

struct Workflow {
    fx: Fixture,
    float: Box<dyn Module>,
    model: Box<dyn Module>,
}

fn run_workflow(
    name: &str,
    mut model: Box<dyn Module>,
    fuse: &[&[&str]],
    mapping: QConfigMapping,
) -> Workflow {
    let fx = fixture(name);
    eval(&mut model);
    let weights = state_dict_of(model.as_ref(), &fx, "float");
    load_state_dict(&mut model, weights).expect("float weights load");
    let float = model.clone();
    fuse_modules(&mut model, fuse).expect("fuse");
    // Folding is PyTorch's arithmetic step for step (NUMERICS section 10): bit-identical weights.
    for (key, got) in model.state_dict() {
        assert_bits_eq(name, &format!("fused {key}"), got, &fx.tensor::<f32>("fused", &key));
    }
    prepare(&mut model, &mapping).expect("prepare");
    let batches: Vec<ArrayD<f32>> = (0..4).map(|i| fx.tensor::<f32>("calib", &i.to_string())).collect();
    calibrate(model.as_ref(), batches, |_, _| {}).expect("calibrate");
    // The prepared model prints as PyTorch's, observed ranges aside (compared below).
    let mask = |text: &str| mask_values(&mask_values(text, "min_val="), "max_val=");
    let torch_prepared = params(&fx, "printed")["prepared"].as_str().expect("printout");
    assert_eq!(mask(&model.to_string()), mask(torch_prepared), "{name}: prepared printout");

    let observed = params(&fx, "observer")["paths"].as_array().expect("paths");
    let mut exact = 0;
    for path in observed.iter().map(|p| p.as_str().expect("path")) {
        let module = model.get(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let observed =
            module.downcast_ref::<Observed>().unwrap_or_else(|| panic!("{name}: {path} is not observed"));
        let q = observed.post_process().activation_qparams().expect("qparams");
        let torch = fx.tensor::<f64>("observer", path);
        let (scale, zp) = (torch[[0]], torch[[1]] as i64);
        assert_eq!(q.zero_point, zp, "{name}: zero point of {path}");
        assert!((q.scale - scale).abs() <= 1e-5 * scale, "{name}: scale of {path}: {} vs {scale}", q.scale);
        exact += usize::from(q.scale == scale);
    }
    let ours: Vec<String> =
        model.named_modules().into_iter().filter(|(_, m)| m.is::<Observed>()).map(|(p, _)| p).collect();
    assert_eq!(ours.len(), observed.len(), "{name}: observed modules {ours:?}");
    eprintln!("{name}: {exact} of {} observer scales bit-identical to PyTorch's", observed.len());
    convert(&mut model).expect("convert");
    Workflow { fx, float, model }
}

/// Compares the converted model with PyTorch's: every layer's int8 output must agree on at least
/// `layer_bar` of its elements and differ nowhere by more than `max_difference`, and all layers
/// together must agree on 99.9%.
fn check_converted(name: &str, wf: &mut Workflow, layer_bar: f64, max_difference: i32) {
    let fx = &wf.fx;
    // Quantized weights and output parameters.
    let modules = params(fx, "quantized")["modules"].as_object().expect("modules");
    for (path, _) in modules {
        let module = wf.model.get(path).expect("converted module");
        let (weight, scale, zp) = if let Some(c) = module.downcast_ref::<QuantizedConv>() {
            (c.weight_int(), c.scale(), c.zero_point())
        } else if let Some(l) = module.downcast_ref::<QuantizedLinear>() {
            (l.weight_int(), l.scale(), l.zero_point())
        } else {
            continue;
        };
        let torch = fx.tensor::<i8>("quantized", &format!("{path}.weight_int"));
        let (w, t) = (weight.mapv(|v| (v as i16 + 128) as u8), torch.mapv(|v| (v as i16 + 128) as u8));
        assert_eq!(w, t, "{name}: {path} quantized weights differ from PyTorch's");
        let torch_scale = fx.tensor::<f64>("quantized", &format!("{path}.scale"))[[0]];
        assert!((scale - torch_scale).abs() <= 1e-5 * torch_scale, "{name}: {path} output scale");
        assert_eq!(
            zp,
            fx.tensor::<i64>("quantized", &format!("{path}.zero_point"))[[0]],
            "{name}: {path} zero point"
        );
    }

    // Every module's int8 output on the test input.
    let log =
        debug::log_outputs(&mut wf.model, |_, m| m.children().is_empty() || m.type_name() == "QFunctional")
            .expect("loggers");
    let x = fx.tensor::<f32>("input", "x");
    let out =
        wf.model.forward(Value::from(x.clone())).expect("int8 forward").into_float_lossy().expect("a tensor");
    let outputs: BTreeMap<String, Value> = log.take().into_iter().collect();
    let (mut compared, mut equal_total, mut total) = (0, 0.0, 0.0);
    for path in
        params(fx, "output")["order"].as_array().expect("order").iter().map(|p| p.as_str().expect("path"))
    {
        let (Some(Value::Quant(q)), true) = (outputs.get(path), fx.has("output", &format!("{path}.scale")))
        else {
            continue;
        };
        let (equal, worst) = agreement(&q.int_repr(), &fx.tensor::<u8>("output", path));
        eprintln!("{name}: {path}: {:.4}% equal, largest difference {worst}", equal * 100.0);
        assert!(
            equal >= layer_bar && worst <= max_difference,
            "{name}: {path}: {equal} equal, worst {worst}"
        );
        compared += 1;
        equal_total += equal * q.shape().iter().product::<usize>() as f64;
        total += q.shape().iter().product::<usize>() as f64;
    }
    assert!(compared >= 3, "{name}: only {compared} quantized outputs compared");
    eprintln!("{name}: all layers: {:.4}% equal", 100.0 * equal_total / total);
    assert!(equal_total / total >= 0.999, "{name}: {equal_total} of {total} equal");
    debug::remove_loggers(&mut wf.model).expect("remove loggers");

    let torch_final = fx.tensor::<f32>("output", "final");
    let float_out =
        wf.float.forward(Value::from(x)).expect("float forward").into_float_lossy().expect("a tensor");
    assert_close(&format!("{name}: float output"), &float_out, &fx.tensor::<f32>("input", "float_out"), 1e-4);
    assert_close(&format!("{name}: int8 output"), &out, &torch_final, 0.05);

    // The printout has PyTorch's shape (scales compared above, to a relative 1e-5).
    let printed = params(fx, "printed")["converted"].as_str().expect("printout");
    let ours = wf.model.to_string();
    assert_eq!(mask_scales(&ours), mask_scales(printed), "{name}: printout\n{ours}");
}

#[test]
fn seed_model_matches_pytorch() {
    let qconfig = QConfig {
        activation: ObserverSpec::min_max(),
        weight: ObserverSpec::min_max()
            .with_args(|a| a.dtype(QDType::QInt8).qscheme(QScheme::PerTensorAffine)),
    };
    let mapping = QConfigMapping::global(qconfig).set_name("9", None).set_name("10", None);
    let fuse: &[&[&str]] = &[&["1", "2", "3"], &["4", "5", "6"]];
    let mut wf = run_workflow("workflow_seed", seed_model().unwrap(), fuse, mapping);
    check_converted("workflow_seed", &mut wf, 0.999, 1);
}

#[test]
fn resnet_style_model_matches_pytorch() {
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    let mut wf = run_workflow("workflow_resnet", resnet_model().unwrap(), RESNET_FUSE, mapping);
    check_converted("workflow_resnet", &mut wf, 0.999, 1);
}

/// `SqueezeExcitation` of `tools/golden/gen_workflow.py`: a conv, then torchvision's MobileNetV3
/// squeeze-excitation (pool, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid, multiply).
fn se_model() -> GraphResult<Box<dyn Module>> {
    let mut b = Graph::builder("SqueezeExcitation");
    let x = b.then("quant", QuantStub::new(), Graph::INPUT);
    let x = b.then("conv", Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build()?, &x);
    let s = b.then("avgpool", AdaptiveAvgPool2d::new(1), &x);
    let s = b.then("fc1", Conv2d::new(16, 8, [1, 1]).build()?, &s);
    let s = b.then("relu", ReLU::new(), &s);
    let s = b.then("fc2", Conv2d::new(8, 16, [1, 1]).build()?, &s);
    let s = b.then("scale_activation", Hardsigmoid::new(), &s);
    let y = b.then_functional("skip_mul", FloatFunctional::new(), Functional::Mul, &[&x, &s]);
    let y = b.then("dequant", DeQuantStub::new(), &y);
    Ok(Box::new(b.build(&y)?))
}

#[test]
fn squeeze_excitation_with_hardsigmoid_matches_pytorch() {
    let mapping = QConfigMapping::global(get_default_qconfig("x86").unwrap());
    let mut wf = run_workflow("workflow_se", se_model().unwrap(), &[&["fc1", "relu"]], mapping);
    // Hardsigmoid has no observer after prepare (eval mode) and stays in place at convert.
    for stage in ["prepared", "converted"] {
        let printed = params(&wf.fx, "printed")[stage].as_str().unwrap();
        assert!(printed.contains("(scale_activation): Hardsigmoid()\n"), "{stage}: {printed}");
    }
    check_converted("workflow_se", &mut wf, 0.999, 1);
    // Saved and loaded, the converted model (Hardsigmoid included) computes the same integers.
    let loaded = qgraph::io::from_bytes(&qgraph::io::to_bytes(wf.model.as_ref()).unwrap()).unwrap();
    assert_eq!(loaded.to_string(), wf.model.to_string());
    let x = Value::from(wf.fx.tensor::<f32>("input", "x"));
    let (a, b) = (wf.model.forward(x.clone()).unwrap(), loaded.forward(x).unwrap());
    assert_eq!(a.into_float_lossy(), b.into_float_lossy());
}

/// The model of `gen_workflow.py`'s `observation_models`: QuantStub, `layers`, DeQuantStub.
fn observation_model(name: &str) -> Box<dyn Module> {
    let conv = || -> Box<dyn Module> { Box::new(Conv2d::new(1, 4, [1, 1]).build().unwrap()) };
    let bn = || -> Box<dyn Module> { Box::new(BatchNorm2d::new(4).eps(0.0)) };
    let mut layers: Vec<Box<dyn Module>> = vec![Box::new(QuantStub::new())];
    layers.extend(match name {
        "conv_relu" => vec![conv(), Box::new(ReLU::new())],
        "linear_relu" => vec![Box::new(Linear::new(1, 4, true)) as Box<dyn Module>, Box::new(ReLU::new())],
        "bn_relu" => vec![bn(), Box::new(ReLU::new())],
        "conv_bn_relu" => vec![conv(), bn(), Box::new(ReLU::new())],
        "conv_relu6" => vec![conv(), Box::new(ReLU6::new())],
        other => panic!("no model {other}"),
    });
    layers.push(Box::new(DeQuantStub::new()));
    Box::new(Sequential::new(layers))
}

#[test]
fn fused_outputs_are_observed_twice_per_batch_as_in_pytorch() {
    let fx = fixture("workflow_observations");
    let qconfig = QConfig {
        activation: ObserverSpec::MovingAverageMinMax {
            averaging_constant: 0.5,
            args: qgraph::qobserve::UniformArgs::per_tensor(),
        },
        weight: qgraph::qobserve::defaults::default_weight_observer(),
    };
    let (mut models, mut observers, mut twice) = (0, 0, 0);
    for case in fx.cases.iter().filter(|c| c.get("fuse").is_some()) {
        let name = qtest::name(case);
        let mut model = observation_model(name);
        eval(&mut model);
        let weights = state_dict_of(model.as_ref(), &fx, name);
        load_state_dict(&mut model, weights).expect("weights");
        if let Some(group) = case["fuse"].as_array() {
            let group: Vec<&str> = group.iter().map(|p| p.as_str().unwrap()).collect();
            fuse_modules(&mut model, &[&group]).expect("fuse");
        }
        prepare(&mut model, &QConfigMapping::global(qconfig.clone())).expect("prepare");
        let calib = format!("{name}.calib");
        let batches: Vec<ArrayD<f32>> = (0..3).map(|i| fx.tensor::<f32>(&calib, &i.to_string())).collect();
        calibrate(model.as_ref(), batches, |_, _| {}).expect("calibrate");
        let prefix = format!("{name}:");
        let expected: Vec<&serde_json::Value> =
            fx.cases.iter().filter(|c| qtest::name(c).starts_with(&prefix)).collect();
        let ours = model.named_modules().into_iter().filter(|(_, m)| m.is::<ObserverModule>()).count();
        assert_eq!(ours, expected.len(), "{name}: observers");
        for observation in expected {
            let case = qtest::name(observation);
            let path = &case[prefix.len()..];
            let observer = model.get(path).unwrap_or_else(|e| panic!("{case}: {e}"));
            let observer = observer.downcast_ref::<ObserverModule>().expect("an observer");
            let calls = observation["calls"].as_u64().unwrap() as usize;
            assert_eq!(observer.calls(), calls, "{case}: observations in 3 batches");
            let Some(ObservedRange::PerTensor { min, max }) = observer.stats().range else {
                panic!("{case}: no range")
            };
            let range = ArrayD::from_shape_vec(ndarray::IxDyn(&[2]), vec![min, max]).unwrap();
            let torch = ndarray::concatenate![
                ndarray::Axis(0),
                fx.tensor::<f32>(case, "min"),
                fx.tensor::<f32>(case, "max")
            ];
            qtest::assert_bits_eq(case, "[min_val, max_val]", &range, &torch);
            observers += 1;
            twice += usize::from(calls == 6);
        }
        models += 1;
    }
    assert_eq!((models, observers, twice), (5, 11, 4));
}
