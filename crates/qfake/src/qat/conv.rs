//! QAT convolutions: `qat.Conv{n}d`, `intrinsic.qat.ConvReLU{n}d`, `ConvBn{n}d` and
//! `ConvBnReLU{n}d`, the last two folding their batch norm into the weight at every step.

use ndarray::{ArrayD, IxDyn};
use qgraph::fusion::fuse_conv_bn_weights;
use qgraph::nn::{BatchNorm, Conv, Fused, FusedKind};
use qgraph::qconfig::QConfig;
use qgraph::quantized::{QuantizedAct, QuantizedWeight};
use qgraph::record::{Record, TensorView};
use qgraph::{GraphError, Module, Value};
use serde::{Deserialize, Serialize};

use super::bn_fold::{BnRun, finish_fold, fold_factors, scale_weight};
use super::qconfig::FakeQuantKind;
use crate::fake_quantize::{FakeQuantCtx, FakeQuantModule, QFakeResult, invalid};
use crate::grad;

/// Which QAT convolution a [`QatConv`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QatConvKind {
    /// `qat.Conv{n}d`.
    Conv,
    /// `intrinsic.qat.ConvReLU{n}d`.
    ConvReLU,
    /// `intrinsic.qat.ConvBn{n}d`.
    ConvBn,
    /// `intrinsic.qat.ConvBnReLU{n}d`.
    ConvBnReLU,
}

impl QatConvKind {
    /// PyTorch's class name for `dims` spatial dimensions (`ConvBnReLU2d`).
    pub fn type_name(self, dims: usize) -> String {
        match self {
            QatConvKind::Conv => format!("Conv{dims}d"),
            QatConvKind::ConvReLU => format!("ConvReLU{dims}d"),
            QatConvKind::ConvBn => format!("ConvBn{dims}d"),
            QatConvKind::ConvBnReLU => format!("ConvBnReLU{dims}d"),
        }
    }

    /// True if a ReLU follows.
    pub fn relu(self) -> bool {
        matches!(self, QatConvKind::ConvReLU | QatConvKind::ConvBnReLU)
    }

    /// True if it holds a batch norm.
    pub fn has_bn(self) -> bool {
        matches!(self, QatConvKind::ConvBn | QatConvKind::ConvBnReLU)
    }

    /// The activation of the quantized module it converts to.
    pub fn quantized_act(self) -> QuantizedAct {
        if self.relu() { QuantizedAct::Relu } else { QuantizedAct::None }
    }
}

/// What a QAT convolution saves besides its tensors and children.
#[derive(Debug, Serialize, Deserialize)]
struct QatConvConfig {
    kind: QatConvKind,
    conv: serde_json::Value,
    qconfig: QConfig,
    freeze_bn: bool,
}

/// A QAT convolution (see [`QatConvKind`]), with PyTorch's children and `state_dict` names:
/// `weight`, `bias`, `bn.*` and `weight_fake_quant`.
///
/// Forward, as PyTorch's `_forward_approximate` for the batch-norm forms: with
/// `s = bn.weight / sqrt(bn.running_var + bn.eps)`, the convolution runs on
/// `weight_fake_quant(weight * s)` with a zero bias, its output is divided by `s`, the bias is
/// added, and batch norm (batch statistics in training mode until [`freeze_bn_stats`](QatConv::freeze_bn_stats),
/// running statistics after) and ReLU follow. Without batch norm: the convolution on
/// `weight_fake_quant(weight)` with the bias, then ReLU. The training forward and backward are in
/// [`crate::train`]; `forward` here uses batch statistics in training mode without updating the
/// running ones.
#[derive(Debug, Clone)]
pub struct QatConv {
    kind: QatConvKind,
    type_name: String,
    conv: Conv,
    bn: Option<Box<dyn Module>>,
    weight_fake_quant: Box<dyn Module>,
    qconfig: QConfig,
    freeze_bn: bool,
    training: bool,
}

/// What the convolution's forward computed, for its backward.
pub(crate) struct ConvRun {
    /// The forward's input.
    pub input: ArrayD<f32>,
    /// The weight the convolution ran with (fake-quantized).
    pub weight: ArrayD<f32>,
    /// The fake quantizer's context.
    pub fake_quant: FakeQuantCtx,
    /// The batch-norm part, for the batch-norm forms.
    pub bn: Option<BnRun>,
    /// The output (after ReLU), for ReLU's mask.
    pub output: ArrayD<f32>,
    /// The running mean and variance after this batch (training-mode batch norm only).
    pub updated_stats: Option<(ArrayD<f32>, ArrayD<f32>)>,
}

impl QatConv {
    /// The name a QAT convolution is saved under.
    pub const SAVED_TYPE: &'static str = "QatConv";

