//! `nnq.Linear` and `nniq.LinearReLU`: int8 GEMM on quint8 rows with qint8 weights and a float
//! bias, on `qkernels::gemm`.

use ndarray::{ArrayD, IxDyn};
use qkernels::elementwise::PerTensor;
use qkernels::gemm::{Output, OutputPipeline, PackedWeights, gemm};
use qobserve::ObserverSpec;
use serde::{Deserialize, Serialize};

use super::weighted::{PerInputCache, QuantizedAct, QuantizedWeight, check_out_q, u8_params};
use crate::nn::{Linear, LinearOptions, check_shape};
use crate::record::{Record, TensorView};
use crate::value::{QuantTensor, to_channels_last};
use crate::{GraphResult, Module, Value};

/// What a quantized linear layer saves besides its tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuantizedLinearConfig {
    options: LinearOptions,
    act: QuantizedAct,
    scale: f64,
    zero_point: i64,
    per_channel: bool,
}

/// A quantized linear layer (`QuantizedLinear`, `QuantizedLinearReLU`, `QuantizedLinearReLU6`):
/// quint8 `[*, in_features]` in, quint8 `[*, out_features]` out, FBGEMM's arithmetic bit for bit.
///
/// ```
/// use qgraph::nn::Linear;
/// use qgraph::quantized::{QuantizedAct, QuantizedLinear};
/// use qgraph::Module;
/// use qkernels::elementwise::PerTensor;
/// let linear = Linear::new(16, 10, true);
/// let spec = qobserve::defaults::default_per_channel_weight_observer();
/// let q = QuantizedLinear::from_float(&linear, QuantizedAct::None, &spec, PerTensor::new(0.004778733476996422, 48))?;
/// assert_eq!(
///     (&q as &dyn Module).to_string(),
///     "QuantizedLinear(in_features=16, out_features=10, scale=0.004778733476996422, zero_point=48, qscheme=torch.per_channel_affine)"
/// );
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedLinear {
    options: LinearOptions,
    act: QuantizedAct,
    weight: QuantizedWeight,
    bias: Option<ArrayD<f32>>,
    out_q: PerTensor,
    packed: PackedWeights,
    pipeline: PerInputCache<OutputPipeline>,
    type_name: &'static str,
}

impl QuantizedLinear {
    /// Quantizes a float (already folded) linear layer as PyTorch's `from_float`: see
    /// [`QuantizedConv::from_float`](super::QuantizedConv::from_float).
    pub fn from_float(
        linear: &Linear,
        act: QuantizedAct,
        weight_observer: &ObserverSpec,
        out_q: PerTensor,
    ) -> GraphResult<Self> {
        let weight = QuantizedWeight::from_observer(linear.weight(), weight_observer)?;
        Self::from_parts(
            linear.in_features(),
            linear.out_features(),
            act,
            weight,
            linear.bias().cloned(),
            out_q,
        )
    }

    /// A quantized linear layer from its parts (packs the weights for the active tier).
    pub fn from_parts(
        in_features: usize,
        out_features: usize,
        act: QuantizedAct,
        weight: QuantizedWeight,
        bias: Option<ArrayD<f32>>,
        out_q: PerTensor,
    ) -> GraphResult<Self> {
        check_out_q(out_q)?;
        check_shape("QuantizedLinear", "weight", weight.int().shape(), &[out_features, in_features])?;
        let bias = bias.map(|b| b.as_standard_layout().into_owned());
        if let Some(b) = &bias {
            check_shape("QuantizedLinear", "bias", b.shape(), &[out_features])?;
        }
        let packed = PackedWeights::new(
            weight.int_slice(),
            out_features,
            in_features,
            &weight.kernel_qparams(),
            bias.as_ref().map(|b| b.as_slice().expect("standard layout")),
        )?;
        let options = LinearOptions { in_features, out_features, bias: bias.is_some() };
        let type_name = match act {
            QuantizedAct::None => "QuantizedLinear",
            QuantizedAct::Relu => "QuantizedLinearReLU",
            QuantizedAct::Relu6 => "QuantizedLinearReLU6",
        };
        Ok(Self { options, act, weight, bias, out_q, packed, pipeline: PerInputCache::default(), type_name })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.options.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.options.out_features
    }

