//! Fused float modules (PyTorch's `torch.ao.nn.intrinsic` `_FusedModule`s): a sequence of a
//! weighted layer and its activation, run in order, that `convert` turns into one quantized
//! module.

use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::{GraphError, GraphResult, Module, Value};

/// What a [`Fused`] module holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FusedKind {
    /// `ConvReLU{n}d`: a convolution of `n` spatial dimensions and `ReLU`.
    ConvReLU(usize),
    /// `ConvReLU6_{n}d` (an extension; PyTorch has no such fusion): a convolution and `ReLU6`.
    ConvReLU6(usize),
    /// `LinearReLU`.
    LinearReLU,
    /// `LinearReLU6` (an extension).
    LinearReLU6,
    /// `BNReLU{n}d` (n = 2 or 3): a batch norm and `ReLU`.
    BNReLU(usize),
    /// `ConvBn{n}d`: a convolution and its batch norm, kept apart for quantization-aware training
    /// (`fuse_modules_qat`), where the QAT module folds them at every step.
    ConvBn(usize),
    /// `ConvBnReLU{n}d`: a convolution, its batch norm and `ReLU`, for quantization-aware training.
    ConvBnReLU(usize),
    /// `LinearBn1d`: a linear layer and its `BatchNorm1d`, kept apart for quantization-aware
    /// training (`fuse_modules_qat`), where the QAT module folds them at every step.
    LinearBn1d,
}

impl FusedKind {
    /// The class name: `ConvReLU2d`, `ConvReLU6_2d`, `LinearReLU`, `LinearReLU6`, `BNReLU2d`.
    pub fn type_name(&self) -> String {
        match self {
            FusedKind::ConvReLU(n) => format!("ConvReLU{n}d"),
            FusedKind::ConvReLU6(n) => format!("ConvReLU6_{n}d"),
            FusedKind::LinearReLU => "LinearReLU".to_string(),
            FusedKind::LinearReLU6 => "LinearReLU6".to_string(),
            FusedKind::BNReLU(n) => format!("BNReLU{n}d"),
            FusedKind::ConvBn(n) => format!("ConvBn{n}d"),
            FusedKind::ConvBnReLU(n) => format!("ConvBnReLU{n}d"),
            FusedKind::LinearBn1d => "LinearBn1d".to_string(),
        }
    }

    /// The class names of the parts, in order.
    pub fn part_names(&self) -> Vec<String> {
        let act = if self.is_relu6() { "ReLU6" } else { "ReLU" }.to_string();
        match *self {
            FusedKind::ConvReLU(n) | FusedKind::ConvReLU6(n) => vec![format!("Conv{n}d"), act],
            FusedKind::LinearReLU | FusedKind::LinearReLU6 => vec!["Linear".to_string(), act],
            FusedKind::BNReLU(n) => vec![format!("BatchNorm{n}d"), act],
            FusedKind::ConvBn(n) => vec![format!("Conv{n}d"), format!("BatchNorm{n}d")],
            FusedKind::ConvBnReLU(n) => vec![format!("Conv{n}d"), format!("BatchNorm{n}d"), act],
            FusedKind::LinearBn1d => vec!["Linear".to_string(), "BatchNorm1d".to_string()],
        }
    }

    /// True if the last part is an activation (every kind but `ConvBn` and `LinearBn1d`).
    pub fn has_activation(&self) -> bool {
        !matches!(self, FusedKind::ConvBn(_) | FusedKind::LinearBn1d)
    }

    /// True if the activation is ReLU6.
    pub fn is_relu6(&self) -> bool {
        matches!(self, FusedKind::ConvReLU6(_) | FusedKind::LinearReLU6)
    }
}

/// A fused module: `Sequential`-like with children `"0"` (the conv, linear or batch norm),
/// `"1"` (the activation, or the batch norm of `ConvBn*`) and `"2"` (the activation of
/// `ConvBnReLU*`), printed as PyTorch prints `ConvReLU2d`.
///
/// ```
/// use qgraph::Module;
/// use qgraph::nn::{Conv2d, Fused, FusedKind, ReLU};
/// let conv = Conv2d::new(3, 8, [3, 3]).build()?;
/// let fused = Fused::new(FusedKind::ConvReLU(2), Box::new(conv), Box::new(ReLU::new()))?;
/// assert_eq!(
///     (&fused as &dyn Module).to_string(),
///     "ConvReLU2d(\n  (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))\n  (1): ReLU()\n)"
/// );
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Fused {
    kind: FusedKind,
    type_name: String,
    parts: Vec<(String, Box<dyn Module>)>,
    training: bool,
}

impl Fused {
    /// Fuses `base` (a `Conv`, `Linear` or `BatchNorm` matching `kind`) with `activation`
    /// (`ReLU` or `ReLU6` as `kind` says).
    pub fn new(kind: FusedKind, base: Box<dyn Module>, activation: Box<dyn Module>) -> GraphResult<Self> {
        Self::from_parts(kind, vec![base, activation])
    }

    /// Fuses `parts`, whose classes must be `kind`'s [`part_names`](FusedKind::part_names) in
    /// order (e.g. `Conv2d`, `BatchNorm2d`, `ReLU` for `ConvBnReLU2d`); they are named `"0"`,
    /// `"1"`, ... as in PyTorch's fused `Sequential`s.
    pub fn from_parts(kind: FusedKind, parts: Vec<Box<dyn Module>>) -> GraphResult<Self> {
        let names: Vec<&str> = parts.iter().map(|m| m.type_name()).collect();
        let expected = kind.part_names();
        if names != expected {
            return Err(GraphError::Fusion {
                modules: names.iter().map(|s| s.to_string()).collect(),
                reason: format!("{} holds {}", kind.type_name(), expected.join(" and ")),
            });
        }
        let training = parts[0].training();
        let parts = parts.into_iter().enumerate().map(|(i, m)| (i.to_string(), m)).collect();
        Ok(Self { kind, type_name: kind.type_name(), parts, training })
    }

    /// What it fuses.
    pub fn kind(&self) -> FusedKind {
        self.kind
    }

    /// The parts, in order, with their names `"0"`, `"1"`.
    pub fn parts(&self) -> &[(String, Box<dyn Module>)] {
        &self.parts
    }

    /// The conv, linear or batch norm.
    pub fn base(&self) -> &dyn Module {
        self.parts[0].1.as_ref()
    }

    /// The activation (none for `ConvBn`).
    pub fn activation(&self) -> Option<&dyn Module> {
        self.kind.has_activation().then(|| self.parts[self.parts.len() - 1].1.as_ref())
    }

    /// Rebuilds a saved fused module from its rebuilt children.
    pub fn from_record(mut record: Record<'_>) -> GraphResult<Self> {
        let kind: FusedKind = record.config()?;
        let parts = (0..kind.part_names().len())
            .map(|i| record.take_child(&i.to_string()))
            .collect::<GraphResult<Vec<_>>>()?;
        let mut fused = Self::from_parts(kind, parts)?;
        fused.training = false;
        Ok(fused)
    }
}

impl Module for Fused {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        self.parts.iter().try_fold(input, |x, (name, m)| m.forward(x).map_err(|e| e.within(name)))
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        self.parts.iter().map(|(n, m)| (n.as_str(), m.as_ref())).collect()
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        self.parts.iter_mut().find(|(n, _)| n == name).map(|(_, m)| m)
    }

    training_field!();

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self.kind).expect("plain data")
    }
}
