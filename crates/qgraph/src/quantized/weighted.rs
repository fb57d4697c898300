//! What the quantized weighted layers share: the fused activation, qint8 weights quantized as
//! PyTorch's `_quantize_weight` + `_clamp_weights`, the cache of per-input output stages (with
//! the ReLU6 range), and the parts (weight, bias, output parameters) conv and linear hold, save
//! and expose alike.

use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, Axis, IxDyn};
use qcore::{AffineQuantizer, QDType, QParams, QScheme};
use qkernels::KernelResult;
use qkernels::elementwise::PerTensor;
use qkernels::gemm::{OutputPipeline, WeightQParams};
use qobserve::ObserverSpec;
use serde::{Deserialize, Serialize};

use crate::nn::check_weight_bias;
use crate::outq::OutQ;
use crate::record::{TensorView, Tensors};
use crate::{GraphError, GraphResult, invalid};

/// The activation fused into a quantized conv, linear or batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum QuantizedAct {
    /// None (`QuantizedConv2d`).
    #[default]
    None,
    /// ReLU (`QuantizedConvReLU2d`).
    Relu,
    /// ReLU6 (`QuantizedConvReLU6_2d`, an extension: the output is also clamped at the
    /// quantized 6.0).
    Relu6,
}

impl QuantizedAct {
    /// The part of the class name after the layer's name: `""`, `"ReLU"`, `"ReLU6"`.
    pub fn suffix(self) -> &'static str {
        match self {
            QuantizedAct::None => "",
            QuantizedAct::Relu => "ReLU",
            QuantizedAct::Relu6 => "ReLU6",
        }
    }

    /// True if the output stage floors at the zero point.
    pub(crate) fn relu(self) -> bool {
        self != QuantizedAct::None
    }

    /// The output ceiling of ReLU6 (the quantized 6.0 under `out_q`), which the output stage
    /// clamps to after the ReLU floor; `None` for the other activations.
    pub(crate) fn ceiling(self, out_q: PerTensor) -> GraphResult<Option<u8>> {
        if self != QuantizedAct::Relu6 {
            return Ok(None);
        }
        Ok(Some(AffineQuantizer::new(out_q.scale, out_q.zero_point, QDType::QUInt8)?.quantize(6.0) as u8))
    }
}

/// A qint8 weight with one scale and zero point per tensor or per output channel (axis 0).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    int: ArrayD<i8>,
    scales: ArrayD<f64>,
    zero_points: ArrayD<i64>,
    per_channel: bool,
}

impl QuantizedWeight {
    /// Quantizes `weight` (output channels on axis 0) as PyTorch's convert does: a fresh
    /// observer from `spec` sees the weight once, its `calculate_qparams` gives the parameters,
    /// `_quantize_weight` quantizes to qint8 and `_clamp_weights` clamps the integers into the
    /// observer's range when it is narrower than qint8's (e.g. -127..127).
    ///
    /// Errors: an observer that does not produce qint8 (PyTorch asserts "Weight observer must
    /// have a dtype of qint8"), per-channel parameters along another axis than 0, float zero
    /// points.
    pub fn from_observer(weight: &ArrayD<f32>, spec: &ObserverSpec) -> GraphResult<Self> {
        let range = weight_range(spec)?;
        let mut observer = spec.build()?;
        observer.observe(weight.view())?;
        Self::quantize(weight, observer.calculate_qparams()?, range)
    }

    /// Quantizes `weight` with parameters chosen elsewhere (a QAT module's weight fake quantizer)
    /// as `_quantize_weight` does, the integers clamped into `(qmin, qmax)` (`_clamp_weights`).
    pub fn quantize(weight: &ArrayD<f32>, qparams: QParams, (qmin, qmax): (i64, i64)) -> GraphResult<Self> {
        let (q, per_channel) = match &qparams {
            QParams::PerTensor { scale, zero_point } => {
                (qcore::quantize_per_tensor(weight, *scale, *zero_point, QDType::QInt8)?, false)
            }
            QParams::PerChannel { scales, zero_points, axis: 0 } => {
                (qcore::quantize_per_channel(weight, scales, zero_points, 0, QDType::QInt8)?, true)
            }
            QParams::PerChannel { axis, .. } => {
                return Err(invalid(
                    "quantize weight",
                    "ch_axis",
                    axis,
                    "quantized Conv and Linear take per-channel weights along the output channels: use ch_axis=0",
                ));
            }
            QParams::PerChannelFloat { .. } => {
                return Err(invalid(
                    "quantize weight",
                    "qscheme",
                    QScheme::PerChannelAffineFloatQParams,
                    "float zero points are for embeddings; use a per_channel_symmetric or per_tensor_symmetric \
                     weight observer",
                ));
            }
        };
        let int = q.int_repr().as_i8().expect("quantized to qint8").mapv(|v| {
            // `_clamp_weights`: only changes anything when the observer's range is narrower.
            (i64::from(v).clamp(qmin, qmax)) as i8
        });
        let (scales, zero_points) = match qparams {
            QParams::PerTensor { scale, zero_point } => (vec![scale], vec![zero_point]),
            QParams::PerChannel { scales, zero_points, .. } => (scales, zero_points),
            QParams::PerChannelFloat { .. } => unreachable!("refused above"),
        };
        Self::new(int, scales, zero_points, per_channel)
    }

