//! `nnq.Conv1d/2d/3d` and `nniq.ConvReLU1d/2d/3d`: int8 convolution on quint8 channels-last
//! activations with qint8 weights and a float bias, on `qkernels::conv`.

use ndarray::ArrayD;
use qkernels::conv::PackedConv;
use qkernels::elementwise::PerTensor;
use qkernels::gemm::Output;
use qobserve::ObserverSpec;

use super::weighted::{QuantizedAct, QuantizedWeight, WeightedConfig, WeightedParts, weighted_accessors};
use crate::nn::{Conv, ConvOptions};
use crate::record::{Record, TensorView};
use crate::value::QuantTensor;
use crate::{GraphResult, Module, Value, memory};

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
/// assert_eq!(y.shape()?, &[1, 16, 8, 8]);
/// assert!((&q as &dyn Module).to_string().starts_with("QuantizedConvReLU2d(3, 16, kernel_size=(3, 3)"));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedConv {
    options: ConvOptions,
    parts: WeightedParts,
    packed: PackedConv,
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
        Self::with_weight(conv, act, QuantizedWeight::from_observer(conv.weight(), weight_observer)?, out_q)
    }

    /// `conv` with its weight quantized elsewhere (a QAT layer's fake quantizer chose the
    /// parameters) and its float bias.
    pub fn with_weight(
        conv: &Conv,
        act: QuantizedAct,
        weight: QuantizedWeight,
        out_q: PerTensor,
    ) -> GraphResult<Self> {
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
        let parts =
            WeightedParts::new(options.type_name(), &options.weight_shape(), act, weight, bias, out_q)?;
        let packed = PackedConv::new(
            options.kernel_params(),
            parts.weight.int_slice(),
            &parts.weight.kernel_qparams(),
            parts.bias_slice(),
        )?;
        let sep = if act == QuantizedAct::Relu6 { "_" } else { "" };
        let type_name = format!("QuantizedConv{}{sep}{}d", act.suffix(), options.dims());
        let options = ConvOptions { bias: parts.bias.is_some(), ..options };
        Ok(Self { options, parts, packed, type_name })
    }

    /// The options (as the float layer's).
    pub fn options(&self) -> &ConvOptions {
        &self.options
    }

    weighted_accessors!("[out, in / groups, *kernel]");

    /// Rebuilds a saved quantized convolution, re-packing its weights.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: WeightedConfig<ConvOptions> = record.config()?;
        c.options.validate()?;
        let (weight, bias) = c.read_tensors(&record.tensors, &c.options.weight_shape(), c.options.bias)?;
        let out_q = c.out_q();
        Self::from_parts(c.options, c.act, weight, bias, out_q)
    }

    fn run(&self, x: QuantTensor) -> GraphResult<QuantTensor> {
        self.options.check_input(x.shape())?;
        let in_q = x.qparams();
        let pipeline = self
            .parts
            .pipeline(in_q, |a, a_zp, o, o_zp, relu| self.packed.output_u8(a, a_zp, o, o_zp, relu))?;
        let (batch, in_spatial) = (x.shape()[0], &x.shape()[2..]);
        let out_spatial = self.packed.params().output_spatial(in_spatial)?;
        let mut shape = vec![batch, self.options.out_channels];
        shape.extend_from_slice(&out_spatial);
        let mut out = memory::reserved(self.options.type_name(), &shape)?;
        // An empty batch has an empty output, as in PyTorch (the kernel takes at least one image).
        if batch > 0 {
            self.packed.run(x.data(), batch, in_spatial, &pipeline, Output::AppendU8(&mut out))?;
        }
        QuantTensor::new(out, shape, self.parts.out_q)
    }
}

impl Module for QuantizedConv {
    quantized_forward!();

    fn extra_repr(&self) -> String {
        format!("{}, {}{}", self.options.repr_head(), self.parts.out_repr(), self.options.repr_tail())
    }

    fn config(&self) -> serde_json::Value {
        self.parts.config(&self.options)
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.parts.tensors()
    }
}
