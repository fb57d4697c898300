//! torchvision's `QuantizableResNet` with `QuantizableBasicBlock` (ResNet-18) and
//! `QuantizableBottleneck` (ResNet-50): children, names, forward and `fuse_model` as in
//! `torchvision/models/quantization/resnet.py` (torchvision 0.29), every ReLU a separate
//! `nn.ReLU` as `_replace_relu` leaves them.

use crate::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv, Conv2d, Linear, MaxPool2d, ReLU};
use crate::{
    DeQuantStub, FloatFunctional, Functional, Graph, GraphResult, Module, Op, QuantStub, Sequential,
};

/// The two block kinds of torchvision's ResNets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// `QuantizableBasicBlock`: two 3x3 convolutions, expansion 1.
    Basic,
    /// `QuantizableBottleneck`: 1x1, 3x3, 1x1 convolutions, expansion 4.
    Bottleneck,
}

impl Block {
    fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }

    /// The printed type name of the block's graph.
    pub(crate) fn type_name(self) -> &'static str {
        match self {
            Block::Basic => "QuantizableBasicBlock",
            Block::Bottleneck => "QuantizableBottleneck",
        }
    }
}

/// `nn.Conv2d(cin, cout, k, stride, padding=k / 2, bias=False)` (torchvision's `conv3x3` /
/// `conv1x1`).
fn conv(cin: usize, cout: usize, k: usize, stride: usize) -> GraphResult<Conv> {
    Conv2d::new(cin, cout, [k, k]).stride([stride, stride]).padding([k / 2, k / 2]).bias(false).build()
}

/// torchvision's `downsample`: `Sequential(conv1x1(cin, cout, stride), BatchNorm2d(cout))`.
fn downsample(cin: usize, cout: usize, stride: usize) -> GraphResult<Sequential> {
    Ok(Sequential::new(vec![Box::new(conv(cin, cout, 1, stride)?), Box::new(BatchNorm2d::new(cout))]))
}

/// One `QuantizableBasicBlock(inplanes, planes, stride, downsample)`.
fn basic_block(inplanes: usize, planes: usize, stride: usize, down: bool) -> GraphResult<Graph> {
    let mut b = Graph::builder(Block::Basic.type_name());
    b.add("conv1", conv(inplanes, planes, 3, stride)?)
        .add("bn1", BatchNorm2d::new(planes))
        .add("relu", ReLU::new())
        .add("conv2", conv(planes, planes, 3, 1)?)
        .add("bn2", BatchNorm2d::new(planes));
    if down {
        b.add("downsample", downsample(inplanes, planes, stride)?);
    }
    let x = Graph::INPUT;
    let mut out = b.call("conv1", x);
    for name in ["bn1", "relu", "conv2", "bn2"] {
        out = b.call(name, &out);
    }
    let identity = if down { b.call("downsample", x) } else { x.to_string() };
    let out = b.then_functional("add_relu", FloatFunctional::new(), Functional::AddRelu, &[&out, &identity]);
    b.build(&out)
}

/// One `QuantizableBottleneck(inplanes, planes, stride, downsample)` (the stride on the 3x3
/// convolution, as torchvision's "ResNet V1.5").
fn bottleneck(inplanes: usize, planes: usize, stride: usize, down: bool) -> GraphResult<Graph> {
    let width = planes;
    let outplanes = planes * Block::Bottleneck.expansion();
    let mut b = Graph::builder(Block::Bottleneck.type_name());
    b.add("conv1", conv(inplanes, width, 1, 1)?)
        .add("bn1", BatchNorm2d::new(width))
        .add("conv2", conv(width, width, 3, stride)?)
        .add("bn2", BatchNorm2d::new(width))
        .add("conv3", conv(width, outplanes, 1, 1)?)
        .add("bn3", BatchNorm2d::new(outplanes))
        // `Bottleneck.relu`, unused by the quantizable forward but kept, as torchvision keeps it.
        .add("relu", ReLU::new());
    if down {
        b.add("downsample", downsample(inplanes, outplanes, stride)?);
    }
    // Declared before `relu1` / `relu2` (torchvision's order), called last.
    b.add("skip_add_relu", FloatFunctional::new()).add("relu1", ReLU::new()).add("relu2", ReLU::new());
    let x = Graph::INPUT;
    let mut out = b.call("conv1", x);
    for name in ["bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"] {
        out = b.call(name, &out);
    }
    let identity = if down { b.call("downsample", x) } else { x.to_string() };
    let out = b.call_functional("skip_add_relu", Functional::AddRelu, &[&out, &identity]);
    b.build(&out)
}

