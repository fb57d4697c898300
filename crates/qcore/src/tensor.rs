//! `QTensor`: integer storage, shape and quantization parameters, with PyTorch's API.

use ndarray::{ArrayBase, ArrayD, Axis, Data, Dimension, Zip};
use serde::{Deserialize, Serialize};

use crate::scalar::{
    dequantize_per_channel_val, dequantize_val, dequantize_val_float_qparams, inverse_scale, quantize_val,
    quantize_val_float_qparams,
};
use crate::{AffineQuantizer, QDType, QError, QResult, QScheme};

/// The integer values of a quantized tensor, in the storage type of its dtype.
///
/// This is what PyTorch's `int_repr()` returns: `torch.uint8` for quint8, `torch.int8` for qint8,
/// `torch.int32` for qint32. quint4x2 is held unpacked here, one value in `0..=15` per element
/// (PyTorch's `int_repr()` gives its bytes, packed two values to a byte across rows);
/// the row-padded bytes an embedding table keeps are [`crate::subbyte::pack_quint4x2_rows`] of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntRepr {
    /// quint8 storage.
    U8(ArrayD<u8>),
    /// qint8 storage.
    I8(ArrayD<i8>),
    /// qint32 storage.
    I32(ArrayD<i32>),
    /// quint4x2 values, unpacked: one `u8` in `0..=15` per element.
    U4(ArrayD<u8>),
}

impl IntRepr {
    /// The dtype this storage belongs to.
    pub fn dtype(&self) -> QDType {
        match self {
            IntRepr::U8(_) => QDType::QUInt8,
            IntRepr::I8(_) => QDType::QInt8,
            IntRepr::I32(_) => QDType::QInt32,
            IntRepr::U4(_) => QDType::QUInt4x2,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            IntRepr::U8(a) => a.shape(),
            IntRepr::I8(a) => a.shape(),
            IntRepr::I32(a) => a.shape(),
            IntRepr::U4(a) => a.shape(),
        }
    }

    /// Every value widened to `i32`, whatever the storage type.
    pub fn to_i32(&self) -> ArrayD<i32> {
        match self {
            IntRepr::U8(a) | IntRepr::U4(a) => a.mapv(i32::from),
            IntRepr::I8(a) => a.mapv(i32::from),
            IntRepr::I32(a) => a.clone(),
        }
    }

    /// The quint8 values, if this is quint8 storage.
    pub fn as_u8(&self) -> Option<&ArrayD<u8>> {
        if let IntRepr::U8(a) = self { Some(a) } else { None }
    }

    /// The qint8 values, if this is qint8 storage.
    pub fn as_i8(&self) -> Option<&ArrayD<i8>> {
        if let IntRepr::I8(a) = self { Some(a) } else { None }
    }

    /// The qint32 values, if this is qint32 storage.
    pub fn as_i32(&self) -> Option<&ArrayD<i32>> {
        if let IntRepr::I32(a) = self { Some(a) } else { None }
    }

    /// Narrows `i32` values, already clamped to `dtype`'s range, into its storage type.
    fn from_clamped(values: ArrayD<i32>, dtype: QDType) -> Self {
        match dtype {
            QDType::QUInt8 => IntRepr::U8(values.mapv(|v| v as u8)),
            QDType::QInt8 => IntRepr::I8(values.mapv(|v| v as i8)),
            QDType::QInt32 => IntRepr::I32(values),
            QDType::QUInt4x2 => IntRepr::U4(values.mapv(|v| v as u8)),
        }
    }
}

/// Scales and zero points of a quantized tensor. Tensors store affine parameters only, as in
/// PyTorch: symmetric observers produce affine parameters with a fixed zero point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QParams {
    /// One scale (held as f64, used as f32) and zero point for the whole tensor.
    PerTensor {
        /// The scale.
        scale: f64,
        /// The zero point.
        zero_point: i64,
    },
    /// A scale (f64) and zero point per index of `axis`.
    PerChannel {
        /// One scale per channel.
        scales: Vec<f64>,
        /// One zero point per channel.
        zero_points: Vec<i64>,
        /// The channel axis.
        axis: usize,
    },
    /// A float scale and a **float** zero point per index of `axis`
    /// (`torch.per_channel_affine_float_qparams`, used for embedding weights).
    PerChannelFloat {
        /// One scale per channel.
        scales: Vec<f32>,
        /// One float zero point per channel.
        zero_points: Vec<f32>,
        /// The channel axis.
        axis: usize,
    },
}

