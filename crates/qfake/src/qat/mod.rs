//! Quantization-aware training modules (`torch.ao.nn.qat`, `torch.ao.nn.intrinsic.qat`), the QAT
//! qconfigs, and `prepare_qat` / `convert` on qgraph's workflow.
//!
//! A QAT qconfig is a qgraph [`QConfig`] (the observers) plus the fake quantizer classes that wrap
//! them ([`QatQConfig`], PyTorch's `FakeQuantize.with_args(observer=...)`). [`prepare_qat`] swaps
//! float layers (and `fuse_modules_qat`'s fused ones) for their QAT forms, whose weights pass
//! through a `weight_fake_quant`, and gives every module with a qconfig a fake-quantizing
//! `activation_post_process`; [`convert`] turns the trained model into the quantized modules
//! post-training quantization makes, with the parameters the fake quantizers chose.

pub(crate) mod conv;
pub(crate) mod linear;

pub use conv::{QatConv, QatConvKind};
pub use linear::QatLinear;

use qgraph::io::Loaders;
use qgraph::mappings::{Mappings, Swap};
use qgraph::nn::{self, FusedKind};
use qgraph::qconfig::{Backend, QConfig};
use qgraph::quantized::{QuantizedAct, QuantizedConv, QuantizedLinear};
use qgraph::{GraphError, Module, QConfigMapping};
use qobserve::{ObserverSpec, UniformArgs};
use serde::{Deserialize, Serialize};

use crate::fake_quantize::{
    FakeQuantModule, FakeQuantize, FakeQuantizer, FixedQParamsFakeQuantize, FusedMovingAvgObsFakeQuantize,
    LearnableFakeQuantize, QFakeResult,
};

/// The fake quantizer class that wraps an observer in QAT.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum FakeQuantKind {
    /// `FakeQuantize`.
    FakeQuantize,
    /// `FusedMovingAvgObsFakeQuantize` (PyTorch 2.x's default for QAT).
    FusedMovingAvgObs,
    /// `FixedQParamsFakeQuantize` (with a `FixedQParamsObserver`).
    FixedQParams,
    /// `_LearnableFakeQuantize`, starting from `scale` and `zero_point` (one per output channel
    /// for a per-channel observer).
    Learnable {
        /// The initial scale.
        scale: f32,
        /// The initial zero point.
        zero_point: f32,
        /// LSQ+'s gradient scaling.
        use_grad_scaling: bool,
    },
}

impl FakeQuantKind {
    /// The fake quantizer of this class around an observer `spec`; `channels` is the size of the
    /// channel axis for a per-channel learnable quantizer.
    pub fn build(&self, spec: &ObserverSpec, channels: Option<usize>) -> QFakeResult<Box<dyn FakeQuantizer>> {
        Ok(match *self {
            FakeQuantKind::FakeQuantize => Box::new(FakeQuantize::new(spec.clone())?),
            FakeQuantKind::FusedMovingAvgObs => Box::new(FusedMovingAvgObsFakeQuantize::new(spec.clone())?),
            FakeQuantKind::FixedQParams => Box::new(FixedQParamsFakeQuantize::new(spec.clone())?),
            FakeQuantKind::Learnable { scale, zero_point, use_grad_scaling } => {
                let args = spec.args().ok_or_else(|| {
                    crate::fake_quantize::invalid(
                        "LearnableFakeQuantize",
                        "observer",
                        spec.name(),
                        "give a min/max or moving-average observer (its range sets quant_min and quant_max)",
                    )
                })?;
                let (lo, hi) = qcore::calculate_qmin_qmax(
                    args.quant_min,
                    args.quant_max,
                    args.dtype,
                    args.reduce_range,
                )?;
                let per_channel = args.qscheme.is_per_channel();
                let channels = if per_channel { channels } else { None };
                Box::new(LearnableFakeQuantize::new(
                    spec.clone(),
                    lo,
                    hi,
                    scale,
                    zero_point,
                    channels,
                    use_grad_scaling,
                )?)
            }
        })
    }
}

