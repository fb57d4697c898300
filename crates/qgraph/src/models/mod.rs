//! A model zoo: torchvision's *quantizable* ResNet-18, ResNet-50 and MobileNetV2 as float module
//! trees (and a [`crnn`] text recognizer: static int8 CNN, dynamic int8 LSTM), ready for [`fuse_model`], [`prepare`](crate::prepare), [`calibrate`](crate::calibrate)
//! and [`convert`](crate::convert).
//!
//! Each model has torchvision's children, in its printing order, under its names, so that its
//! `state_dict` keys are torchvision's (without `num_batches_tracked`) and its printout is
//! `str(model)`: `QuantStub` `quant` and `DeQuantStub` `dequant` last, the `FloatFunctional`s
//! `add_relu` (basic block), `skip_add_relu` (bottleneck) and `skip_add` (inverted residual),
//! every ReLU a separate `nn.ReLU` (torchvision's `_replace_relu` also turns MobileNetV2's ReLU6
//! into ReLU). As in PyTorch, a new model is in training mode: call [`eval`] (or use
//! [`Model`], which does) before running it.
//!
//! Weights come from a safetensors `state_dict` ([`load_weights`], e.g. written by
//! `tools/export_torchvision.py`) or from [`deterministic_state_dict`], the generator the
//! agreement fixtures use.
//!
//! # Input checking and NaN
//!
//! The module trees behave as PyTorch's: a wrong input shape fails inside the first convolution,
//! a NaN propagates through the float model and is quantized by `QuantStub` following PyTorch's
//! rule (see `docs/NUMERICS.md`). [`Model::forward`] checks first: the input must be
//! `[N, 3, H, W]` ([`check_input`]) and finite ([`check_finite`]); anything else is an error
//! naming the expected shape or the first non-finite element.
//!
//! ```
//! use qgraph::models::{self, Architecture};
//! let model = models::resnet18(10)?;
//! assert_eq!(model.type_name(), "QuantizableResNet");
//! assert_eq!(Architecture::of(model.as_ref()), Some(Architecture::ResNet18));
//! assert_eq!(model.state_dict()[0].0, "conv1.weight");
//! assert!(models::check_input(Architecture::ResNet18, &[1, 1, 224, 224]).is_err());
//! # Ok::<(), qgraph::GraphError>(())
//! ```

mod arch;
mod crnn;
mod mobilenet;
mod resnet;
mod weights;

use std::path::Path;

use ndarray::ArrayD;

pub use arch::Architecture;
pub use crnn::{CRNN_INPUT, crnn_line, quantize_crnn};
pub use weights::{deterministic_state_dict, load_weights, load_weights_from_bytes, random_f32s};

use crate::fuse::fuse_modules;
use crate::{GraphError, GraphResult, Module, Value, eval};

/// `torchvision.models.quantization.resnet18(weights=None, quantize=False, num_classes=...)`:
/// the float `QuantizableResNet` with basic blocks `[2, 2, 2, 2]`, in training mode.
///
/// ```
/// let model = qgraph::models::resnet18(1000)?;
/// assert_eq!(model.get("layer2.0.downsample.0")?.type_name(), "Conv2d");
/// assert_eq!(model.get("layer1.0.add_relu")?.type_name(), "FloatFunctional");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn resnet18(num_classes: usize) -> GraphResult<Box<dyn Module>> {
    Architecture::ResNet18.build(num_classes)
}

/// `torchvision.models.quantization.resnet50(weights=None, quantize=False, num_classes=...)`:
/// the float `QuantizableResNet` with bottlenecks `[3, 4, 6, 3]`, in training mode.
///
/// ```
/// let model = qgraph::models::resnet50(1000)?;
/// assert_eq!(model.get("layer1.0.skip_add_relu")?.type_name(), "FloatFunctional");
/// assert_eq!(model.get("fc")?.to_string(), "Linear(in_features=2048, out_features=1000, bias=True)");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn resnet50(num_classes: usize) -> GraphResult<Box<dyn Module>> {
    Architecture::ResNet50.build(num_classes)
}

