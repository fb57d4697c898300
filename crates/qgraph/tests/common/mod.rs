//! What the integration tests share: the seed's CNN and a small ResNet-style model (the models
//! of `tools/golden/gen_workflow.py`) with its fusion groups, calibration-like data, fixtures, and
//! comparisons of int8 outputs and printouts with PyTorch's.
#![allow(dead_code)]

pub mod crafted;

use ndarray::{ArrayD, IxDyn};
use qgraph::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU};
use qgraph::{DeQuantStub, FloatFunctional, Functional, Graph, GraphResult, Module, QuantStub, Sequential};
use qtest::Fixture;

#[path = "../../examples/seed/model.rs"]
mod seed;
/// The seed's model: QuantStub, two Conv+BN+ReLU, DeQuantStub, Flatten, Linear, Softmax (28x28 input).
#[allow(unused_imports)] // not every test uses it
pub use seed::seed_model;

/// A ResNet basic block with a `skip_add_relu` and, when the shape changes, a downsample branch.
pub fn block(cin: usize, cout: usize, stride: usize) -> GraphResult<Graph> {
    let conv3 = |i, o, s| Conv2d::new(i, o, [3, 3]).stride([s, s]).padding([1, 1]).bias(false).build();
    let mut b = Graph::builder("Block");
    let x = Graph::INPUT;
    let y = b.then("conv1", conv3(cin, cout, stride)?, x);
    let y = b.then("bn1", BatchNorm2d::new(cout), &y);
    let y = b.then("relu", ReLU::new(), &y);
    let y = b.then("conv2", conv3(cout, cout, 1)?, &y);
    let y = b.then("bn2", BatchNorm2d::new(cout), &y);
    let identity = if stride != 1 || cin != cout {
        let conv = Conv2d::new(cin, cout, [1, 1]).stride([stride, stride]).bias(false).build()?;
        b.then("downsample", Sequential::new(vec![Box::new(conv), Box::new(BatchNorm2d::new(cout))]), x)
    } else {
        x.to_string()
    };
    let out =
        b.then_functional("skip_add_relu", FloatFunctional::new(), Functional::AddRelu, &[&y, &identity]);
    b.build(&out)
}

/// Conv+BN+ReLU, max pool, two blocks (the second with a downsample), pool, flatten, fc.
pub fn resnet_model() -> GraphResult<Box<dyn Module>> {
    let mut b = Graph::builder("Net");
    let x = b.then("quant", QuantStub::new(), Graph::INPUT);
    let x = b.then("conv1", Conv2d::new(3, 8, [3, 3]).padding([1, 1]).bias(false).build()?, &x);
    let x = b.then("bn1", BatchNorm2d::new(8), &x);
    let x = b.then("relu", ReLU::new(), &x);
    let x = b.then("maxpool", MaxPool2d::new(2), &x);
    let x = b.then("layer1", Sequential::new(vec![Box::new(block(8, 8, 1)?)]), &x);
    let x = b.then("layer2", Sequential::new(vec![Box::new(block(8, 16, 2)?)]), &x);
    let x = b.then("avgpool", AdaptiveAvgPool2d::new([1, 1]), &x);
    let x = b.then("flatten", Flatten::new(1, -1), &x);
    let x = b.then("fc", Linear::new(16, 10, true), &x);
    let x = b.then("dequant", DeQuantStub::new(), &x);
    Ok(Box::new(b.build(&x)?))
}

/// `[n, c, h, w]` pseudo-random values in [-1, 1).
pub fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), qtest::random_f32s(shape.iter().product(), seed)).expect("length")
}

/// The fusion groups of [`resnet_model`] (PyTorch's `fuse_modules` lists).
pub const RESNET_FUSE: &[&[&str]] = &[
    &["conv1", "bn1", "relu"],
    &["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu"],
    &["layer1.0.conv2", "layer1.0.bn2"],
    &["layer2.0.conv1", "layer2.0.bn1", "layer2.0.relu"],
    &["layer2.0.conv2", "layer2.0.bn2"],
    &["layer2.0.downsample.0", "layer2.0.downsample.1"],
];

/// The fixture `name` of `tests/fixtures`.
pub fn fixture(name: &str) -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name)
}

/// The parameters of the fixture's case `case`.
pub fn params<'a>(fx: &'a Fixture, case: &str) -> &'a serde_json::Value {
    fx.cases.iter().find(|c| qtest::name(c) == case).unwrap_or_else(|| panic!("case {case}"))
}

/// Two integer tensors compared: (elements equal, largest difference).
pub fn differences(got: &ArrayD<u8>, expected: &ArrayD<u8>) -> (usize, i32) {
    assert_eq!(got.shape(), expected.shape());
    let equal = got.iter().zip(expected).filter(|(a, b)| a == b).count();
    let worst =
        got.iter().zip(expected).map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs()).max().unwrap_or(0);
    (equal, worst)
}

/// Agreement of two integer tensors: (fraction equal, largest difference).
pub fn agreement(got: &ArrayD<u8>, expected: &ArrayD<u8>) -> (f64, i32) {
    let (equal, worst) = differences(got, expected);
    (equal as f64 / got.len().max(1) as f64, worst)
}

/// Replaces the digits of every `scale=` value, so printouts compare by structure and zero points.
pub fn mask_scales(text: &str) -> String {
    mask_values(text, "scale=")
}

/// Replaces every value that follows `key` (up to the next `,`, `)` or line end) by `#`.
pub fn mask_values(text: &str, key: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let end = rest.find([',', ')', '\n']).unwrap_or(rest.len());
        out.push('#');
        rest = &rest[end..];
    }
    out + rest
}

/// [`resnet_model`] with seeded weights, in eval mode.
pub fn small_resnet() -> Box<dyn Module> {
    qgraph::nn::manual_seed(3);
    let mut model = resnet_model().expect("model");
    qgraph::eval(&mut model);
    model
}

/// [`small_resnet`] fused, calibrated on three random batches with the x86 default qconfig, and
/// converted.
pub fn small_resnet_int8() -> Box<dyn Module> {
    let mut model = small_resnet();
    qgraph::fuse::fuse_modules(&mut model, RESNET_FUSE).expect("fuse");
    let qconfig = qgraph::qconfig::get_default_qconfig("x86").expect("qconfig");
    qgraph::prepare(&mut model, &qgraph::QConfigMapping::global(qconfig)).expect("prepare");
    let batches = (0..3).map(|i| random(&[2, 3, 16, 16], 10 + i));
    qgraph::calibrate(model.as_ref(), batches, |_, _| {}).expect("calibrate");
    qgraph::convert(&mut model).expect("convert");
    model
}
