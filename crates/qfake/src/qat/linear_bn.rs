//! `intrinsic.qat.LinearBn1d`: a linear layer and its `BatchNorm1d`, the batch norm folded into
//! the weight at every step (see [`super::bn_fold`]).

use ndarray::{ArrayD, IxDyn};
use qgraph::fusion::fuse_linear_bn_weights;
use qgraph::nn::{BatchNorm, Fused, FusedKind, Linear};
use qgraph::qconfig::QConfig;
use qgraph::quantized::QuantizedWeight;
use qgraph::record::{Record, TensorView};
use qgraph::{GraphError, Module, Value};
use serde::{Deserialize, Serialize};

use super::bn_fold::{BnRun, finish_fold, fold_factors, running_stats_mut, scale_weight};
use super::conv::check_weight_quantizer;
use super::qconfig::FakeQuantKind;
use crate::fake_quantize::{FakeQuantCtx, FakeQuantModule, QFakeResult, invalid};

const CONTEXT: &str = "LinearBn1d";

/// What a QAT linear-bn layer saves besides its tensors and children.
#[derive(Debug, Serialize, Deserialize)]
struct QatLinearBnConfig {
    linear: serde_json::Value,
    qconfig: QConfig,
    freeze_bn: bool,
}

/// PyTorch's `torch.ao.nn.intrinsic.qat.LinearBn1d`, with its children and `state_dict` names
/// (`weight`, `bias`, `bn.*`, `weight_fake_quant`). Forward on `[N, in_features]`: with
/// `s = bn.weight / sqrt(bn.running_var + bn.eps)`, `x (weight_fake_quant(weight * s))^T` with a
/// zero bias, divided by `s`, plus the bias, then batch norm (batch statistics in training mode
/// until [`freeze_bn_stats`](QatLinearBn::freeze_bn_stats), running statistics after). The
/// training forward (which updates the running statistics) and backward are in
/// [`crate::train`]. Converts to a quantized `Linear` with the batch norm folded by
/// `fuse_linear_bn_weights`. Saved as [`QatLinearBn::SAVED_TYPE`].
#[derive(Debug, Clone)]
pub struct QatLinearBn {
    linear: Linear,
    bn: Box<dyn Module>,
    weight_fake_quant: Box<dyn Module>,
    qconfig: QConfig,
    freeze_bn: bool,
    training: bool,
}

/// What the forward computed, for its backward.
pub(crate) struct LinearBnRun {
    /// The input.
    pub input: ArrayD<f32>,
    /// The fake-quantized scaled weight the linear layer ran with.
    pub weight: ArrayD<f32>,
    /// The fake quantizer's context.
    pub fake_quant: FakeQuantCtx,
    /// The batch-norm part.
    pub bn: BnRun,
    /// The running mean and variance after this batch (batch statistics only).
    pub updated_stats: Option<(ArrayD<f32>, ArrayD<f32>)>,
}

impl QatLinearBn {
    /// The name a QAT linear-bn layer is saved under.
    pub const SAVED_TYPE: &'static str = "QatLinearBn1d";

    /// `LinearBn1d.from_float` of a fused `LinearBn1d` (`fuse_modules_qat`'s output): the
    /// linear layer and batch norm with `qconfig`'s weight observer in a fake quantizer of class
    /// `weight_kind`.
    pub fn from_fused(fused: &Fused, qconfig: &QConfig, weight_kind: FakeQuantKind) -> QFakeResult<Self> {
        if fused.kind() != FusedKind::LinearBn1d {
            return Err(invalid(CONTEXT, "fused module", fused.kind().type_name(), "give a LinearBn1d"));
        }
        let not_library = |what: &str| {
            invalid(CONTEXT, "fused module", "LinearBn1d", format!("its parts must be the library's {what}"))
        };
        let linear = fused.base().downcast_ref::<Linear>().ok_or_else(|| not_library("Linear"))?.clone();
        let bn =
            fused.parts()[1].1.downcast_ref::<BatchNorm>().ok_or_else(|| not_library("BatchNorm"))?.clone();
        let quantizer = weight_kind.build(&qconfig.weight, Some(linear.out_features()))?;
        check_weight_quantizer(&*quantizer)?;
        Ok(Self {
            linear,
            bn: Box::new(bn),
            weight_fake_quant: Box::new(FakeQuantModule::new(quantizer)),
            qconfig: qconfig.clone(),
            freeze_bn: false,
            training: fused.training(),
        })
    }

    /// The linear layer (weight before folding and fake quantization).
    pub fn linear(&self) -> &Linear {
        &self.linear
    }

    /// The batch norm.
    pub fn bn(&self) -> QFakeResult<&BatchNorm> {
        self.bn.downcast_ref().ok_or_else(|| GraphError::Workflow {
            step: "train",
            reason: "LinearBn1d's `bn` child is not the library's BatchNorm".into(),
        })
    }

    /// The weight's fake quantizer.
    pub fn weight_fake_quant(&self) -> &FakeQuantModule {
        self.weight_fake_quant.downcast_ref().expect("built as a FakeQuantModule")
    }