/// `torchvision.models.quantization.mobilenet_v2(weights=None, quantize=False, num_classes=...)`:
/// the float `QuantizableMobileNetV2` (width 1.0, ReLU for ReLU6), in training mode.
///
/// ```
/// let model = qgraph::models::mobilenet_v2(1000)?;
/// assert_eq!(model.get("features.1")?.type_name(), "QuantizableInvertedResidual");
/// assert_eq!(model.get("features.0")?.type_name(), "Conv2dNormActivation");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn mobilenet_v2(num_classes: usize) -> GraphResult<Box<dyn Module>> {
    Architecture::MobileNetV2.build(num_classes)
}

/// The model of `tools/golden/gen_crnn.py`, `CRNN`, in training mode: `quant`, `cnn` (blocks
/// `0` .. `4`, each `Sequential(Conv2d(3x3, padding 1), BatchNorm2d, ReLU)`, with `pool0`,
/// `pool1`, `pool3`, `pool4` max pooling), `dequant`, `rnn` (`LSTM(256, 256, num_layers=2,
/// bidirectional=True)`) and `fc` (`Linear(512, num_classes)`). Its input is a batch of
/// grayscale text lines `[N, 1, 32, 128]` ([`CRNN_INPUT`]); the CNN's `[N, 256, 1, 32]` features
/// become a sequence `[32, N, 256]` (`squeeze(2).permute(2, 0, 1)`, graph ops that print
/// nothing), and the output is `[32, N, num_classes]`, the LSTM's `out` through `fc`.
///
/// Quantize it as PyTorch users do: [`fuse_model`], a static qconfig on `quant`, `cnn` and
/// `dequant` only, prepare, calibrate, convert; then
/// [`quantize_dynamic`](crate::workflow::quantize_dynamic) for the LSTM and `fc`.
///
/// ```
/// let model = qgraph::models::crnn(100)?;
/// assert_eq!(model.get("cnn.pool3")?.to_string(),
///     "MaxPool2d(kernel_size=(2, 1), stride=(2, 1), padding=0, dilation=1, ceil_mode=False)");
/// assert_eq!(model.get("rnn")?.to_string(), "LSTM(256, 256, num_layers=2, bidirectional=True)");
/// assert_eq!(model.state_dict()[0].0, "cnn.0.0.weight");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn crnn(num_classes: usize) -> GraphResult<Box<dyn Module>> {
    crnn::crnn(num_classes)
}

/// The groups torchvision's `fuse_model()` passes to `fuse_modules` for `model`, in its order, as
/// dotted paths from the top (for the [`crnn`], its five conv-bn-relu blocks); an error unless
/// `model` is a zoo model.
pub fn fuse_groups(model: &dyn Module) -> GraphResult<Vec<Vec<String>>> {
    if model.type_name() == crnn::TYPE_NAME {
        return Ok(crnn::fuse_groups());
    }
    match Architecture::of(model) {
        Some(Architecture::MobileNetV2) => Ok(mobilenet::fuse_groups(model)),
        Some(_) => Ok(resnet::fuse_groups(model)),
        None => Err(GraphError::Workflow {
            step: "fuse_model",
            reason: format!(
                "a {} is not a zoo model (QuantizableResNet, QuantizableMobileNetV2 or CRNN); call fuse_modules with its groups",
                model.type_name()
            ),
        }),
    }
}

/// torchvision's `model.fuse_model()` for post-training quantization: fuses every conv + batch
/// norm (+ ReLU) group of [`fuse_groups`] in place and returns the groups. The model must be in
/// evaluation mode (as `fuse_modules` requires).
///
/// ```
/// use qgraph::models;
/// let mut model = models::resnet18(10)?;
/// qgraph::eval(&mut model);
/// let groups = models::fuse_model(&mut model)?;
/// assert_eq!(groups[0], ["conv1", "bn1", "relu"]);
/// assert_eq!(model.get("conv1")?.type_name(), "ConvReLU2d");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn fuse_model(model: &mut Box<dyn Module>) -> GraphResult<Vec<Vec<String>>> {
    let groups = fuse_groups(model.as_ref())?;
    let refs: Vec<Vec<&str>> = groups.iter().map(|g| g.iter().map(String::as_str).collect()).collect();
    let slices: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    fuse_modules(model, &slices)?;
    Ok(groups)
}

