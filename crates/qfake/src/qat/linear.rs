//! QAT linear layers: `qat.Linear` and `intrinsic.qat.LinearReLU`.

use ndarray::ArrayD;
use qgraph::nn::{Fused, FusedKind, Linear};
use qgraph::qconfig::QConfig;
use qgraph::quantized::QuantizedWeight;
use qgraph::record::{Record, TensorView};
use qgraph::{Module, Value};
use serde::{Deserialize, Serialize};

use super::conv::{check_weight_quantizer, relu};
use super::qconfig::FakeQuantKind;
use crate::fake_quantize::{FakeQuantCtx, FakeQuantModule, QFakeResult, invalid};

/// What a QAT linear layer saves besides its tensors and its fake quantizer child.
#[derive(Debug, Serialize, Deserialize)]
struct QatLinearConfig {
    linear: serde_json::Value,
    relu: bool,
    qconfig: QConfig,
}

/// `qat.Linear` / `intrinsic.qat.LinearReLU`: `y = x weight_fake_quant(W)^T + b` (then ReLU),
/// with PyTorch's children and `state_dict` names (`weight`, `bias`, `weight_fake_quant`). Prints
/// as PyTorch's class; saved as [`QatLinear::SAVED_TYPE`].
#[derive(Debug, Clone)]
pub struct QatLinear {
    linear: Linear,
    relu: bool,
    weight_fake_quant: Box<dyn Module>,
    qconfig: QConfig,
    training: bool,
}

/// What the layer's forward computed, for its backward.
pub(crate) struct LinearRun {
    /// The input.
    pub input: ArrayD<f32>,
    /// The fake-quantized weight.
    pub weight: ArrayD<f32>,
    /// The fake quantizer's context.
    pub fake_quant: FakeQuantCtx,
    /// The output (after ReLU).
    pub output: ArrayD<f32>,
}

impl QatLinear {
    /// The name a QAT linear layer is saved under.
    pub const SAVED_TYPE: &'static str = "QatLinear";

    fn new(linear: Linear, relu: bool, qconfig: &QConfig, weight_kind: FakeQuantKind) -> QFakeResult<Self> {
        let quantizer = weight_kind.build(&qconfig.weight, Some(linear.out_features()))?;
        check_weight_quantizer(&*quantizer)?;
        let training = linear.training();
        Ok(Self {
            linear,
            relu,
            weight_fake_quant: Box::new(FakeQuantModule::new(quantizer)),
            qconfig: qconfig.clone(),
            training,
        })
    }

    /// `qat.Linear.from_float`: the float layer with `qconfig`'s weight observer in a fake
    /// quantizer of class `weight_kind`.
    pub fn from_linear(linear: &Linear, qconfig: &QConfig, weight_kind: FakeQuantKind) -> QFakeResult<Self> {
        Self::new(linear.clone(), false, qconfig, weight_kind)
    }

    /// `LinearReLU.from_float` of a fused `LinearReLU`.
    pub fn from_fused(fused: &Fused, qconfig: &QConfig, weight_kind: FakeQuantKind) -> QFakeResult<Self> {
        if fused.kind() != FusedKind::LinearReLU {
            return Err(invalid("QatLinear", "fused module", fused.kind().type_name(), "give a LinearReLU"));
        }
        let linear = fused.base().downcast_ref::<Linear>().ok_or_else(|| {
            invalid("QatLinear", "fused module", "LinearReLU", "its first part must be the library's Linear")
        })?;
        let mut qat = Self::new(linear.clone(), true, qconfig, weight_kind)?;
        qat.training = fused.training();
        Ok(qat)
    }

    /// The float layer (weight before fake quantization).
    pub fn linear(&self) -> &Linear {
        &self.linear
    }

    /// True for `LinearReLU`.
    pub fn relu(&self) -> bool {
        self.relu
    }

    /// The weight's fake quantizer.
    pub fn weight_fake_quant(&self) -> &FakeQuantModule {
        self.weight_fake_quant.downcast_ref().expect("built as a FakeQuantModule")
    }

    /// The forward and what backward needs.
    pub(crate) fn run(&self, x: ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, LinearRun)> {
        let (weight, fake_quant) = self.weight_fake_quant().fake_quantize(self.linear.weight())?;
        let mut fake = self.linear.clone();
        fake.set_weight_bias(weight.clone(), self.linear.bias().cloned())?;
        let mut out = fake.forward(Value::Float(x.clone()))?.into_float("Linear")?;
        if self.relu {
            out.mapv_inplace(relu);
        }
        Ok((out.clone(), LinearRun { input: x, weight, fake_quant, output: out }))
    }

    /// The float layer `convert` quantizes and its weight quantized with the parameters of
    /// `weight_fake_quant` after it sees the weight (PyTorch's `from_float`).
    pub fn quantized_weight(&self) -> QFakeResult<(Linear, QuantizedWeight)> {
        let fq = self.weight_fake_quant();
        fq.fake_quantize(self.linear.weight())?;
        let mut quantizer = fq.lock();
        let range = quantizer.quant_range();
        let weight = QuantizedWeight::quantize(self.linear.weight(), quantizer.qparams()?, range)?;
        Ok((self.linear.clone(), weight))
    }

    /// Rebuilds a saved layer (its fake quantizer loaded by its loader).
    pub fn from_record(mut record: Record<'_>) -> QFakeResult<Self> {
        let c: QatLinearConfig = record.config()?;
        let weight_fake_quant = record.take_child("weight_fake_quant")?;
        if !weight_fake_quant.is::<FakeQuantModule>() {
            return Err(record.tensors.mismatch("child `weight_fake_quant` is not a fake quantizer".into()));
        }
        let linear = Linear::from_record(Record { config: c.linear, ..record })?;
        Ok(Self { linear, relu: c.relu, weight_fake_quant, qconfig: c.qconfig, training: false })
    }
}

impl Module for QatLinear {
    fn type_name(&self) -> &str {
        if self.relu { "LinearReLU" } else { "Linear" }
    }

    fn saved_type(&self) -> &str {
        Self::SAVED_TYPE
    }

    fn forward(&self, input: Value) -> QFakeResult<Value> {
        let x = input.into_float(self.type_name())?;
        Ok(Value::Float(self.run(x)?.0))
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        vec![("weight_fake_quant", self.weight_fake_quant.as_ref())]
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        (name == "weight_fake_quant").then_some(&mut self.weight_fake_quant)
    }

    delegate_to_float!(linear);

    fn config(&self) -> serde_json::Value {
        let config =
            QatLinearConfig { linear: self.linear.config(), relu: self.relu, qconfig: self.qconfig.clone() };
        serde_json::to_value(config).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.linear.tensors()
    }
}
