//! `nnqd.Linear` and `nniqd.LinearReLU`: dynamically quantized linear layers (float in, float
//! out; the activations are quantized per call), on `qkernels::dynamic`, PyTorch 2.15's FBGEMM
//! numbers bit for bit.

use std::sync::Mutex;

use ndarray::{ArrayD, IxDyn};
use qkernels::dynamic::{DynamicScratch, PackedF16Weights, linear_dynamic, linear_fp16};
use qkernels::gemm::PackedWeights;
use qobserve::{CarriedDType, ObserverSpec};
use serde::{Deserialize, Serialize};

use super::weighted::QuantizedWeight;
use crate::nn::{self, Linear, LinearOptions};
use crate::qconfig::QConfig;
use crate::record::{Record, TensorView};
use crate::{GraphError, GraphResult, Module, Value, invalid, memory};

/// The weight of a dynamic linear layer: qint8 (per tensor or per channel) or float16.
#[derive(Debug, Clone)]
enum DynWeight {
    Int8 { weight: QuantizedWeight, packed: Box<PackedWeights> },
    F16 { weight: ArrayD<f32>, packed: PackedF16Weights },
}

/// A dynamically quantized linear layer, `DynamicQuantizedLinear` or (with a fused ReLU)
/// `DynamicQuantizedLinearReLU`: f32 `[*, in_features]` in (rank 2 or more, as PyTorch's FBGEMM
/// op requires), f32 `[*, out_features]` out. qint8 weights run `quantized::linear_dynamic` with
/// `reduce_range=True` (what the nnqd modules pass); float16 weights run
/// `quantized::linear_dynamic_fp16`.
///
/// ```
/// use qgraph::nn::Linear;
/// use qgraph::qconfig::{default_dynamic_qconfig, float16_dynamic_qconfig};
/// use qgraph::quantized::DynamicQuantizedLinear;
/// use qgraph::{Module, Value};
/// let linear = Linear::new(4, 3, true);
/// let q = DynamicQuantizedLinear::from_float(&linear, &default_dynamic_qconfig(), false)?;
/// assert_eq!(
///     (&q as &dyn Module).to_string(),
///     "DynamicQuantizedLinear(in_features=4, out_features=3, dtype=torch.qint8, qscheme=torch.per_tensor_affine)"
/// );
/// let y = q.forward(Value::from(ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[2, 4]))))?;
/// assert_eq!(y.shape()?, &[2, 3]);
/// let h = DynamicQuantizedLinear::from_float(&linear, &float16_dynamic_qconfig(), true)?;
/// assert_eq!((&h as &dyn Module).to_string(), "DynamicQuantizedLinearReLU(in_features=4, out_features=3, dtype=torch.float16)");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug)]
pub struct DynamicQuantizedLinear {
    options: LinearOptions,
    relu: bool,
    weight: DynWeight,
    bias: Option<ArrayD<f32>>,
    type_name: &'static str,
    /// Reused by calls that do not overlap (a concurrent call takes a fresh one).
    scratch: Mutex<DynamicScratch>,
}

impl Clone for DynamicQuantizedLinear {
    fn clone(&self) -> Self {
        Self {
            options: self.options,
            relu: self.relu,
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            type_name: self.type_name,
            scratch: Mutex::default(),
        }
    }
}

/// What a dynamic linear layer saves besides its tensors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct DynamicLinearConfig {
    options: LinearOptions,
    relu: bool,
    /// `"qint8"` or `"float16"`.
    dtype: DynDType,
    per_channel: bool,
}

/// The weight dtype of a dynamic layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DynDType {
    Qint8,
    Float16,
}