    fn new(
        kind: QatConvKind,
        conv: Conv,
        bn: Option<BatchNorm>,
        qconfig: &QConfig,
        weight_kind: FakeQuantKind,
    ) -> QFakeResult<Self> {
        let quantizer = weight_kind.build(&qconfig.weight, Some(conv.out_channels()))?;
        check_weight_quantizer(&*quantizer)?;
        let training = conv.training();
        Ok(Self {
            kind,
            type_name: kind.type_name(conv.dims()),
            conv,
            bn: bn.map(|bn| Box::new(bn) as Box<dyn Module>),
            weight_fake_quant: Box::new(FakeQuantModule::new(quantizer)),
            qconfig: qconfig.clone(),
            freeze_bn: false,
            training,
        })
    }

    /// `qat.Conv{n}d.from_float`: the float convolution with `qconfig`'s weight observer in a
    /// fake quantizer of class `weight_kind`.
    pub fn from_conv(conv: &Conv, qconfig: &QConfig, weight_kind: FakeQuantKind) -> QFakeResult<Self> {
        Self::new(QatConvKind::Conv, conv.clone(), None, qconfig, weight_kind)
    }

    /// `from_float` of a fused `ConvReLU{n}d`, `ConvBn{n}d` or `ConvBnReLU{n}d`
    /// (`fuse_modules_qat`'s output).
    pub fn from_fused(fused: &Fused, qconfig: &QConfig, weight_kind: FakeQuantKind) -> QFakeResult<Self> {
        let kind = match fused.kind() {
            FusedKind::ConvReLU(_) => QatConvKind::ConvReLU,
            FusedKind::ConvBn(_) => QatConvKind::ConvBn,
            FusedKind::ConvBnReLU(_) => QatConvKind::ConvBnReLU,
            other => {
                return Err(invalid(
                    "QatConv",
                    "fused module",
                    other.type_name(),
                    "give a ConvReLU, ConvBn or ConvBnReLU",
                ));
            }
        };
        let conv = fused.base().downcast_ref::<Conv>().ok_or_else(|| not_library(fused, "Conv"))?.clone();
        let bn = if kind.has_bn() {
            Some(
                fused.parts()[1]
                    .1
                    .downcast_ref::<BatchNorm>()
                    .ok_or_else(|| not_library(fused, "BatchNorm"))?
                    .clone(),
            )
        } else {
            None
        };
        let mut qat = Self::new(kind, conv, bn, qconfig, weight_kind)?;
        qat.training = fused.training();
        Ok(qat)
    }

    /// Which QAT convolution it is.
    pub fn kind(&self) -> QatConvKind {
        self.kind
    }

    /// The convolution (weight before fake quantization and folding).
    pub fn conv(&self) -> &Conv {
        &self.conv
    }

    /// The batch norm, for the batch-norm forms.
    pub fn bn(&self) -> Option<&BatchNorm> {
        self.bn.as_ref().and_then(|bn| bn.downcast_ref())
    }

    /// The weight's fake quantizer.
    pub fn weight_fake_quant(&self) -> &FakeQuantModule {
        self.weight_fake_quant.downcast_ref().expect("built as a FakeQuantModule")
    }

    /// The qconfig it was prepared with.
    pub fn qconfig(&self) -> &QConfig {
        &self.qconfig
    }

    /// `freeze_bn_stats()`: batch norm uses and keeps its running statistics.
    pub fn freeze_bn_stats(&mut self) {
        self.freeze_bn = true;
    }

    /// `update_bn_stats()`: batch norm uses batch statistics in training mode again.
    pub fn update_bn_stats(&mut self) {
        self.freeze_bn = false;
    }

    /// True after [`freeze_bn_stats`](QatConv::freeze_bn_stats).
    pub fn is_bn_frozen(&self) -> bool {
        self.freeze_bn
    }

    /// True if batch norm normalizes with batch statistics now (training mode, not frozen).
    pub fn uses_batch_stats(&self) -> bool {
        self.training && !self.freeze_bn && self.kind.has_bn()
    }

    fn batch_norm(&self) -> QFakeResult<&BatchNorm> {
        self.bn().ok_or_else(|| GraphError::Workflow {
            step: "train",
            reason: format!("{}'s `bn` child is not the library's BatchNorm", self.type_name),
        })
    }

    /// The batch norm's running statistics, mutable (the training forward updates them).
    pub(crate) fn running_stats_mut(&mut self) -> QFakeResult<(&mut ArrayD<f32>, &mut ArrayD<f32>)> {
        let bn = self
            .bn
            .as_mut()
            .ok_or_else(|| invalid("QatConv", "bn", "none", "only the batch-norm forms have one"))?;
        super::bn_fold::running_stats_mut(bn.as_mut(), "QatConv")
    }