/// The fake quantizer classes of a QAT qconfig, for activations and weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FakeQuantKinds {
    /// Wraps the activation observer (`activation_post_process`).
    pub activation: FakeQuantKind,
    /// Wraps the weight observer (`weight_fake_quant`).
    pub weight: FakeQuantKind,
}

/// A QAT qconfig: the observers and the fake quantizers around them (PyTorch's
/// `QConfig(activation=FakeQuantize.with_args(observer=...), weight=...)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QatQConfig {
    /// The observers (and the qconfig the converted modules record).
    pub qconfig: QConfig,
    /// The fake quantizer classes.
    pub kinds: FakeQuantKinds,
}

impl QatQConfig {
    /// This qconfig with `weight` as the weight observer (e.g. a 4-bit range).
    pub fn with_weight(mut self, weight: ObserverSpec) -> Self {
        self.qconfig.weight = weight;
        self
    }
}

fn moving_average(args: UniformArgs) -> ObserverSpec {
    ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args }
}

fn per_channel_symmetric_weight() -> ObserverSpec {
    let args = UniformArgs::per_channel()
        .dtype(qcore::QDType::QInt8)
        .qscheme(qcore::QScheme::PerChannelSymmetric)
        .quant_range(-128, 127);
    ObserverSpec::MovingAveragePerChannelMinMax { averaging_constant: 0.01, ch_axis: 0, args }
}

fn per_tensor_symmetric_weight() -> ObserverSpec {
    moving_average(
        UniformArgs::per_tensor()
            .dtype(qcore::QDType::QInt8)
            .qscheme(qcore::QScheme::PerTensorSymmetric)
            .quant_range(-128, 127),
    )
}

/// `get_default_qat_qconfig(backend)` (version 1, PyTorch 2.x's default): fused moving-average
/// fake quantizers; activations quint8 0..255 (0..127 with `reduce_range` for x86 and fbgemm),
/// weights qint8 symmetric, per channel except for qnnpack.
///
/// ```
/// let qat = qfake::get_default_qat_qconfig("x86")?;
/// assert_eq!(qat.qconfig.activation.name(), "MovingAverageMinMaxObserver");
/// assert_eq!(qat.qconfig.weight.name(), "MovingAveragePerChannelMinMaxObserver");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn get_default_qat_qconfig(backend: &str) -> QFakeResult<QatQConfig> {
    let activation = |reduce_range| {
        moving_average(UniformArgs::per_tensor().quant_range(0, 255).reduce_range(reduce_range))
    };
    let (activation, weight) = match backend.parse::<Backend>()? {
        Backend::X86 | Backend::Fbgemm => (activation(true), per_channel_symmetric_weight()),
        Backend::Qnnpack => (activation(false), per_tensor_symmetric_weight()),
        Backend::Onednn => (activation(false), per_channel_symmetric_weight()),
    };
    let kind = FakeQuantKind::FusedMovingAvgObs;
    Ok(QatQConfig {
        qconfig: QConfig { activation, weight },
        kinds: FakeQuantKinds { activation: kind, weight: kind },
    })
}

/// `default_qat_qconfig` (version 0): `FakeQuantize` with a moving-average observer, quint8
/// 0..255 activations (with `reduce_range`, as `default_fake_quant`), per-tensor symmetric qint8
/// weights.
pub fn default_qat_qconfig() -> QatQConfig {
    let activation = moving_average(UniformArgs::per_tensor().quant_range(0, 255).reduce_range(true));
    let kind = FakeQuantKind::FakeQuantize;
    QatQConfig {
        qconfig: QConfig { activation, weight: per_tensor_symmetric_weight() },
        kinds: FakeQuantKinds { activation: kind, weight: kind },
    }
}