/// The weight dtype a qconfig's weight observer asks for: qint8 or float16, as PyTorch's
/// `from_float` accepts ("The only supported dtypes for dynamic quantized linear are qint8 and
/// float16").
pub(crate) fn weight_dtype(spec: &ObserverSpec) -> GraphResult<DynDType> {
    let dtype = match spec {
        ObserverSpec::Placeholder { dtype, .. } | ObserverSpec::Noop { dtype, .. } => *dtype,
        _ => match spec.args() {
            Some(a) => CarriedDType::Quantized(a.dtype),
            None => CarriedDType::Float32,
        },
    };
    match dtype {
        CarriedDType::Quantized(qobserve::QDType::QInt8) => Ok(DynDType::Qint8),
        CarriedDType::Float16 => Ok(DynDType::Float16),
        other => Err(invalid(
            "DynamicQuantizedLinear::from_float",
            "weight observer dtype",
            other,
            "dynamic quantized linear takes qint8 or float16 weights; use default_dynamic_qconfig(), \
             per_channel_dynamic_qconfig() or float16_dynamic_qconfig()",
        )),
    }
}

impl DynamicQuantizedLinear {
    /// As PyTorch's `from_float`: the qconfig's weight observer sees the weight once; qint8
    /// weights are quantized with its parameters (`_quantize_weight`, then `_clamp_weights`),
    /// float16 weights are kept as f32 and rounded when packed (saturated to ±65504). `relu`
    /// makes the `DynamicQuantizedLinearReLU` form.
    ///
    /// Errors: a weight observer of another dtype.
    pub fn from_float(linear: &Linear, qconfig: &QConfig, relu: bool) -> GraphResult<Self> {
        let weight = match weight_dtype(&qconfig.weight)? {
            DynDType::Qint8 => Err(QuantizedWeight::from_observer(linear.weight(), &qconfig.weight)?),
            DynDType::Float16 => Ok(linear.weight().clone()),
        };
        Self::from_parts(linear.in_features(), linear.out_features(), relu, weight, linear.bias().cloned())
    }

    /// A layer from its parts: `Err(qint8 weight)` or `Ok(float16 weight as f32)` (the `Result`
    /// only as an either), and the bias. Packs for the active tier.
    pub(crate) fn from_parts(
        in_features: usize,
        out_features: usize,
        relu: bool,
        weight: Result<ArrayD<f32>, QuantizedWeight>,
        bias: Option<ArrayD<f32>>,
    ) -> GraphResult<Self> {
        const CONTEXT: &str = "DynamicQuantizedLinear";
        let shape = [out_features, in_features];
        let actual = match &weight {
            Ok(w) => w.shape().to_vec(),
            Err(q) => q.int().shape().to_vec(),
        };
        let bias = nn::check_weight_bias(CONTEXT, &actual, &shape, bias)?;
        let bias_slice = bias.as_ref().map(|b| b.as_slice().expect("standard layout"));
        let weight = match weight {
            Err(weight) => {
                let packed = PackedWeights::new(
                    weight.int_slice(),
                    out_features,
                    in_features,
                    &weight.kernel_qparams(),
                    bias_slice,
                )?;
                DynWeight::Int8 { weight, packed: Box::new(packed) }
            }
            Ok(w) => {
                let w = w.as_standard_layout().into_owned();
                let packed = PackedF16Weights::new(
                    w.as_slice().expect("standard layout"),
                    out_features,
                    in_features,
                    bias_slice,
                )?;
                DynWeight::F16 { weight: w, packed }
            }
        };
        let type_name = if relu { "DynamicQuantizedLinearReLU" } else { "DynamicQuantizedLinear" };
        let options = LinearOptions { in_features, out_features, bias: bias.is_some() };
        Ok(Self { options, relu, weight, bias, type_name, scratch: Mutex::default() })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.options.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.options.out_features
    }

    /// The qint8 weight, or `None` for float16 weights.
    pub fn quantized_weight(&self) -> Option<&QuantizedWeight> {
        match &self.weight {
            DynWeight::Int8 { weight, .. } => Some(weight),
            DynWeight::F16 { .. } => None,
        }
    }