    /// The forward: the output and what backward needs (with the running statistics the batch
    /// gives, when batch norm uses batch statistics; the training forward stores them).
    pub(crate) fn run(&self, x: ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, ConvRun)> {
        // Copied only when not already in standard layout.
        let x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
        let options = self.conv.options();
        let fq = self.weight_fake_quant();
        let Some(bn) = self.bn.as_ref().map(|_| self.batch_norm()).transpose()? else {
            let (weight, fake_quant) = fq.fake_quantize(self.conv.weight())?;
            let mut out = grad::conv_forward(&x, &weight, self.conv.bias(), options)?;
            if self.kind.relu() {
                out.mapv_inplace(relu);
            }
            let run =
                ConvRun { input: x, weight, fake_quant, bn: None, output: out.clone(), updated_stats: None };
            return Ok((out, run));
        };
        let (scale_factor, running_std) = fold_factors(bn, "QatConv")?;
        let (weight, fake_quant) = fq.fake_quantize(&scale_weight(self.conv.weight(), &scale_factor))?;
        let zero_bias = ArrayD::zeros(IxDyn(&[self.conv.out_channels()]));
        let conv = grad::conv_forward(&x, &weight, Some(&zero_bias), options)?;
        let (mut out, bn_run, stats) =
            finish_fold(bn, conv, self.conv.bias(), (scale_factor, running_std), self.uses_batch_stats())?;
        if self.kind.relu() {
            out.mapv_inplace(relu);
        }
        let run = ConvRun {
            input: x,
            weight,
            fake_quant,
            bn: Some(bn_run),
            output: out.clone(),
            updated_stats: stats,
        };
        Ok((out, run))
    }

    /// The float convolution `convert` quantizes (batch norm folded with its running statistics,
    /// as `fuse_conv_bn_weights`) and its weight quantized with the parameters of
    /// `weight_fake_quant` after it sees that weight (PyTorch's `from_float`).
    pub fn quantized_weight(&self) -> QFakeResult<(Conv, QuantizedWeight)> {
        let mut conv = self.conv.clone();
        if self.kind.has_bn() {
            let bn = self.batch_norm()?;
            let bias = conv.bias().map(|b| b.view().into_dimensionality().expect("biases are vectors"));
            let (w, b) = fuse_conv_bn_weights(conv.weight().view(), bias, &bn.fold_params(), false)?;
            conv.set_weight_bias(w, Some(b.into_dyn()))?;
        }
        let fq = self.weight_fake_quant();
        fq.fake_quantize(conv.weight())?;
        let mut quantizer = fq.lock();
        let range = quantizer.quant_range();
        let weight = QuantizedWeight::quantize(conv.weight(), quantizer.qparams()?, range)?;
        Ok((conv, weight))
    }

    /// Rebuilds a saved QAT convolution (its children loaded by their loaders).
    pub fn from_record(mut record: Record<'_>) -> QFakeResult<Self> {
        let c: QatConvConfig = record.config()?;
        let bn = if c.kind.has_bn() { Some(record.take_child("bn")?) } else { None };
        let weight_fake_quant = record.take_child("weight_fake_quant")?;
        if !weight_fake_quant.is::<FakeQuantModule>() {
            return Err(record.tensors.mismatch("child `weight_fake_quant` is not a fake quantizer".into()));
        }
        let conv = Conv::from_record(Record { config: c.conv, ..record })?;
        Ok(Self {
            kind: c.kind,
            type_name: c.kind.type_name(conv.dims()),
            conv,
            bn,
            weight_fake_quant,
            qconfig: c.qconfig,
            freeze_bn: c.freeze_bn,
            training: false,
        })
    }
}

/// PyTorch's `relu` on floats (NaN passes).
pub(crate) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() { x } else { 0.0 }
}

fn not_library(fused: &Fused, what: &str) -> GraphError {
    invalid(
        "QatConv",
        "fused module",
        fused.kind().type_name(),
        format!("its parts must be the library's {what}"),
    )
}

/// A QAT weight quantizer must give qint8 parameters (PyTorch asserts it at convert).
pub(crate) fn check_weight_quantizer(quantizer: &dyn crate::FakeQuantizer) -> QFakeResult<()> {
    let (lo, hi) = quantizer.quant_range();
    if lo < -128 || hi > 127 {
        return Err(invalid(
            "prepare_qat",
            "weight fake quantizer range",
            (lo, hi),
            "weights are qint8: use a weight observer with dtype qint8 (and a range inside -128..127)",
        ));
    }
    Ok(())
}

impl Module for QatConv {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn saved_type(&self) -> &str {
        Self::SAVED_TYPE
    }

    fn forward(&self, input: Value) -> QFakeResult<Value> {
        let x = input.into_float(&self.type_name)?;
        Ok(Value::Float(self.run(x)?.0))
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        let mut out: Vec<(&str, &dyn Module)> = Vec::new();
        if let Some(bn) = &self.bn {
            out.push(("bn", bn.as_ref()));
        }
        out.push(("weight_fake_quant", self.weight_fake_quant.as_ref()));
        out
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        match name {
            "bn" => self.bn.as_mut(),
            "weight_fake_quant" => Some(&mut self.weight_fake_quant),
            _ => None,
        }
    }

    delegate_to_float!(conv);

    fn config(&self) -> serde_json::Value {
        let config = QatConvConfig {
            kind: self.kind,
            conv: self.conv.config(),
            qconfig: self.qconfig.clone(),
            freeze_bn: self.freeze_bn,
        };
        serde_json::to_value(config).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.conv.tensors()
    }
}