/// Checks that `shape` is an input of `arch`: `[N, 3, H, W]` with H and W at least 1 (an empty
/// batch, N = 0, gives an empty output, as in PyTorch).
///
/// ```
/// use qgraph::models::{Architecture, check_input};
/// check_input(Architecture::MobileNetV2, &[2, 3, 224, 224])?;
/// let err = check_input(Architecture::MobileNetV2, &[3, 224, 224]).unwrap_err();
/// assert!(err.to_string().contains("[N, 3, H, W]"));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn check_input(arch: Architecture, shape: &[usize]) -> GraphResult<()> {
    let c = arch.input_channels();
    let ok = shape.len() == 4 && shape[1] == c && shape[2..].iter().all(|&d| d > 0);
    if ok {
        return Ok(());
    }
    let why = if shape.len() != 4 {
        format!("rank {} (a batch of images is rank 4; add the batch dimension N for one image)", shape.len())
    } else if shape[1] != c {
        format!("{} channels", shape[1])
    } else {
        "an empty image".to_string()
    };
    Err(crate::invalid(
        arch.name(),
        "input shape",
        shape,
        format!("{why}; the input must be [N, {c}, H, W] (NCHW, H and W at least 1)"),
    ))
}

/// Checks that every element of `x` is finite: the policy of [`Model::forward`], which refuses
/// NaN and infinities rather than letting `QuantStub` saturate them as PyTorch does.
pub fn check_finite(x: &ArrayD<f32>) -> GraphResult<()> {
    match x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        None => Ok(()),
        Some((index, v)) => {
            let count = x.iter().filter(|v| !v.is_finite()).count();
            Err(crate::invalid(
                "models",
                "input",
                format!("{v} at {:?}", ndarray::Dimension::slice(&index)),
                format!(
                    "{count} non-finite element(s); inputs must be finite (a quantized model would map NaN to \
                     the top of the quantized range, PyTorch's rule, and the float model would return NaN)"
                ),
            ))
        }
    }
}

/// A zoo model with what it is: its [`Architecture`] and number of classes, and its module tree
/// (float, or fused / prepared / converted in place through [`module_mut`](Model::module_mut)).
/// Built in evaluation mode; [`forward`](Model::forward) checks its input.
///
/// ```
/// use qgraph::models::{Architecture, Model};
/// let model = Model::new(Architecture::ResNet18, 10)?;
/// let err = model.forward(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 4, 8, 8]))).unwrap_err();
/// assert!(err.to_string().contains("[N, 3, H, W]"));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Model {
    arch: Architecture,
    num_classes: usize,
    module: Box<dyn Module>,
}

impl Model {
    /// The float model, in evaluation mode, with PyTorch's default batch norms (weight 1, bias 0,
    /// mean 0, variance 1) and this crate's seeded default initialisation elsewhere.
    pub fn new(arch: Architecture, num_classes: usize) -> GraphResult<Self> {
        let mut module = arch.build(num_classes)?;
        eval(&mut module);
        Ok(Self { arch, num_classes, module })
    }

    /// The architecture.
    pub fn arch(&self) -> Architecture {
        self.arch
    }

    /// The number of classes (outputs).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The module tree.
    pub fn module(&self) -> &dyn Module {
        self.module.as_ref()
    }

    /// The module tree, to fuse, prepare, calibrate or convert it in place.
    pub fn module_mut(&mut self) -> &mut Box<dyn Module> {
        &mut self.module
    }

    /// The module tree, without the metadata.
    pub fn into_module(self) -> Box<dyn Module> {
        self.module
    }

    /// [`load_weights`] from a safetensors state dict file.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> GraphResult<()> {
        load_weights(&mut self.module, path)
    }

    /// [`fuse_model`].
    pub fn fuse(&mut self) -> GraphResult<Vec<Vec<String>>> {
        fuse_model(&mut self.module)
    }

    /// Runs the model on `[N, 3, H, W]` images after [`check_input`] and [`check_finite`]:
    /// `[N, num_classes]` logits (float, dequantized for a converted model).
    pub fn forward(&self, x: ArrayD<f32>) -> GraphResult<ArrayD<f32>> {
        check_input(self.arch, x.shape())?;
        check_finite(&x)?;
        self.module.forward(Value::from(x))?.into_float_lossy()
    }
}