    /// A weight from its integers and parameters (one scale for per-tensor, one per row of axis
    /// 0 for per-channel); zero points must lie in -128..=127 and scales be valid.
    pub fn new(
        int: ArrayD<i8>,
        scales: Vec<f64>,
        zero_points: Vec<i64>,
        per_channel: bool,
    ) -> GraphResult<Self> {
        const CONTEXT: &str = "quantized weight";
        let expected = if per_channel { int.shape().first().copied().unwrap_or(0) } else { 1 };
        for (what, got) in [("scale count", scales.len()), ("zero point count", zero_points.len())] {
            if got != expected {
                return Err(GraphError::ShapeMismatch { context: CONTEXT, what, got, expected });
            }
        }
        for (&s, &zp) in scales.iter().zip(&zero_points) {
            AffineQuantizer::new(s, zp, QDType::QInt8)?;
        }
        let n = scales.len();
        Ok(Self {
            int: int.as_standard_layout().into_owned(),
            scales: ArrayD::from_shape_vec(IxDyn(&[n]), scales).expect("length n"),
            zero_points: ArrayD::from_shape_vec(IxDyn(&[n]), zero_points).expect("length n"),
            per_channel,
        })
    }

    /// The integers, in the float weight's shape (PyTorch's `weight().int_repr()`).
    pub fn int(&self) -> &ArrayD<i8> {
        &self.int
    }

    /// The scales: one, or one per output channel.
    pub fn scales(&self) -> &[f64] {
        self.scales.as_slice().expect("standard layout")
    }

    /// The zero points: one, or one per output channel.
    pub fn zero_points(&self) -> &[i64] {
        self.zero_points.as_slice().expect("standard layout")
    }

    /// True for per-channel parameters.
    pub fn is_per_channel(&self) -> bool {
        self.per_channel
    }

    /// PyTorch's `weight().qscheme()`: `per_channel_affine` or `per_tensor_affine` (tensors hold
    /// affine parameters even when a symmetric observer chose them).
    pub fn qscheme(&self) -> QScheme {
        if self.per_channel { QScheme::PerChannelAffine } else { QScheme::PerTensorAffine }
    }

    /// The parameters as `qcore` holds them.
    pub fn qparams(&self) -> QParams {
        if self.per_channel {
            QParams::PerChannel {
                scales: self.scales().to_vec(),
                zero_points: self.zero_points().to_vec(),
                axis: 0,
            }
        } else {
            QParams::PerTensor { scale: self.scales()[0], zero_point: self.zero_points()[0] }
        }
    }

    /// The dequantized weight, `(q - zp) * scale` per channel.
    pub fn dequantize(&self) -> ArrayD<f32> {
        let mut out = self.int.mapv(f32::from);
        for (c, mut lane) in out.axis_iter_mut(Axis(0)).enumerate() {
            let i = if self.per_channel { c } else { 0 };
            let (s, zp) = (self.scales()[i], self.zero_points()[i]);
            lane.zip_mut_with(&self.int.index_axis(Axis(0), c), |o, &q| {
                *o = qcore::dequantize_val(s, zp, i32::from(q));
            });
        }
        out
    }

    /// The parameters for the `qkernels` packers.
    pub(crate) fn kernel_qparams(&self) -> WeightQParams {
        // Zero points were checked against qint8's range, so they fit i32.
        let zp = |z: i64| z as i32;
        if self.per_channel {
            WeightQParams::PerChannel {
                scales: self.scales().to_vec(),
                zero_points: self.zero_points().iter().map(|&z| zp(z)).collect(),
            }
        } else {
            WeightQParams::PerTensor { scale: self.scales()[0], zero_point: zp(self.zero_points()[0]) }
        }
    }

