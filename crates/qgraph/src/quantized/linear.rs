//! `nnq.Linear` and `nniq.LinearReLU`: int8 GEMM on quint8 rows with qint8 weights and a float
//! bias, on `qkernels::gemm`.

use ndarray::{ArrayD, IxDyn};
use qkernels::elementwise::PerTensor;
use qkernels::gemm::{Output, PackedWeights, gemm};
use qobserve::ObserverSpec;

use super::weighted::{QuantizedAct, QuantizedWeight, WeightedConfig, WeightedParts, weighted_accessors};
use crate::nn::{Linear, LinearOptions};
use crate::record::{Record, TensorView};
use crate::value::{QuantTensor, to_channels_last};
use crate::{GraphResult, Module, Value, memory};

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
    parts: WeightedParts,
    packed: PackedWeights,
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
        Self::with_weight(
            linear,
            act,
            QuantizedWeight::from_observer(linear.weight(), weight_observer)?,
            out_q,
        )
    }

    /// `linear` with its weight quantized elsewhere (a QAT layer's fake quantizer chose the
    /// parameters) and its float bias.
    pub fn with_weight(
        linear: &Linear,
        act: QuantizedAct,
        weight: QuantizedWeight,
        out_q: PerTensor,
    ) -> GraphResult<Self> {
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
        let shape = [out_features, in_features];
        let parts = WeightedParts::new("QuantizedLinear", &shape, act, weight, bias, out_q)?;
        let packed = PackedWeights::new(
            parts.weight.int_slice(),
            out_features,
            in_features,
            &parts.weight.kernel_qparams(),
            parts.bias_slice(),
        )?;
        let options = LinearOptions { in_features, out_features, bias: parts.bias.is_some() };
        let type_name = match act {
            QuantizedAct::None => "QuantizedLinear",
            QuantizedAct::Relu => "QuantizedLinearReLU",
            QuantizedAct::Relu6 => "QuantizedLinearReLU6",
        };
        Ok(Self { options, parts, packed, type_name })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.options.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.options.out_features
    }

    weighted_accessors!("[out_features, in_features]");

    /// Rebuilds a saved quantized linear layer, re-packing its weights.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: WeightedConfig<LinearOptions> = record.config()?;
        let o = c.options;
        let (weight, bias) = c.read_tensors(&record.tensors, &[o.out_features, o.in_features], o.bias)?;
        Self::from_parts(o.in_features, o.out_features, c.act, weight, bias, c.out_q())
    }

    fn run(&self, x: QuantTensor) -> GraphResult<QuantTensor> {
        self.options.check_input(self.type_name, x.shape())?;
        let in_q = x.qparams();
        let pipeline = self
            .parts
            .pipeline(in_q, |a, a_zp, o, o_zp, relu| self.packed.output_u8(a, a_zp, o, o_zp, relu))?;
        let n = self.options.out_features;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank checked") = n;
        // Rank <= 2 is stored as it is; higher ranks are channels-last, so go through the
        // logical row-major order where features are the last axis.
        let rows_in =
            if x.shape().len() <= 2 { x.into_data() } else { x.int_repr().iter().copied().collect() };
        let m: usize = shape[..shape.len() - 1].iter().product();
        let mut out = memory::reserved("QuantizedLinear", &shape)?;
        if m > 0 {
            gemm(&rows_in, m, &self.packed, &pipeline, Output::AppendU8(&mut out))?;
        }
        let out = if shape.len() <= 2 {
            out
        } else {
            to_channels_last(&ArrayD::from_shape_vec(IxDyn(&shape), out).expect("m x n"))
        };
        QuantTensor::new(out, shape, self.parts.out_q)
    }
}

impl Module for QuantizedLinear {
    quantized_forward!();

    fn extra_repr(&self) -> String {
        format!(
            "in_features={}, out_features={}, {}, qscheme={}",
            self.options.in_features,
            self.options.out_features,
            self.parts.out_repr(),
            self.parts.weight.qscheme()
        )
    }

    fn config(&self) -> serde_json::Value {
        self.parts.config(self.options)
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.parts.tensors()
    }
}