/// qgraph's default mappings plus QAT: float `Conv{1,2,3}d`, `Linear` and the fused
/// `ConvBn{n}d`, `ConvBnReLU{n}d`, `ConvReLU{n}d`, `LinearReLU` become their QAT forms at
/// `prepare_qat` (PyTorch's `DEFAULT_QAT_MODULE_MAPPINGS`), observed modules get an
/// `activation_post_process` fake quantizer of `kinds.activation`, and the QAT modules become the
/// quantized ones at convert (as in `DEFAULT_STATIC_QUANT_MODULE_MAPPINGS`).
pub fn qat_mappings(kinds: FakeQuantKinds) -> Mappings {
    let mut m = Mappings::default();
    for dims in 1..=3 {
        m.register_swap::<nn::Conv>(Swap::Qat, &format!("Conv{dims}d"), move |conv, qconfig| {
            Ok(Box::new(QatConv::from_conv(conv, qconfig, kinds.weight)?))
        });
        for fused in [FusedKind::ConvReLU(dims), FusedKind::ConvBn(dims), FusedKind::ConvBnReLU(dims)] {
            m.register_swap::<nn::Fused>(Swap::Qat, &fused.type_name(), move |f, qconfig| {
                Ok(Box::new(QatConv::from_fused(f, qconfig, kinds.weight)?))
            });
        }
        for kind in [QatConvKind::Conv, QatConvKind::ConvReLU, QatConvKind::ConvBn, QatConvKind::ConvBnReLU] {
            m.register_static::<QatConv>(&kind.type_name(dims), |qat, _, out_q| {
                let (conv, weight) = qat.quantized_weight()?;
                Ok(Box::new(QuantizedConv::from_parts(
                    conv.options().clone(),
                    qat.kind().quantized_act(),
                    weight,
                    conv.bias().cloned(),
                    out_q,
                )?))
            });
        }
    }
    m.register_swap::<nn::Linear>(Swap::Qat, "Linear", move |linear, qconfig| {
        Ok(Box::new(QatLinear::from_linear(linear, qconfig, kinds.weight)?))
    });
    m.register_swap::<nn::Fused>(Swap::Qat, &FusedKind::LinearReLU.type_name(), move |f, qconfig| {
        Ok(Box::new(QatLinear::from_fused(f, qconfig, kinds.weight)?))
    });
    for name in ["Linear", "LinearReLU"] {
        m.register_static::<QatLinear>(name, |qat, _, out_q| {
            let (linear, weight) = qat.quantized_weight()?;
            let act = if qat.relu() { QuantizedAct::Relu } else { QuantizedAct::None };
            Ok(Box::new(QuantizedLinear::from_parts(
                linear.in_features(),
                linear.out_features(),
                act,
                weight,
                linear.bias().cloned(),
                out_q,
            )?))
        });
    }
    m.set_activation_post_process(move |_, qconfig| {
        Ok(Box::new(FakeQuantModule::new(kinds.activation.build(&qconfig.activation, None)?)))
    });
    m
}

/// PyTorch's `prepare_qat(model)` with a global QAT qconfig: see [`prepare_qat_with`].
///
/// ```
/// use qgraph::nn::Linear;
/// use qgraph::{Module, Sequential, train};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(4, 2, true))]));
/// train(&mut model, true);
/// qfake::prepare_qat(&mut model, &qfake::get_default_qat_qconfig("x86")?)?;
/// assert_eq!(model.get("0.weight_fake_quant")?.type_name(), "FusedMovingAvgObsFakeQuantize");
/// assert_eq!(model.get("0.activation_post_process")?.type_name(), "FusedMovingAvgObsFakeQuantize");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn prepare_qat(model: &mut Box<dyn Module>, qconfig: &QatQConfig) -> QFakeResult<usize> {
    prepare_qat_with(model, &QConfigMapping::global(qconfig.qconfig.clone()), qconfig.kinds)
}