    /// The integers, row-major.
    pub(crate) fn int_slice(&self) -> &[i8] {
        self.int.as_slice().expect("standard layout")
    }

    /// `weight` (i8), `weight_scale` (f64), `weight_zero_point` (i64), for saving.
    pub(crate) fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        vec![
            ("weight".to_string(), TensorView::I8(self.int.view())),
            ("weight_scale".to_string(), TensorView::F64(self.scales.view())),
            ("weight_zero_point".to_string(), TensorView::I64(self.zero_points.view())),
        ]
    }

    /// Reads what [`QuantizedWeight::tensors`] saved, for a weight of `shape`.
    pub(crate) fn from_tensors(t: &Tensors<'_>, shape: &[usize], per_channel: bool) -> GraphResult<Self> {
        let int = t.shaped::<i8>("weight", shape)?;
        let count = if per_channel { shape[0] } else { 1 };
        let scales = t.shaped::<f64>("weight_scale", &[count])?.into_raw_vec_and_offset().0;
        let zero_points = t.shaped::<i64>("weight_zero_point", &[count])?.into_raw_vec_and_offset().0;
        Self::new(int, scales, zero_points, per_channel).map_err(|e| t.mismatch(e.to_string()))
    }
}

/// The `[quant_min, quant_max]` a weight observer quantizes to; an error unless it is qint8.
fn weight_range(spec: &ObserverSpec) -> GraphResult<(i64, i64)> {
    let (dtype, range) = match (spec, spec.args()) {
        (_, Some(a)) => {
            (a.dtype, qcore::calculate_qmin_qmax(a.quant_min, a.quant_max, a.dtype, a.reduce_range))
        }
        (ObserverSpec::FixedQParams { dtype, quant_min, quant_max, .. }, None) => {
            (*dtype, Ok((*quant_min, *quant_max)))
        }
        _ => {
            return Err(invalid(
                "quantize weight",
                "weight observer",
                spec.name(),
                "it computes no quantization parameters; use a MinMax or PerChannelMinMax observer with dtype qint8 \
                 (qobserve::defaults::default_per_channel_weight_observer())",
            ));
        }
    };
    if dtype != QDType::QInt8 {
        return Err(invalid(
            "quantize weight",
            "weight observer dtype",
            dtype.to_string(),
            "quantized Conv and Linear need qint8 weights (PyTorch: \"Weight observer must have a dtype of \
             qint8\"); give the weight observer dtype qint8, e.g. qobserve::defaults::default_weight_observer()",
        ));
    }
    Ok(range?)
}

/// The last value built for one input's quantization parameters (an output stage, a folded batch
/// norm), so that repeated calls with the same input parameters do not rebuild it. Clones start
/// empty.
#[derive(Debug)]
pub(crate) struct PerInputCache<T>(Mutex<Option<(PerTensor, Arc<T>)>>);

impl<T> Default for PerInputCache<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T> Clone for PerInputCache<T> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T> PerInputCache<T> {
    /// The value for input parameters `key`, built by `build` unless cached.
    pub(crate) fn get(&self, key: PerTensor, build: impl FnOnce() -> GraphResult<T>) -> GraphResult<Arc<T>> {
        let mut slot = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, v)) = slot.as_ref().filter(|(k, _)| *k == key) {
            return Ok(Arc::clone(v));
        }
        let value = Arc::new(build()?);
        *slot = Some((key, Arc::clone(&value)));
        Ok(value)
    }
}

/// `(scale, zero_point)` of an activation as the output stages take them (the zero point of a
/// quint8 tensor fits a byte).
fn u8_params(q: PerTensor) -> (f64, u8) {
    (q.scale, q.zero_point.clamp(0, 255) as u8)
}

/// What a quantized conv or linear layer saves besides its tensors: its options, the fused
/// activation, the output parameters and the weight's scheme.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WeightedConfig<O> {
    pub(crate) options: O,
    pub(crate) act: QuantizedAct,
    scale: f64,
    zero_point: i64,
    per_channel: bool,
}

impl<O> WeightedConfig<O> {
    /// The output parameters.
    pub(crate) fn out_q(&self) -> PerTensor {
        PerTensor::new(self.scale, self.zero_point)
    }