impl QParams {
    /// The scheme PyTorch's `qscheme()` reports for a tensor with these parameters.
    pub fn qscheme(&self) -> QScheme {
        match self {
            QParams::PerTensor { .. } => QScheme::PerTensorAffine,
            QParams::PerChannel { .. } => QScheme::PerChannelAffine,
            QParams::PerChannelFloat { .. } => QScheme::PerChannelAffineFloatQParams,
        }
    }

    /// Checks the parameters against a tensor of `shape` and `dtype`.
    fn validate(&self, context: &'static str, shape: &[usize], dtype: QDType) -> QResult<()> {
        let check_scale = |scale: f64| inverse_scale(context, scale).map(drop);
        match self {
            QParams::PerTensor { scale, zero_point } => {
                check_scale(*scale)?;
                dtype.check_zero_point(context, *zero_point)
            }
            QParams::PerChannel { scales, zero_points, axis } => {
                check_channel_count(context, shape, *axis, scales.len(), zero_points.len())?;
                scales.iter().try_for_each(|&scale| check_scale(scale))?;
                zero_points.iter().try_for_each(|&zp| dtype.check_zero_point(context, zp))
            }
            QParams::PerChannelFloat { scales, zero_points, axis } => {
                check_channel_count(context, shape, *axis, scales.len(), zero_points.len())?;
                // PyTorch defines a zero float-qparams scale: it quantizes with an inverse of 1.
                if let Some(&scale) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
                    let reason = "float-qparams scales must be finite and >= 0";
                    return Err(QError::InvalidScale { context, scale: scale.into(), reason });
                }
                match zero_points.iter().find(|zp| !zp.is_finite()) {
                    Some(&zero_point) => Err(QError::InvalidFloatZeroPoint { context, zero_point }),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Checks that the channel `axis` exists and that there is one scale and zero point per channel.
fn check_channel_count(
    context: &'static str,
    shape: &[usize],
    axis: usize,
    scales: usize,
    zps: usize,
) -> QResult<()> {
    let ndim = shape.len();
    let expected = *shape.get(axis).ok_or(QError::AxisOutOfRange { context, axis, ndim })?;
    for (what, got) in [("scales", scales), ("zero_points", zps)] {
        if got != expected {
            return Err(QError::ChannelCountMismatch { context, what, got, axis, expected });
        }
    }
    Ok(())
}

/// A quantized tensor: integer values, a shape, and per-tensor or per-channel parameters.
///
/// ```
/// use ndarray::array;
/// use qcore::{quantize_per_tensor, QDType};
///
/// let q = quantize_per_tensor(&array![0.7f32, 0.5, -0.7], 0.25, 4, QDType::QUInt8)?;
/// assert_eq!(q.int_repr().as_u8().unwrap().as_slice().unwrap(), &[7, 6, 1]);
/// assert_eq!(q.dequantize().as_slice().unwrap(), &[0.75, 0.5, -0.75]);
/// # Ok::<(), qcore::QError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    repr: IntRepr,
    qparams: QParams,
}

impl QTensor {
    /// Builds a tensor from integer values and parameters, as PyTorch's
    /// `_make_per_tensor_quantized_tensor` / `_make_per_channel_quantized_tensor`.
    pub fn from_int_repr(repr: IntRepr, qparams: QParams) -> QResult<Self> {
        qparams.validate("QTensor::from_int_repr", repr.shape(), repr.dtype())?;
        if let IntRepr::U4(a) = &repr {
            crate::subbyte::check_quint4x2("QTensor::from_int_repr", a.iter().copied())?;
        }
        Ok(Self { repr, qparams })
    }

    /// The integer values (PyTorch's `int_repr()`).
    pub fn int_repr(&self) -> &IntRepr {
        &self.repr
    }

    /// Takes the integer values out.
    pub fn into_int_repr(self) -> IntRepr {
        self.repr
    }

    /// The parameters.
    pub fn qparams(&self) -> &QParams {
        &self.qparams
    }

    /// The dtype.
    pub fn dtype(&self) -> QDType {
        self.repr.dtype()
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.repr.shape()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `torch.per_tensor_affine` or `torch.per_channel_affine`.
    pub fn qscheme(&self) -> QScheme {
        self.qparams.qscheme()
    }

    /// The per-tensor scale; an error on a per-channel tensor, as in PyTorch.
    pub fn q_scale(&self) -> QResult<f64> {
        self.per_tensor("q_scale").map(|(scale, _)| scale)
    }

    /// The per-tensor zero point; an error on a per-channel tensor, as in PyTorch.
    pub fn q_zero_point(&self) -> QResult<i64> {
        self.per_tensor("q_zero_point").map(|(_, zero_point)| zero_point)
    }

    /// The per-channel scales; an error on a per-tensor tensor, as in PyTorch.
    pub fn q_per_channel_scales(&self) -> QResult<&[f64]> {
        self.per_channel("q_per_channel_scales").map(|(scales, _, _)| scales)
    }

    /// The per-channel zero points; an error on a per-tensor tensor, as in PyTorch.
    pub fn q_per_channel_zero_points(&self) -> QResult<&[i64]> {
        self.per_channel("q_per_channel_zero_points").map(|(_, zero_points, _)| zero_points)
    }

    /// The channel axis; an error on a per-tensor tensor, as in PyTorch.
    pub fn q_per_channel_axis(&self) -> QResult<usize> {
        match &self.qparams {
            QParams::PerChannelFloat { axis, .. } => Ok(*axis),
            _ => self.per_channel("q_per_channel_axis").map(|(_, _, axis)| axis),
        }
    }

    fn per_tensor(&self, context: &'static str) -> QResult<(f64, i64)> {
        match &self.qparams {
            QParams::PerTensor { scale, zero_point } => Ok((*scale, *zero_point)),
            QParams::PerChannel { .. } | QParams::PerChannelFloat { .. } => Err(QError::WrongQScheme {
                context,
                actual: "per channel",
                hint: "use q_per_channel_scales / q_per_channel_zero_points / q_per_channel_axis",
            }),
        }
    }

    fn per_channel(&self, context: &'static str) -> QResult<(&[f64], &[i64], usize)> {
        match &self.qparams {
            QParams::PerChannel { scales, zero_points, axis } => Ok((scales, zero_points, *axis)),
            QParams::PerTensor { .. } => Err(QError::WrongQScheme {
                context,
                actual: "per tensor",
                hint: "use q_scale / q_zero_point",
            }),
            QParams::PerChannelFloat { .. } => Err(QError::WrongQScheme {
                context,
                actual: "per channel with float zero points",
                hint: "read the f32 scales and zero points from qparams() (QParams::PerChannelFloat)",
            }),
        }
    }

    /// Checks that the tensor is of `expected` dtype, for functions that take one dtype only
    /// (a convolution's quint8 activations, say); `context` names the caller in the error.
    ///
    /// ```
    /// use ndarray::array;
    /// use qcore::{quantize_per_tensor, QDType, QError};
    /// let w = quantize_per_tensor(&array![0.5f32], 0.1, 0, QDType::QInt8)?;
    /// let err = w.check_dtype("conv2d input", QDType::QUInt8).unwrap_err();
    /// assert!(matches!(err, QError::UnsupportedDType { dtype: QDType::QInt8, .. }));
    /// # Ok::<(), QError>(())
    /// ```
    pub fn check_dtype(&self, context: &'static str, expected: QDType) -> QResult<()> {
        let dtype = self.dtype();
        if dtype == expected { Ok(()) } else { Err(QError::UnsupportedDType { context, dtype, expected }) }
    }

    /// The float values: per tensor `(float)scale * (q - zp)` in f32; per channel
    /// `((float)q - zp) * scale` with the double scale; with float qparams all in f32.
    pub fn dequantize(&self) -> ArrayD<f32> {
        let values = self.repr.to_i32();
        match &self.qparams {
            QParams::PerTensor { scale, zero_point } => {
                values.mapv(|q| dequantize_val(*scale, *zero_point, q))
            }
            QParams::PerChannel { scales, zero_points, axis } => {
                map_channels(&values, *axis, |c, q| dequantize_per_channel_val(scales[c], zero_points[c], q))
            }
            QParams::PerChannelFloat { scales, zero_points, axis } => map_channels(&values, *axis, |c, q| {
                dequantize_val_float_qparams(scales[c], zero_points[c], q)
            }),
        }
    }
}

/// Applies `f(channel, value)` to every element, where `channel` is the element's index along `axis`.
fn map_channels<A, B, D>(
    input: &ArrayBase<impl Data<Elem = A>, D>,
    axis: usize,
    f: impl Fn(usize, A) -> B,
) -> ArrayD<B>
where
    A: Copy,
    B: Clone + Default,
    D: Dimension,
{
    let input = input.view().into_dyn();
    let mut out = ArrayD::<B>::default(input.raw_dim());
    for (c, (mut out_lane, in_lane)) in
        out.axis_iter_mut(Axis(axis)).zip(input.axis_iter(Axis(axis))).enumerate()
    {
        Zip::from(&mut out_lane).and(&in_lane).for_each(|o, &v| *o = f(c, v));
    }
    out
}

/// Quantizes `x` with one scale and zero point, as `torch.quantize_per_tensor(x, scale, zero_point, dtype)`.
///
/// The scale is held as f64 and used as f32 (see [`AffineQuantizer::quantize`] for the exact rule).
/// Errors: a scale that is not finite and positive or whose f32 reciprocal overflows, and a zero
/// point outside the dtype's range.
pub fn quantize_per_tensor<S, D>(
    x: &ArrayBase<S, D>,
    scale: f64,
    zero_point: i64,
    dtype: QDType,
) -> QResult<QTensor>
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    let quantizer = AffineQuantizer::new(scale, zero_point, dtype)?;
    let x = x.view().into_dyn();
    // `quantize` returns values already clamped to the dtype, so the narrowing casts are exact.
    let repr = match dtype {
        QDType::QUInt8 => IntRepr::U8(x.mapv(|v| quantizer.quantize(v) as u8)),
        QDType::QInt8 => IntRepr::I8(x.mapv(|v| quantizer.quantize(v) as i8)),
        QDType::QInt32 => IntRepr::I32(x.mapv(|v| quantizer.quantize(v))),
        QDType::QUInt4x2 => IntRepr::U4(x.mapv(|v| quantizer.quantize(v) as u8)),
    };
    Ok(QTensor { repr, qparams: QParams::PerTensor { scale, zero_point } })
}

/// Quantizes `x` with a scale and zero point per index of `axis`, as
/// `torch.quantize_per_channel(x, scales, zero_points, axis, dtype)`; every element follows
/// [`quantize_val`].
///
/// Errors: `axis` out of range, `scales`/`zero_points` whose length differs from the axis size, and
/// any invalid scale or zero point.
pub fn quantize_per_channel<S, D>(
    x: &ArrayBase<S, D>,
    scales: &[f64],
    zero_points: &[i64],
    axis: usize,
    dtype: QDType,
) -> QResult<QTensor>
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    let qparams = QParams::PerChannel { scales: scales.to_vec(), zero_points: zero_points.to_vec(), axis };
    qparams.validate("quantize_per_channel", x.shape(), dtype)?;
    let values = map_channels(x, axis, |c, v| quantize_val(scales[c], zero_points[c], v, dtype));
    Ok(QTensor { repr: IntRepr::from_clamped(values, dtype), qparams })
}

/// Quantizes `x` with an f32 scale and an **f32** zero point per index of `axis`, as
/// `torch.quantize_per_channel` with float zero points (`torch.per_channel_affine_float_qparams`):
/// every element follows [`crate::quantize_val_float_qparams`], clamped to the dtype's range.
///
/// ```
/// use ndarray::array;
/// use qcore::{quantize_per_channel_float_qparams, QDType};
/// let x = array![[0.5f32, -1.0], [3.0, 0.25]];
/// let q = quantize_per_channel_float_qparams(&x, &[0.1, 0.2], &[10.0, 3.5], 0, QDType::QUInt8)?;
/// assert_eq!(q.int_repr().to_i32().into_raw_vec_and_offset().0, [15, 0, 18, 5]);
/// # Ok::<(), qcore::QError>(())
/// ```
pub fn quantize_per_channel_float_qparams<S, D>(
    x: &ArrayBase<S, D>,
    scales: &[f32],
    zero_points: &[f32],
    axis: usize,
    dtype: QDType,
) -> QResult<QTensor>
where
    S: Data<Elem = f32>,
    D: Dimension,
{
    let qparams =
        QParams::PerChannelFloat { scales: scales.to_vec(), zero_points: zero_points.to_vec(), axis };
    qparams.validate("quantize_per_channel_float_qparams", x.shape(), dtype)?;
    let values =
        map_channels(x, axis, |c, v| quantize_val_float_qparams(scales[c], zero_points[c], v, dtype));
    Ok(QTensor { repr: IntRepr::from_clamped(values, dtype), qparams })
}