/// `prepare_qat(model)` with a qconfig per module (`mapping`) and the fake quantizer classes
/// `kinds`: swaps layers for their QAT forms, then attaches fake-quantizing activation
/// post-processes (qgraph's `prepare_qat_with` on [`qat_mappings`]). The model should be in
/// training mode, as PyTorch asserts. Returns the number of post-processes attached.
pub fn prepare_qat_with(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    kinds: FakeQuantKinds,
) -> QFakeResult<usize> {
    if !model.named_modules().iter().any(|(_, m)| m.training()) {
        return Err(GraphError::Workflow {
            step: "prepare_qat",
            reason: "the model is in eval mode; prepare_qat needs train(&mut model, true) first, as PyTorch asserts".into(),
        });
    }
    qgraph::prepare_qat_with(model, mapping, &qat_mappings(kinds))
}

/// `convert(model)` of a QAT model: every QAT module becomes its quantized counterpart (batch
/// norm folded with its running statistics, weights quantized with the parameters of the
/// `weight_fake_quant` after it sees the final weight, as PyTorch's `from_float` does), with the
/// output parameters of its `activation_post_process`.
pub fn convert(model: &mut Box<dyn Module>, kinds: FakeQuantKinds) -> QFakeResult<()> {
    qgraph::convert_with(model, &qat_mappings(kinds))
}

/// qgraph's default loaders plus the QAT modules and fake quantizers.
pub fn loaders() -> Loaders {
    let mut loaders = Loaders::default();
    loaders.register(QatConv::SAVED_TYPE, |record| Ok(Box::new(QatConv::from_record(record)?)));
    loaders.register(QatLinear::SAVED_TYPE, |record| Ok(Box::new(QatLinear::from_record(record)?)));
    loaders
        .register(FakeQuantModule::SAVED_TYPE, |record| Ok(Box::new(FakeQuantModule::from_record(record)?)));
    loaders
}

/// `freeze_bn_stats` on every QAT conv-bn module of the tree (PyTorch's
/// `model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)`): batch norm uses and keeps its
/// running statistics from now on.
pub fn freeze_bn_stats(model: &mut Box<dyn Module>) {
    visit::<QatConv>(model.as_mut(), &mut |m| m.freeze_bn_stats());
}

/// `update_bn_stats` on every QAT conv-bn module (undoes [`freeze_bn_stats`]).
pub fn update_bn_stats(model: &mut Box<dyn Module>) {
    visit::<QatConv>(model.as_mut(), &mut |m| m.update_bn_stats());
}

/// `model.apply(disable_observer)` / `enable_observer`: every fake quantizer's observer.
pub fn set_observers_enabled(model: &mut Box<dyn Module>, enabled: bool) {
    visit::<FakeQuantModule>(model.as_mut(), &mut |m| m.lock().set_observer_enabled(enabled));
}

/// `model.apply(disable_fake_quant)` / `enable_fake_quant`: every fake quantizer.
pub fn set_fake_quant_enabled(model: &mut Box<dyn Module>, enabled: bool) {
    visit::<FakeQuantModule>(model.as_mut(), &mut |m| m.lock().set_fake_quant_enabled(enabled));
}

/// Calls `f` on every module of type `M` in the tree (inside prepared modules too).
fn visit<M: Module>(model: &mut dyn Module, f: &mut dyn FnMut(&mut M)) {
    if let Some(m) = model.downcast_mut::<M>() {
        f(m);
    }
    if let Some(observed) = model.downcast_mut::<qgraph::workflow::Observed>() {
        visit(observed.inner_mut(), f);
        if let Some(post) = observed.child_slot(qgraph::workflow::Observed::POST) {
            visit(post.as_mut(), f);
        }
        return;
    }
    let names: Vec<String> = model.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        if let Some(child) = model.child_slot(&name) {
            visit(child.as_mut(), f);
        }
    }
}