    /// The fused activation.
    pub fn act(&self) -> QuantizedAct {
        self.act
    }

    /// The qint8 weight integers `[out_features, in_features]`.
    pub fn weight_int(&self) -> &ArrayD<i8> {
        self.weight.int()
    }

    /// The weight with its scales and zero points.
    pub fn weight_qparams(&self) -> &QuantizedWeight {
        &self.weight
    }

    /// The float bias, if any.
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.bias.as_ref()
    }

    /// The output scale.
    pub fn scale(&self) -> f64 {
        self.out_q.scale
    }

    /// The output zero point.
    pub fn zero_point(&self) -> i64 {
        self.out_q.zero_point
    }

    /// Rebuilds a saved quantized linear layer, re-packing its weights.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: QuantizedLinearConfig = record.config()?;
        let o = c.options;
        let t = &record.tensors;
        let weight = QuantizedWeight::from_tensors(t, &[o.out_features, o.in_features], c.per_channel)?;
        let bias = if o.bias { Some(t.shaped::<f32>("bias", &[o.out_features])?) } else { None };
        Self::from_parts(
            o.in_features,
            o.out_features,
            c.act,
            weight,
            bias,
            PerTensor::new(c.scale, c.zero_point),
        )
    }

    fn run(&self, x: QuantTensor) -> GraphResult<QuantTensor> {
        self.options.check_input(self.type_name, x.shape())?;
        let in_q = x.qparams();
        let pipeline = self.pipeline.get(in_q, || {
            let ((a_scale, a_zp), (o_scale, o_zp)) = (u8_params(in_q), u8_params(self.out_q));
            Ok(self.packed.output_u8(a_scale, a_zp, o_scale, o_zp, self.act.relu())?)
        })?;
        let n = self.options.out_features;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank checked") = n;
        // Rank <= 2 is stored as it is; higher ranks are channels-last, so go through the
        // logical row-major order where features are the last axis.
        let rows_in =
            if x.shape().len() <= 2 { x.into_data() } else { x.int_repr().iter().copied().collect() };
        let m: usize = shape[..shape.len() - 1].iter().product();
        let mut out = vec![0u8; m * n];
        if m > 0 {
            gemm(&rows_in, m, &self.packed, &pipeline, Output::U8(&mut out))?;
        }
        self.act.clamp_relu6(&mut out, self.out_q)?;
        let out = if shape.len() <= 2 {
            out
        } else {
            to_channels_last(&ArrayD::from_shape_vec(IxDyn(&shape), out).expect("m x n"))
        };
        QuantTensor::new(out, shape, self.out_q)
    }
}

impl Module for QuantizedLinear {
    fn type_name(&self) -> &str {
        self.type_name
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_quant(self.type_name)?;
        Ok(Value::Quant(self.run(x)?))
    }

    fn extra_repr(&self) -> String {
        format!(
            "in_features={}, out_features={}, scale={}, zero_point={}, qscheme={}",
            self.options.in_features,
            self.options.out_features,
            qcore::python_float_repr(self.out_q.scale),
            self.out_q.zero_point,
            self.weight.qscheme()
        )
    }

    fn config(&self) -> serde_json::Value {
        let config = QuantizedLinearConfig {
            options: self.options,
            act: self.act,
            scale: self.out_q.scale,
            zero_point: self.out_q.zero_point,
            per_channel: self.weight.is_per_channel(),
        };
        serde_json::to_value(config).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        let mut t = self.weight.tensors();
        t.extend(self.bias.as_ref().map(|b| ("bias".to_string(), TensorView::F32(b.view()))));
        t
    }
}
