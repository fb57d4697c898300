//! `QuantStub` / `DeQuantStub` / `QuantWrapper`, which mark where quantization starts and ends, and
//! `Quantize` / `DeQuantize`, what `convert` turns them into.

use qkernels::elementwise::PerTensor;
use serde::{Deserialize, Serialize};

use crate::outq::{OutQ, outq_newtype};
use crate::qconfig::QConfig;
use crate::record::Record;
use crate::value::QuantTensor;
use crate::{GraphResult, Module, Value};

identity_module!(
    /// `QuantStub`: the identity until `convert` makes it a [`Quantize`] with the parameters its
    /// observer chose for the values passing through it.
    QuantStub,
    "QuantStub",
    "A stub."
);

/// `DeQuantStub`: the identity until `convert` makes it a [`DeQuantize`]. It never gets an
/// observer; `prepare` records whether it has a qconfig, which decides whether `convert` swaps it
/// (as PyTorch swaps only modules with a qconfig).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeQuantStub {
    #[serde(default)]
    pub(crate) qconfig: Option<QConfig>,
}

impl DeQuantStub {
    /// A stub.
    pub fn new() -> Self {
        DeQuantStub { qconfig: None }
    }
}

impl Module for DeQuantStub {
    fn type_name(&self) -> &str {
        "DeQuantStub"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        Ok(input)
    }

    serde_config!();
}

/// `nnq.Quantize`: float in, quint8 out with fixed parameters (`torch.quantize_per_tensor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quantize(OutQ);

outq_newtype!(Quantize, "Quantizes to `q` (checked: a positive finite scale, a zero point in 0..=255).");

impl Module for Quantize {
    fn type_name(&self) -> &str {
        "Quantize"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float("Quantize")?;
        Ok(Value::Quant(QuantTensor::quantize(&x, self.qparams())?))
    }

    /// PyTorch keeps the parameters as float32 / int64 tensors and prints them so.
    fn extra_repr(&self) -> String {
        let q = self.qparams();
        format!(
            "scale={}, zero_point={}, dtype=torch.quint8",
            qcore::float_tensor_str(&[q.scale as f32]),
            qcore::int_tensor_str(&[q.zero_point])
        )
    }

    serde_config!();
}

/// `nnq.DeQuantize`: quantized in, float out. A float input passes unchanged, as
/// `Tensor.dequantize()` of a float tensor does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeQuantize;

impl DeQuantize {
    /// A dequantizer.
    pub fn new() -> Self {
        DeQuantize
    }
}

impl Module for DeQuantize {
    fn type_name(&self) -> &str {
        "DeQuantize"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        Ok(Value::Float(input.into_float_lossy()?))
    }
}

/// `QuantWrapper(module)`: `dequant(module(quant(x)))`, with children `quant`, `dequant` and
/// `module` in PyTorch's order.
#[derive(Debug, Clone)]
pub struct QuantWrapper {
    children: Vec<(String, Box<dyn Module>)>,
}

impl QuantWrapper {
    /// Wraps `module` between a [`QuantStub`] and a [`DeQuantStub`].
    pub fn new(module: Box<dyn Module>) -> Self {
        Self {
            children: vec![
                ("quant".into(), Box::new(QuantStub::new())),
                ("dequant".into(), Box::new(DeQuantStub::new())),
                ("module".into(), module),
            ],
        }
    }

    /// Rebuilds a saved wrapper.
    pub fn from_record(mut record: Record<'_>) -> GraphResult<Self> {
        let mut children = Vec::new();
        for name in ["quant", "dequant", "module"] {
            children.push((name.to_string(), record.take_child(name)?));
        }
        Ok(Self { children })
    }

    fn run(&self, i: usize, x: Value) -> GraphResult<Value> {
        let (name, module) = &self.children[i];
        module.forward(x).map_err(|e| e.within(name))
    }
}

impl Module for QuantWrapper {
    fn type_name(&self) -> &str {
        "QuantWrapper"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = self.run(0, input)?;
        let x = self.run(2, x)?;
        self.run(1, x)
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        self.children.iter().map(|(n, m)| (n.as_str(), m.as_ref())).collect()
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        self.children.iter_mut().find(|(n, _)| n == name).map(|(_, m)| m)
    }
}