    /// The weight (of `weight_shape`) and, if `bias`, the bias saved by [`WeightedParts::tensors`].
    pub(crate) fn read_tensors(
        &self,
        t: &Tensors<'_>,
        weight_shape: &[usize],
        bias: bool,
    ) -> GraphResult<(QuantizedWeight, Option<ArrayD<f32>>)> {
        let weight = QuantizedWeight::from_tensors(t, weight_shape, self.per_channel)?;
        let bias = if bias { Some(t.shaped::<f32>("bias", &weight_shape[..1])?) } else { None };
        Ok((weight, bias))
    }
}

/// What quantized conv and linear layers hold alike: the fused activation, the qint8 weight,
/// the float bias, the output parameters and the cache of output stages.
#[derive(Debug, Clone)]
pub(crate) struct WeightedParts {
    pub(crate) act: QuantizedAct,
    pub(crate) weight: QuantizedWeight,
    pub(crate) bias: Option<ArrayD<f32>>,
    pub(crate) out_q: PerTensor,
    pipeline: PerInputCache<OutputPipeline>,
}

impl WeightedParts {
    /// Checks the output parameters, then that the weight has `weight_shape` and the bias one
    /// value per output channel (`weight_shape[0]`); `name` is the layer's, for errors.
    pub(crate) fn new(
        name: &'static str,
        weight_shape: &[usize],
        act: QuantizedAct,
        weight: QuantizedWeight,
        bias: Option<ArrayD<f32>>,
        out_q: PerTensor,
    ) -> GraphResult<Self> {
        OutQ::new(out_q)?;
        let bias = check_weight_bias(name, weight.int().shape(), weight_shape, bias)?;
        Ok(Self { act, weight, bias, out_q, pipeline: PerInputCache::default() })
    }

    /// The bias as the packers take it.
    pub(crate) fn bias_slice(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(|b| b.as_slice().expect("standard layout"))
    }

    /// The output stage for inputs with parameters `in_q`, built by `output_u8(input scale,
    /// input zero point, output scale, output zero point, relu)` (the packed weights') unless
    /// cached; with ReLU6 it clamps to `[output zero point, quantized 6.0]`.
    pub(crate) fn pipeline(
        &self,
        in_q: PerTensor,
        output_u8: impl FnOnce(f64, u8, f64, u8, bool) -> KernelResult<OutputPipeline>,
    ) -> GraphResult<Arc<OutputPipeline>> {
        self.pipeline.get(in_q, || {
            let ((a_scale, a_zp), (o_scale, o_zp)) = (u8_params(in_q), u8_params(self.out_q));
            let stage = output_u8(a_scale, a_zp, o_scale, o_zp, self.act.relu())?;
            Ok(match self.act.ceiling(self.out_q)? {
                Some(six) => stage.with_range(o_zp, six)?,
                None => stage,
            })
        })
    }

    /// `scale=..., zero_point=...` as PyTorch prints the output parameters.
    pub(crate) fn out_repr(&self) -> String {
        format!("scale={}, zero_point={}", qcore::python_float_repr(self.out_q.scale), self.out_q.zero_point)
    }

    /// The saved configuration, with the layer's `options`.
    pub(crate) fn config<O: Serialize>(&self, options: O) -> serde_json::Value {
        let config = WeightedConfig {
            options,
            act: self.act,
            scale: self.out_q.scale,
            zero_point: self.out_q.zero_point,
            per_channel: self.weight.is_per_channel(),
        };
        serde_json::to_value(config).expect("plain data")
    }

    /// The weight's tensors and the bias, for saving.
    pub(crate) fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        let mut t = self.weight.tensors();
        t.extend(self.bias.as_ref().map(|b| ("bias".to_string(), TensorView::F32(b.view()))));
        t
    }
}

/// The public accessors of a quantized layer with a `parts: WeightedParts` field; `$shape` names
/// the weight's axes.
macro_rules! weighted_accessors {
    ($shape:literal) => {
        /// The fused activation.
        pub fn act(&self) -> QuantizedAct {
            self.parts.act
        }

        #[doc = concat!("The qint8 weight integers `", $shape, "`.")]
        pub fn weight_int(&self) -> &ArrayD<i8> {
            self.parts.weight.int()
        }

        /// The weight with its scales and zero points.
        pub fn weight_qparams(&self) -> &QuantizedWeight {
            &self.parts.weight
        }

        /// The float bias, if any.
        pub fn bias(&self) -> Option<&ArrayD<f32>> {
            self.parts.bias.as_ref()
        }

        /// The output scale.
        pub fn scale(&self) -> f64 {
            self.parts.out_q.scale
        }

        /// The output zero point.
        pub fn zero_point(&self) -> i64 {
            self.parts.out_q.zero_point
        }
    };
}
pub(crate) use weighted_accessors;
