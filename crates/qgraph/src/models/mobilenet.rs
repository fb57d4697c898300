//! torchvision's `QuantizableMobileNetV2` (width 1.0): `features` (a `Conv2dNormActivation`,
//! seventeen `QuantizableInvertedResidual`s and a final `Conv2dNormActivation`), global average
//! pooling and flatten as functions, and `classifier` (`Dropout(0.2)`, `Linear`). As
//! `_replace_relu` leaves it, every `ReLU6` is a `ReLU`.

use crate::nn::{BatchNorm2d, Conv2d, Dropout, Linear, ReLU};
use crate::{
    DeQuantStub, FloatFunctional, Functional, Graph, GraphResult, Module, Op, QuantStub, Sequential,
};

/// torchvision's `inverted_residual_setting`: expansion t, channels c, repeats n, stride s.
const SETTING: [[usize; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];

/// `Conv2dNormActivation(cin, cout, kernel_size=k, stride, groups, norm_layer=BatchNorm2d,
/// activation_layer=ReLU)`: a `Sequential` subclass, so a chain printed under its own name.
fn conv_norm_act(cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> GraphResult<Graph> {
    let conv = Conv2d::new(cin, cout, [k, k])
        .stride([stride, stride])
        .padding([(k - 1) / 2, (k - 1) / 2])
        .groups(groups)
        .bias(false)
        .build()?;
    let mut b = Graph::builder("Conv2dNormActivation");
    let x = b.then("0", conv, Graph::INPUT);
    let x = b.then("1", BatchNorm2d::new(cout), &x);
    let x = b.then("2", ReLU::new(), &x);
    b.build(&x)
}

/// `QuantizableInvertedResidual(inp, oup, stride, expand_ratio)`: `conv` (a `Sequential`) and
/// `skip_add`, used only when the block keeps its shape (`use_res_connect`).
fn inverted_residual(inp: usize, oup: usize, stride: usize, expand_ratio: usize) -> GraphResult<Graph> {
    let hidden = inp * expand_ratio;
    let mut conv = Sequential::default();
    if expand_ratio != 1 {
        conv.push(Box::new(conv_norm_act(inp, hidden, 1, 1, 1)?));
    }
    conv.push(Box::new(conv_norm_act(hidden, hidden, 3, stride, hidden)?));
    conv.push(Box::new(Conv2d::new(hidden, oup, [1, 1]).bias(false).build()?));
    conv.push(Box::new(BatchNorm2d::new(oup)));
    let mut b = Graph::builder("QuantizableInvertedResidual");
    let y = b.then("conv", conv, Graph::INPUT);
    let out = if stride == 1 && inp == oup {
        b.then_functional("skip_add", FloatFunctional::new(), Functional::Add, &[Graph::INPUT, &y])
    } else {
        // Declared (and observed after `prepare`) but never called, as in torchvision.
        b.add("skip_add", FloatFunctional::new());
        y
    };
    b.build(&out)
}

/// `QuantizableMobileNetV2(num_classes)`.
pub(crate) fn mobilenet_v2(num_classes: usize) -> GraphResult<Box<dyn Module>> {
    let mut features = Sequential::default();
    features.push(Box::new(conv_norm_act(3, 32, 3, 2, 1)?));
    let mut input_channel = 32;
    for [t, c, n, s] in SETTING {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            features.push(Box::new(inverted_residual(input_channel, c, stride, t)?));
            input_channel = c;
        }
    }
    features.push(Box::new(conv_norm_act(input_channel, 1280, 1, 1, 1)?));
    let classifier =
        Sequential::new(vec![Box::new(Dropout::new(0.2)?), Box::new(Linear::new(1280, num_classes, true))]);
    let mut b = Graph::builder("QuantizableMobileNetV2");
    b.add("features", features)
        .add("classifier", classifier)
        .add("quant", QuantStub::new())
        .add("dequant", DeQuantStub::new());
    let x = b.call("quant", Graph::INPUT);
    let x = b.call("features", &x);
    let x = b.op("avgpool", Op::AdaptiveAvgPool2d([1, 1]), &x);
    let x = b.op("flatten", Op::Flatten(1), &x);
    let x = b.call("classifier", &x);
    let x = b.call("dequant", &x);
    Ok(Box::new(b.build(&x)?))
}

/// The groups torchvision's `QuantizableMobileNetV2.fuse_model()` passes to `fuse_modules`, in
/// `modules()` order: `0, 1, 2` of every `Conv2dNormActivation`, and for every inverted residual
/// (before its own submodules) each `conv.<i>, conv.<i + 1>` whose `conv.<i>` is a `Conv2d`.
pub(crate) fn fuse_groups(model: &dyn Module) -> Vec<Vec<String>> {
    let mut groups = Vec::new();
    for (path, m) in model.named_modules() {
        match m.type_name() {
            "Conv2dNormActivation" => {
                groups.push(vec![format!("{path}.0"), format!("{path}.1"), format!("{path}.2")])
            }
            "QuantizableInvertedResidual" => {
                let Some((_, conv)) = m.children().into_iter().find(|(n, _)| *n == "conv") else { continue };
                for (i, (_, child)) in conv.children().into_iter().enumerate() {
                    if child.type_name() == "Conv2d" {
                        groups.push(vec![format!("{path}.conv.{i}"), format!("{path}.conv.{}", i + 1)]);
                    }
                }
            }
            _ => {}
        }
    }
    groups
}
