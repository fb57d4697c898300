//! Models shared by the integration tests: the seed's CNN and a small ResNet-style model (the
//! models of `tools/golden/gen_workflow.py`), and calibration-like data.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use qgraph::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Softmax};
use qgraph::{DeQuantStub, FloatFunctional, Functional, Graph, GraphResult, Module, QuantStub, Sequential};

/// The seed's model: QuantStub, two Conv+BN+ReLU, DeQuantStub, Flatten, Linear, Softmax (28x28 input).
pub fn seed_model() -> GraphResult<Box<dyn Module>> {
    Ok(Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build()?),
        Box::new(BatchNorm2d::new(16)),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(16, 24, [3, 3]).padding([1, 1]).build()?),
        Box::new(BatchNorm2d::new(24)),
        Box::new(ReLU::new()),
        Box::new(DeQuantStub::new()),
        Box::new(Flatten::new(1, -1)),
        Box::new(Linear::new(24 * 28 * 28, 10, true)),
        Box::new(Softmax::new(1)),
    ])))
}

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
