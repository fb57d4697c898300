//! Empty batches (N = 0) run through every float and quantized module to an empty output of
//! the right shape, as in PyTorch.

mod common;

use common::crafted;
use ndarray::{ArrayD, IxDyn};
use qgraph::models::{Architecture, Model};
use qgraph::nn::{
    Dropout, ELU, Flatten, Hardswish, Hardtanh, LeakyReLU, MaxPool1d, ReLU, ReLU6, Sigmoid, Softmax, Tanh,
    Upsample, UpsampleMode,
};
use qgraph::quantized::activation as qa;
use qgraph::{
    DeQuantize, FloatFunctional, Functional, Module, PerTensor, QFunctional, QuantTensor, Quantize, Value,
};

fn empty(shape: &[usize]) -> ArrayD<f32> {
    assert_eq!(shape[0], 0);
    ArrayD::zeros(IxDyn(shape))
}

fn quantized(shape: &[usize]) -> Value {
    Value::Quant(QuantTensor::quantize(&empty(shape), PerTensor::new(0.1, 10)).unwrap())
}

/// `module` on `input`: an output of `expected` shape, of the same kind (float or quantized).
fn assert_empty_output(name: &str, module: &dyn Module, input: Value, expected: &[usize]) {
    let quant = input.is_quant();
    let y = module.forward(input).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(y.shape().unwrap(), expected, "{name}");
    assert_eq!(y.is_quant(), quant, "{name}");
}

#[test]
fn the_zoo_runs_on_empty_batches() {
    assert_empty_output("float zoo", &crafted::float_zoo(), empty(&[0, 3, 8, 8]).into(), &[0, 5]);
    assert_empty_output("1-d zoo", &crafted::zoo_1d(), empty(&[0, 2, 6]).into(), &[0, 2, 2]);
    assert_empty_output("3-d zoo", &crafted::zoo_3d(), empty(&[0, 2, 4, 4, 4]).into(), &[0, 2, 2, 2, 2]);
    assert_empty_output("graph", crafted::graph_zoo().as_ref(), empty(&[0, 2, 4, 4]).into(), &[0, 4]);
    // Quantize, conv, batch norm, pooling, upsampling, flatten, linear, dequantize in int8.
    assert_empty_output("int8 zoo", crafted::int8_zoo().as_ref(), empty(&[0, 3, 8, 8]).into(), &[0, 5]);
    let resnet = common::small_resnet_int8();
    assert_empty_output("int8 resnet", resnet.as_ref(), empty(&[0, 3, 16, 16]).into(), &[0, 10]);
}

#[test]
fn every_activation_and_functional_runs_on_empty_batches() {
    let q = PerTensor::new(0.05, 128);
    let shape = [0, 4, 3, 3];
    let float: Vec<(&str, Box<dyn Module>)> = vec![
        ("ReLU", Box::new(ReLU::new())),
        ("ReLU6", Box::new(ReLU6::new())),
        ("Hardtanh", Box::new(Hardtanh::new(-1.0, 1.0))),
        ("Hardswish", Box::new(Hardswish::new())),
        ("Sigmoid", Box::new(Sigmoid::new())),
        ("Tanh", Box::new(Tanh::new())),
        ("LeakyReLU", Box::new(LeakyReLU::new(0.1))),
        ("ELU", Box::new(ELU::new(1.0))),
        ("Dropout", Box::new(Dropout::new(0.5).unwrap())),
        ("Softmax", Box::new(Softmax::new(1))),
        ("Flatten", Box::new(Flatten::new(1, -1))),
        ("Upsample nearest", Box::new(Upsample::scale_factor(2.0))),
        ("Upsample bilinear", Box::new(Upsample::size(5).mode(UpsampleMode::Bilinear))),
    ];
    for (name, module) in &float {
        let expected: &[usize] = match *name {
            "Flatten" => &[0, 36],
            "Upsample nearest" => &[0, 4, 6, 6],
            "Upsample bilinear" => &[0, 4, 5, 5],
            _ => &shape,
        };
        assert_empty_output(name, module.as_ref(), empty(&shape).into(), expected);
        // PyTorch runs these un-swapped modules on quantized tensors too.
        if ["ReLU", "ReLU6", "Hardtanh", "Sigmoid", "Tanh", "Dropout", "Flatten"].contains(name)
            || name.starts_with("Upsample")
        {
            assert_empty_output(name, module.as_ref(), quantized(&shape), expected);
        }
    }
    let quant: Vec<(&str, Box<dyn Module>)> = vec![
        ("QuantizedReLU6", Box::new(qa::ReLU6::new())),
        ("QuantizedHardswish", Box::new(qa::Hardswish::new(q).unwrap())),
        ("QuantizedELU", Box::new(qa::ELU::new(q, 1.0).unwrap())),
        ("QuantizedLeakyReLU", Box::new(qa::LeakyReLU::new(q, 0.1).unwrap())),
        ("MaxPool1d", Box::new(MaxPool1d::new(2))),
    ];
    for (name, module) in &quant {
        let (input, expected): (&[usize], &[usize]) =
            if *name == "MaxPool1d" { (&[0, 4, 6], &[0, 4, 3]) } else { (&shape, &shape) };
        assert_empty_output(name, module.as_ref(), quantized(input), expected);
    }
    let y = Quantize::new(q).unwrap().forward(empty(&shape).into()).unwrap();
    assert!(y.is_quant() && y.shape().unwrap() == shape, "Quantize");
    let y = DeQuantize::new().forward(quantized(&shape)).unwrap();
    assert!(!y.is_quant() && y.shape().unwrap() == shape, "DeQuantize");
    let ops = [
        (Functional::Add, 2),
        (Functional::AddRelu, 2),
        (Functional::Mul, 2),
        (Functional::AddScalar(1.0), 1),
        (Functional::MulScalar(2.0), 1),
        (Functional::Cat(1), 2),
    ];
    for (op, arity) in ops {
        let expected: &[usize] = if op == Functional::Cat(1) { &[0, 8, 3, 3] } else { &shape };
        let name = op.name();
        let inputs = vec![Value::from(empty(&shape)); arity];
        let y =
            FloatFunctional::new().forward_functional(op, inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(y.shape().unwrap(), expected, "float {name}");
        let inputs = vec![quantized(&shape); arity];
        let y = QFunctional::new(q)
            .unwrap()
            .forward_functional(op, inputs)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(y.shape().unwrap(), expected, "quantized {name}");
    }
}

#[test]
fn zoo_models_run_on_empty_batches() {
    for arch in [Architecture::ResNet18, Architecture::MobileNetV2] {
        let mut model = Model::new(arch, 10).unwrap();
        let y = model.forward(empty(&[0, 3, 32, 32])).unwrap();
        assert_eq!(y.shape(), &[0, 10], "{arch:?}");
        model.fuse().unwrap();
        let qconfig = qgraph::qconfig::get_default_qconfig("x86").unwrap();
        qgraph::prepare(model.module_mut(), &qgraph::QConfigMapping::global(qconfig)).unwrap();
        let batch = common::random(&[1, 3, 32, 32], 7);
        qgraph::calibrate(model.module(), [batch], |_, _| {}).unwrap();
        qgraph::convert(model.module_mut()).unwrap();
        let y = model.forward(empty(&[0, 3, 32, 32])).unwrap();
        assert_eq!(y.shape(), &[0, 10], "int8 {arch:?}");
    }
}