    /// `freeze_bn_stats()`: batch norm uses and keeps its running statistics.
    pub fn freeze_bn_stats(&mut self) {
        self.freeze_bn = true;
    }

    /// `update_bn_stats()`: batch norm uses batch statistics in training mode again.
    pub fn update_bn_stats(&mut self) {
        self.freeze_bn = false;
    }

    /// True after [`freeze_bn_stats`](QatLinearBn::freeze_bn_stats).
    pub fn is_bn_frozen(&self) -> bool {
        self.freeze_bn
    }

    /// True if batch norm normalizes with batch statistics now (training mode, not frozen).
    pub fn uses_batch_stats(&self) -> bool {
        self.training && !self.freeze_bn
    }

    /// The batch norm's running statistics, mutable (the training forward updates them).
    pub(crate) fn running_stats_mut(&mut self) -> QFakeResult<(&mut ArrayD<f32>, &mut ArrayD<f32>)> {
        running_stats_mut(self.bn.as_mut(), CONTEXT)
    }

    /// The forward: the output and what backward needs (with the running statistics the batch
    /// gives, when batch norm uses batch statistics; the training forward stores them).
    pub(crate) fn run(&self, x: ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, LinearBnRun)> {
        if x.ndim() != 2 {
            return Err(invalid(
                CONTEXT,
                "input shape",
                x.shape(),
                "LinearBn1d takes [N, in_features] (BatchNorm1d normalizes the output features)",
            ));
        }
        let bn = self.bn()?;
        let factors = fold_factors(bn, CONTEXT)?;
        let (weight, fake_quant) =
            self.weight_fake_quant().fake_quantize(&scale_weight(self.linear.weight(), &factors.0))?;
        let mut layer = self.linear.clone();
        let zero_bias = ArrayD::zeros(IxDyn(&[self.linear.out_features()]));
        layer.set_weight_bias(weight.clone(), Some(zero_bias))?;
        let out = layer.forward(Value::Float(x.clone()))?.into_float("Linear")?;
        let (out, bn_run, updated_stats) =
            finish_fold(bn, out, self.linear.bias(), factors, self.uses_batch_stats())?;
        Ok((out, LinearBnRun { input: x, weight, fake_quant, bn: bn_run, updated_stats }))
    }

    /// The float layer `convert` quantizes (batch norm folded with its running statistics by
    /// `fuse_linear_bn_weights`) and its weight quantized with the parameters of
    /// `weight_fake_quant` after it sees that weight (PyTorch's `Linear.from_float`).
    pub fn quantized_weight(&self) -> QFakeResult<(Linear, QuantizedWeight)> {
        let mut linear = self.linear.clone();
        let bn = self.bn()?;
        let bias = linear.bias().map(|b| b.view().into_dimensionality().expect("biases are vectors"));
        let (w, b) = fuse_linear_bn_weights(linear.weight().view(), bias, &bn.fold_params())?;
        linear.set_weight_bias(w, Some(b.into_dyn()))?;
        let fq = self.weight_fake_quant();
        fq.fake_quantize(linear.weight())?;
        let mut quantizer = fq.lock();
        let range = quantizer.quant_range();
        let weight = QuantizedWeight::quantize(linear.weight(), quantizer.qparams()?, range)?;
        Ok((linear, weight))
    }

    /// Rebuilds a saved layer (its children loaded by their loaders).
    pub fn from_record(mut record: Record<'_>) -> QFakeResult<Self> {
        let c: QatLinearBnConfig = record.config()?;
        let bn = record.take_child("bn")?;
        if !bn.is::<BatchNorm>() {
            return Err(record.tensors.mismatch("child `bn` is not a BatchNorm".into()));
        }
        let weight_fake_quant = record.take_child("weight_fake_quant")?;
        if !weight_fake_quant.is::<FakeQuantModule>() {
            return Err(record.tensors.mismatch("child `weight_fake_quant` is not a fake quantizer".into()));
        }
        let linear = Linear::from_record(Record { config: c.linear, ..record })?;
        Ok(Self {
            linear,
            bn,
            weight_fake_quant,
            qconfig: c.qconfig,
            freeze_bn: c.freeze_bn,
            training: false,
        })
    }
}

impl Module for QatLinearBn {
    fn type_name(&self) -> &str {
        CONTEXT
    }

    fn saved_type(&self) -> &str {
        Self::SAVED_TYPE
    }

    fn forward(&self, input: Value) -> QFakeResult<Value> {
        let x = input.into_float(CONTEXT)?;
        Ok(Value::Float(self.run(x)?.0))
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        vec![("bn", self.bn.as_ref()), ("weight_fake_quant", self.weight_fake_quant.as_ref())]
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        match name {
            "bn" => Some(&mut self.bn),
            "weight_fake_quant" => Some(&mut self.weight_fake_quant),
            _ => None,
        }
    }

    delegate_to_float!(linear);

    fn config(&self) -> serde_json::Value {
        let config = QatLinearBnConfig {
            linear: self.linear.config(),
            qconfig: self.qconfig.clone(),
            freeze_bn: self.freeze_bn,
        };
        serde_json::to_value(config).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.linear.tensors()
    }
}
