//! `nnq.Conv1d/2d/3d` and `nniq.ConvReLU1d/2d/3d`: int8 convolution on quint8 channels-last
//! activations with qint8 weights and a float bias, on `qkernels::conv`.

use ndarray::ArrayD;
use qkernels::conv::PackedConv;
use qkernels::elementwise::PerTensor;
use qkernels::gemm::{Output, OutputPipeline};
use qobserve::ObserverSpec;
use serde::{Deserialize, Serialize};

use super::weighted::{PerInputCache, QuantizedAct, QuantizedWeight, check_out_q, u8_params};
use crate::nn::{Conv, ConvOptions, check_shape};
use crate::record::{Record, TensorView};
use crate::value::QuantTensor;
use crate::{GraphResult, Module, Value};

/// What a quantized convolution saves besides its tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuantizedConvConfig {
    options: ConvOptions,
    act: QuantizedAct,
    scale: f64,
    zero_point: i64,
    per_channel: bool,
}

/// A quantized convolution (`QuantizedConv2d`, `QuantizedConvReLU2d`, `QuantizedConvReLU6_2d`, for
/// 1-3 spatial dimensions): quint8 `[N, C, spatial...]` in, quint8 out with its own scale and
/// zero point, FBGEMM's arithmetic bit for bit.
///
/// ```
/// use qgraph::nn::Conv2d;
/// use qgraph::quantized::{QuantizedAct, QuantizedConv};
/// use qgraph::{Module, QuantTensor, Value};
/// use qkernels::elementwise::PerTensor;
/// let conv = Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build()?;
/// let spec = qobserve::defaults::default_per_channel_weight_observer();
/// let q = QuantizedConv::from_float(&conv, QuantizedAct::Relu, &spec, PerTensor::new(0.05, 0))?;
/// let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[1, 3, 8, 8]));
/// let y = q.forward(Value::Quant(QuantTensor::quantize(&x, PerTensor::new(0.1, 10))?))?;
/// assert_eq!(y.shape(), &[1, 16, 8, 8]);
/// assert!((&q as &dyn Module).to_string().starts_with("QuantizedConvReLU2d(3, 16, kernel_size=(3, 3)"));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedConv {
    options: ConvOptions,
    act: QuantizedAct,
    weight: QuantizedWeight,
    bias: Option<ArrayD<f32>>,
    out_q: PerTensor,
    packed: PackedConv,
    pipeline: PerInputCache<OutputPipeline>,
    type_name: String,
}

impl QuantizedConv {
    /// Quantizes a float (already batch-norm-folded) convolution as PyTorch's `from_float`: the
    /// weight observer built from `weight_observer` sees the weight once and gives its qint8
    /// parameters (see [`QuantizedWeight::from_observer`]); the bias stays float; `out_q` is the
    /// output's scale and zero point (from the activation observer).
    pub fn from_float(
        conv: &Conv,
        act: QuantizedAct,
        weight_observer: &ObserverSpec,
        out_q: PerTensor,
    ) -> GraphResult<Self> {
        let weight = QuantizedWeight::from_observer(conv.weight(), weight_observer)?;
        Self::from_parts(conv.options().clone(), act, weight, conv.bias().cloned(), out_q)
    }

    /// A quantized convolution from its parts (packs the weights for the active tier).
    pub fn from_parts(
        options: ConvOptions,
        act: QuantizedAct,
        weight: QuantizedWeight,
        bias: Option<ArrayD<f32>>,
        out_q: PerTensor,
    ) -> GraphResult<Self> {
        options.validate()?;
        check_out_q(out_q)?;
        let name = options.type_name();
        check_shape(name, "weight", weight.int().shape(), &options.weight_shape())?;
        let bias = bias.map(|b| b.as_standard_layout().into_owned());
        if let Some(b) = &bias {
            check_shape(name, "bias", b.shape(), &[options.out_channels])?;
        }
        let packed = PackedConv::new(
            options.kernel_params(),
            weight.int_slice(),
            &weight.kernel_qparams(),
            bias.as_ref().map(|b| b.as_slice().expect("standard layout")),
        )?;
        let sep = if act == QuantizedAct::Relu6 { "_" } else { "" };
        let type_name = format!("QuantizedConv{}{sep}{}d", act.suffix(), options.dims());
        let options = ConvOptions { bias: bias.is_some(), ..options };
        Ok(Self { options, act, weight, bias, out_q, packed, pipeline: PerInputCache::default(), type_name })
    }

    /// The options (as the float layer's).
    pub fn options(&self) -> &ConvOptions {
        &self.options
    }

    /// The fused activation.
    pub fn act(&self) -> QuantizedAct {
        self.act
    }

    /// The qint8 weight integers `[out, in / groups, *kernel]`.
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

    /// Rebuilds a saved quantized convolution, re-packing its weights.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: QuantizedConvConfig = record.config()?;
        c.options.validate()?;
        let t = &record.tensors;
        let weight = QuantizedWeight::from_tensors(t, &c.options.weight_shape(), c.per_channel)?;
        let bias =
            if c.options.bias { Some(t.shaped::<f32>("bias", &[c.options.out_channels])?) } else { None };
        Self::from_parts(c.options, c.act, weight, bias, PerTensor::new(c.scale, c.zero_point))
    }

    fn run(&self, x: QuantTensor) -> GraphResult<QuantTensor> {
        self.options.check_input(x.shape())?;
        let in_q = x.qparams();
        let pipeline = self.pipeline.get(in_q, || {
            let ((a_scale, a_zp), (o_scale, o_zp)) = (u8_params(in_q), u8_params(self.out_q));
            Ok(self.packed.output_u8(a_scale, a_zp, o_scale, o_zp, self.act.relu())?)
        })?;
        let (batch, in_spatial) = (x.shape()[0], &x.shape()[2..]);
        let out_spatial = self.packed.params().output_spatial(in_spatial)?;
        let mut shape = vec![batch, self.options.out_channels];
        shape.extend_from_slice(&out_spatial);
        let mut out = vec![0u8; shape.iter().product()];
        self.packed.run(x.data(), batch, in_spatial, &pipeline, Output::U8(&mut out))?;
        self.act.clamp_relu6(&mut out, self.out_q)?;
        QuantTensor::new(out, shape, self.out_q)
    }
}

impl Module for QuantizedConv {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_quant(&self.type_name)?;
        Ok(Value::Quant(self.run(x)?))
    }

    fn extra_repr(&self) -> String {
        format!(
            "{}, scale={}, zero_point={}{}",
            self.options.repr_head(),
            qcore::python_float_repr(self.out_q.scale),
            self.out_q.zero_point,
            self.options.repr_tail()
        )
    }

    fn config(&self) -> serde_json::Value {
        let config = QuantizedConvConfig {
            options: self.options.clone(),
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
