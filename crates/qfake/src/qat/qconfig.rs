//! QAT qconfigs: the observers of a qgraph `QConfig` and the fake quantizer classes that wrap
//! them (PyTorch's `FakeQuantize.with_args(observer=...)`), with PyTorch's named defaults.

use qgraph::qconfig::{Backend, QConfig};
use qobserve::{ObserverSpec, UniformArgs};
use serde::{Deserialize, Serialize};

use crate::fake_quantize::{
    FakeQuantize, FakeQuantizer, FixedQParamsFakeQuantize, FusedMovingAvgObsFakeQuantize,
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

/// `default_qat_qconfig_v2`: as [`default_qat_qconfig`] with `FusedMovingAvgObsFakeQuantize`
/// (`default_fused_act_fake_quant`: quint8 0..255 without `reduce_range`;
/// `default_fused_wt_fake_quant`: per-tensor symmetric qint8).
pub fn default_qat_qconfig_v2() -> QatQConfig {
    let activation = moving_average(UniformArgs::per_tensor().quant_range(0, 255));
    let kind = FakeQuantKind::FusedMovingAvgObs;
    QatQConfig {
        qconfig: QConfig { activation, weight: per_tensor_symmetric_weight() },
        kinds: FakeQuantKinds { activation: kind, weight: kind },
    }
}

/// `default_embedding_qat_qconfig`: activation `NoopObserver(dtype=torch.float32)` (an
/// embedding's output stays float), weight `default_embedding_fake_quant` (`FakeQuantize`
/// around a moving-average per-channel min/max observer, `averaging_constant` 1, quint8 0..255,
/// `per_channel_affine_float_qparams` on axis 0). Give it to the `Embedding` / `EmbeddingBag`
/// modules (a per-module qconfig), as in PyTorch.
///
/// ```
/// let qat = qfake::default_embedding_qat_qconfig();
/// assert_eq!(qat.qconfig.weight.name(), "MovingAveragePerChannelMinMaxObserver");
/// ```
pub fn default_embedding_qat_qconfig() -> QatQConfig {
    embedding_qat_qconfig(qcore::QDType::QUInt8)
}

/// `default_embedding_qat_qconfig_4bit`: as [`default_embedding_qat_qconfig`] with a quint4x2
/// table (`default_embedding_fake_quant_4bit`; for `EmbeddingBag`, as PyTorch's 4-bit tables).
pub fn default_embedding_qat_qconfig_4bit() -> QatQConfig {
    embedding_qat_qconfig(qcore::QDType::QUInt4x2)
}

fn embedding_qat_qconfig(dtype: qcore::QDType) -> QatQConfig {
    let activation =
        ObserverSpec::Noop { dtype: qobserve::CarriedDType::Float32, custom_op_name: String::new() };
    let kind = FakeQuantKind::FakeQuantize;
    QatQConfig {
        qconfig: QConfig { activation, weight: crate::fake_quantize::embedding_weight_observer(dtype) },
        kinds: FakeQuantKinds { activation: kind, weight: kind },
    }
}