    /// The float bias, if any.
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.bias.as_ref()
    }

    /// True with the fused ReLU.
    pub fn relu(&self) -> bool {
        self.relu
    }

    /// The dynamic form of a fused `LinearReLU` (`DynamicQuantizedLinearReLU`); its first module
    /// must be the library's `Linear`.
    pub fn from_fused(fused: &nn::Fused, qconfig: &QConfig) -> GraphResult<Self> {
        let linear = fused.base().downcast_ref::<Linear>().ok_or_else(|| GraphError::Workflow {
            step: "quantize_dynamic",
            reason: "the first module of LinearReLU is not the library's Linear".to_string(),
        })?;
        Self::from_float(linear, qconfig, true)
    }

    /// Rebuilds a saved layer, re-packing its weights.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: DynamicLinearConfig = record.config()?;
        let o = c.options;
        let t = &record.tensors;
        let shape = [o.out_features, o.in_features];
        let weight = match c.dtype {
            DynDType::Qint8 => Err(QuantizedWeight::from_tensors(t, &shape, c.per_channel)?),
            DynDType::Float16 => Ok(t.shaped::<f32>("weight", &shape)?),
        };
        let bias = if o.bias { Some(t.shaped::<f32>("bias", &shape[..1])?) } else { None };
        Self::from_parts(o.in_features, o.out_features, c.relu, weight, bias)
    }

    fn run(&self, x: ArrayD<f32>) -> GraphResult<ArrayD<f32>> {
        self.options.check_input(self.type_name, x.shape())?;
        if x.ndim() < 2 {
            return Err(invalid(
                self.type_name,
                "input rank",
                x.ndim(),
                "PyTorch's dynamic linear needs input.dim() >= 2; add a batch dimension",
            ));
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank checked") = self.options.out_features;
        let m: usize = shape[..shape.len() - 1].iter().product();
        let x = x.as_standard_layout();
        let mut out = memory::zeroed::<f32>(self.type_name, &shape)?;
        self.run_into(x.as_slice().expect("standard layout"), m, &mut out)?;
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("m x n"))
    }

    /// The layer on `m` rows: `x` is `m x in_features`, `out` `m x out_features`, both row-major.
    /// Reuses the layer's scratch (after the first call of a shape, no allocation).
    pub(crate) fn run_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> GraphResult<()> {
        match &self.weight {
            DynWeight::Int8 { packed, .. } => {
                let mut guard = self.scratch.try_lock();
                let mut fresh = DynamicScratch::default();
                let scratch = match guard.as_deref_mut() {
                    Ok(s) => s,
                    Err(_) => &mut fresh,
                };
                linear_dynamic(x, m, packed, true, self.relu, out, scratch)?;
            }
            DynWeight::F16 { packed, .. } => linear_fp16(x, m, packed, self.relu, out)?,
        }
        Ok(())
    }
}

impl Module for DynamicQuantizedLinear {
    fn type_name(&self) -> &str {
        self.type_name
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float(self.type_name)?;
        Ok(Value::Float(self.run(x)?))
    }

    fn extra_repr(&self) -> String {
        let o = self.options;
        match &self.weight {
            DynWeight::Int8 { weight, .. } => format!(
                "in_features={}, out_features={}, dtype=torch.qint8, qscheme={}",
                o.in_features,
                o.out_features,
                weight.qscheme()
            ),
            DynWeight::F16 { .. } => {
                format!("in_features={}, out_features={}, dtype=torch.float16", o.in_features, o.out_features)
            }
        }
    }

    fn config(&self) -> serde_json::Value {
        let (dtype, per_channel) = match &self.weight {
            DynWeight::Int8 { weight, .. } => (DynDType::Qint8, weight.is_per_channel()),
            DynWeight::F16 { .. } => (DynDType::Float16, false),
        };
        let c = DynamicLinearConfig { options: self.options, relu: self.relu, dtype, per_channel };
        serde_json::to_value(c).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        let mut t = match &self.weight {
            DynWeight::Int8 { weight, .. } => weight.tensors(),
            DynWeight::F16 { weight, .. } => vec![("weight".to_string(), TensorView::F32(weight.view()))],
        };
        if let Some(b) = &self.bias {
            t.push(("bias".to_string(), TensorView::F32(b.view())));
        }
        t
    }
}