/// torchvision's `ResNet._make_layer`: `blocks` blocks, the first with the stride and (when the
/// shape changes) a downsample.
fn make_layer(
    block: Block,
    inplanes: &mut usize,
    planes: usize,
    blocks: usize,
    stride: usize,
) -> GraphResult<Sequential> {
    let mut layer = Sequential::default();
    for i in 0..blocks {
        let stride = if i == 0 { stride } else { 1 };
        let down = i == 0 && (stride != 1 || *inplanes != planes * block.expansion());
        let graph = match block {
            Block::Basic => basic_block(*inplanes, planes, stride, down)?,
            Block::Bottleneck => bottleneck(*inplanes, planes, stride, down)?,
        };
        layer.push(Box::new(graph));
        *inplanes = planes * block.expansion();
    }
    Ok(layer)
}

/// `QuantizableResNet(block, layers, num_classes)`.
pub(crate) fn resnet(block: Block, layers: [usize; 4], num_classes: usize) -> GraphResult<Box<dyn Module>> {
    let mut inplanes = 64;
    let mut b = Graph::builder("QuantizableResNet");
    b.add("conv1", Conv2d::new(3, 64, [7, 7]).stride([2, 2]).padding([3, 3]).bias(false).build()?)
        .add("bn1", BatchNorm2d::new(64))
        .add("relu", ReLU::new())
        .add("maxpool", MaxPool2d::new(3).stride(2).padding(1));
    for (i, (planes, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)].into_iter().enumerate() {
        let layer = make_layer(block, &mut inplanes, planes, layers[i], stride)?;
        b.add(&format!("layer{}", i + 1), layer);
    }
    b.add("avgpool", AdaptiveAvgPool2d::new([1, 1]))
        .add("fc", Linear::new(512 * block.expansion(), num_classes, true))
        .add("quant", QuantStub::new())
        .add("dequant", DeQuantStub::new());
    let mut x = b.call("quant", Graph::INPUT);
    for name in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"] {
        x = b.call(name, &x);
    }
    let x = b.op("flatten", Op::Flatten(1), &x);
    let x = b.call("fc", &x);
    let x = b.call("dequant", &x);
    Ok(Box::new(b.build(&x)?))
}

/// The groups torchvision's `QuantizableResNet.fuse_model()` passes to `fuse_modules`, in order:
/// `conv1, bn1, relu`, then for every block (in `modules()` order) its conv + bn (+ relu) groups
/// and its downsample's `0, 1`.
pub(crate) fn fuse_groups(model: &dyn Module) -> Vec<Vec<String>> {
    let mut groups = vec![vec!["conv1".to_string(), "bn1".into(), "relu".into()]];
    for (path, m) in model.named_modules() {
        let local: &[&[&str]] = match m.type_name() {
            "QuantizableBasicBlock" => &[&["conv1", "bn1", "relu"], &["conv2", "bn2"]],
            "QuantizableBottleneck" => {
                &[&["conv1", "bn1", "relu1"], &["conv2", "bn2", "relu2"], &["conv3", "bn3"]]
            }
            _ => continue,
        };
        groups.extend(local.iter().map(|g| g.iter().map(|n| format!("{path}.{n}")).collect()));
        if m.children().iter().any(|(n, _)| *n == "downsample") {
            groups.push(vec![format!("{path}.downsample.0"), format!("{path}.downsample.1")]);
        }
    }
    groups
}
