//! Quantized activations (`torch.ao.nn.quantized`: `ReLU6`, `Hardswish`, `ELU`, `LeakyReLU`,
//! `Dropout`): what `convert` puts in place of the float modules that PyTorch's static mapping
//! swaps. The other activations (ReLU, Sigmoid, Tanh, Hardtanh, pooling, ...) are not swapped and
//! run as the float modules on quantized values.

use qkernels::elementwise::{PerTensor, Unary};
use serde::{Deserialize, Serialize};

use crate::nn::misc::dropout_repr;
use crate::nn::unary::{LutCache, py_float};
use crate::record::Record;
use crate::value::OutQ;
use crate::{GraphResult, Module, Value, nn};

/// PyTorch's fixed output parameters for the modules of `DEFAULT_MODULE_TO_ACT_POST_PROCESS`
/// (quint8): `Sigmoid`, `Hardsigmoid` and `Softmax` get scale 1/256 and zero point 0, `Tanh`
/// scale 2/256 and zero point 128, whatever the qconfig says. `None` for every other type.
pub fn is_fixed_qparams(type_name: &str) -> Option<PerTensor> {
    match type_name {
        "Sigmoid" | "Hardsigmoid" | "Softmax" => Some(PerTensor::new(1.0 / 256.0, 0)),
        "Tanh" => Some(PerTensor::new(2.0 / 256.0, 128)),
        _ => None,
    }
}

/// Runs `op` on a quantized input (an error naming `module` for a float one) with output
/// parameters `out_q`, or the input's when `None`.
fn run(
    module: &str,
    op: Unary,
    cache: &LutCache,
    out_q: Option<PerTensor>,
    input: Value,
) -> GraphResult<Value> {
    let q = input.into_quant(module)?;
    let out_q = out_q.unwrap_or(q.qparams());
    Ok(Value::Quant(cache.apply(op, &q, out_q)?))
}

/// `nnq.ReLU6` (`QuantizedReLU6`): `min(max(q, zero_point), quantize(6))`, output parameters the
/// input's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReLU6 {
    #[serde(skip)]
    cache: LutCache,
}

impl ReLU6 {
    /// `nnq.ReLU6()`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Module for ReLU6 {
    fn type_name(&self) -> &str {
        "QuantizedReLU6"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        run(self.type_name(), Unary::Relu6, &self.cache, None, input)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }
}

/// `nnq.Hardswish` (`QuantizedHardswish`): `quantized::hardswish` with the observed output
/// parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hardswish {
    out: OutQ,
    #[serde(skip)]
    cache: LutCache,
}

impl Hardswish {
    /// `nnq.Hardswish(scale, zero_point)` (the scale rounded to f32, as PyTorch's output has it).
    pub fn new(out_q: PerTensor) -> GraphResult<Self> {
        Ok(Self { out: OutQ::new_f32(out_q)?, cache: LutCache::default() })
    }

    /// The output parameters.
    pub fn out_qparams(&self) -> PerTensor {
        self.out.get()
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        Self::new(record.config::<Self>()?.out.get())
    }
}

impl Module for Hardswish {
    fn type_name(&self) -> &str {
        "QuantizedHardswish"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        run(self.type_name(), Unary::Hardswish, &self.cache, Some(self.out.get()), input)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }
}

/// `nnq.ELU` (`QuantizedELU`): `quantized::elu` with the observed output parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ELU {
    out: OutQ,
    alpha: f64,
    #[serde(skip)]
    cache: LutCache,
}

impl ELU {
    /// `nnq.ELU(scale, zero_point, alpha)`.
    pub fn new(out_q: PerTensor, alpha: f64) -> GraphResult<Self> {
        Ok(Self { out: OutQ::new(out_q)?, alpha, cache: LutCache::default() })
    }

    /// The output parameters.
    pub fn out_qparams(&self) -> PerTensor {
        self.out.get()
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: Self = record.config()?;
        Self::new(c.out.get(), c.alpha)
    }
}

impl Module for ELU {
    fn type_name(&self) -> &str {
        "QuantizedELU"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        // `torch.ao.nn.quantized.functional.elu`: `quantized::elu` with scale and input scale 1.
        let op = Unary::Elu { alpha: self.alpha as f32, scale: 1.0, input_scale: 1.0 };
        run(self.type_name(), op, &self.cache, Some(self.out.get()), input)
    }

    fn extra_repr(&self) -> String {
        format!("alpha={}", py_float(self.alpha))
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }
}

/// `nnq.LeakyReLU` (`QuantizedLeakyReLU`): `quantized::leaky_relu` with the observed output
/// parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakyReLU {
    out: OutQ,
    negative_slope: f64,
    #[serde(skip)]
    cache: LutCache,
}

impl LeakyReLU {
    /// `nnq.LeakyReLU(scale, zero_point, negative_slope)` (the scale rounded to f32: PyTorch keeps
    /// it in a float32 buffer).
    pub fn new(out_q: PerTensor, negative_slope: f64) -> GraphResult<Self> {
        Ok(Self { out: OutQ::new_f32(out_q)?, negative_slope, cache: LutCache::default() })
    }

    /// The output parameters.
    pub fn out_qparams(&self) -> PerTensor {
        self.out.get()
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: Self = record.config()?;
        Self::new(c.out.get(), c.negative_slope)
    }
}

impl Module for LeakyReLU {
    fn type_name(&self) -> &str {
        "QuantizedLeakyReLU"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let op = Unary::LeakyRelu { negative_slope: self.negative_slope as f32 };
        run(self.type_name(), op, &self.cache, Some(self.out.get()), input)
    }

    fn extra_repr(&self) -> String {
        format!("negative_slope={}", py_float(self.negative_slope))
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }
}

/// `nnq.Dropout` (`QuantizedDropout`): returns its input, as PyTorch's placeholder does in both
/// training and evaluation mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// `nnq.Dropout(p)`; `p` must be within `[0, 1]`, as for `nn.Dropout`.
    pub fn new(p: f64) -> GraphResult<Self> {
        Ok(Self { p: nn::Dropout::new(p)?.p() })
    }
}

impl Module for Dropout {
    fn type_name(&self) -> &str {
        "QuantizedDropout"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        Ok(input)
    }

    fn extra_repr(&self) -> String {
        dropout_repr(self.p)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }
}
