//! What flows between modules: a float tensor (NCHW, as PyTorch shows it) or a quantized
//! activation (quint8, per-tensor, stored channels-last, with the memory format PyTorch's tensor
//! would have).

use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{ArrayD, IxDyn};
use qcore::{AffineQuantizer, QDType, QParams, QTensor};
use qkernels::elementwise::PerTensor;
use qkernels::layout::{broadcast_strides, scalar_loop_runs};
use qkernels::{Isa, MemoryFormat, quant};

use crate::{GraphError, GraphResult};

/// A quantized activation: quint8 values with one scale and zero point, in PyTorch's logical
/// shape `[N, C, spatial...]` but stored channels-last (`[N, spatial..., C]`), the layout the
/// kernels run on. Rank-1 and rank-2 tensors are stored as they are.
///
/// The value also carries the memory format PyTorch's tensor has at this point
/// ([`QuantTensor::memory_format`]): `torch.quantize_per_tensor` keeps an ordinary tensor NCHW,
/// quantized convolutions return channels-last, and the other ops follow PyTorch's rules. The
/// storage does not change with it; the format decides which elements PyTorch's kernels round with
/// their scalar loop (NUMERICS.md section 11, "Layouts").
#[derive(Debug, Clone, PartialEq)]
pub struct QuantTensor {
    data: Vec<u8>,
    shape: Vec<usize>,
    q: PerTensor,
    format: MemoryFormat,
}

/// `format` for a tensor of rank `rank`: ranks below 3 have no channels-last form.
fn format_for_rank(format: MemoryFormat, rank: usize) -> MemoryFormat {
    if rank < 3 { MemoryFormat::Contiguous } else { format }
}

impl QuantTensor {
    /// Wraps channels-last `data` of logical shape `shape` (an error if the lengths differ or the
    /// parameters are not valid quint8 parameters), tagged channels-last as a quantized
    /// convolution's output is; see [`QuantTensor::with_memory_format`].
    pub fn new(data: Vec<u8>, shape: Vec<usize>, q: PerTensor) -> GraphResult<Self> {
        let expected = crate::memory::checked_numel("QuantTensor", &shape)?;
        if data.len() != expected {
            return Err(GraphError::ShapeMismatch {
                context: "QuantTensor",
                what: "data length",
                got: data.len(),
                expected,
            });
        }
        AffineQuantizer::new(q.scale, q.zero_point, QDType::QUInt8)?;
        let format = format_for_rank(MemoryFormat::ChannelsLast, shape.len());
        Ok(Self { data, shape, q, format })
    }

    /// The same values with PyTorch's memory format `format` (what
    /// `x.contiguous(memory_format=...)` gives in PyTorch). Ranks below 3 stay contiguous.
    pub fn with_memory_format(self, format: MemoryFormat) -> Self {
        Self { format: format_for_rank(format, self.shape.len()), ..self }
    }

    /// The memory format PyTorch's tensor has (the storage here is channels-last either way).
    pub fn memory_format(&self) -> MemoryFormat {
        self.format
    }

    /// Which of PyTorch's kernels a 4-D op that asks `is_contiguous(channels_last)` picks:
    /// channels-last also for a contiguous tensor with one channel or one spatial position, where
    /// both orders agree.
    pub(crate) fn kernel_format(&self) -> MemoryFormat {
        if self.format.same_order(MemoryFormat::ChannelsLast, &self.shape) {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        }
    }

    /// A quantized value from its integers in PyTorch's NCHW order (`int_repr()`) and parameters,
    /// tagged channels-last (see [`QuantTensor::with_memory_format`]).
    pub fn from_int_repr(int_repr: &ArrayD<u8>, q: PerTensor) -> GraphResult<Self> {
        let data = to_channels_last(&int_repr.as_standard_layout().into_owned());
        Self::new(data, int_repr.shape().to_vec(), q)
    }

    /// Quantizes a float NCHW tensor as `torch.quantize_per_tensor(x, scale, zero_point,
    /// torch.quint8)` does on x86, into channels-last storage; the value is NCHW
    /// ([`MemoryFormat::Contiguous`]), as PyTorch's is.
    pub fn quantize(x: &ArrayD<f32>, q: PerTensor) -> GraphResult<Self> {
        let shape = x.shape().to_vec();
        let x = x.as_standard_layout();
        let input = x.as_slice().expect("standard layout");
        let mut data = vec![0u8; input.len()];
        if shape.len() < 3 {
            quant::quantize_u8(input, q, &mut data, Isa::active())?;
        } else {
            quant::quantize_to_channels_last(input, &shape, q, &mut data, Isa::active())?;
        }
        Ok(Self { data, shape, q, format: MemoryFormat::Contiguous })
    }

    /// The float values, NCHW: `(q - zero_point) * scale` as PyTorch's `dequantize`.
    pub fn dequantize(&self) -> ArrayD<f32> {
        let mut out = vec![0f32; self.data.len()];
        let done = if self.shape.len() < 3 {
            quant::dequantize_u8(&self.data, self.q, &mut out, Isa::active())
        } else {
            quant::dequantize_from_channels_last(&self.data, &self.shape, self.q, &mut out, Isa::active())
        };
        done.expect("the parameters and shape were checked at construction");
        ArrayD::from_shape_vec(IxDyn(&self.shape), out).expect("length checked at construction")
    }

    /// The integer values in PyTorch's NCHW order (`int_repr()`).
    pub fn int_repr(&self) -> ArrayD<u8> {
        from_channels_last(self.data.clone(), &self.shape)
    }

    /// As a `qcore` tensor (NCHW), e.g. to print it as PyTorch does.
    pub fn to_qtensor(&self) -> QTensor {
        let repr = qcore::IntRepr::U8(self.int_repr());
        QTensor::from_int_repr(
            repr,
            QParams::PerTensor { scale: self.q.scale, zero_point: self.q.zero_point },
        )
        .expect("parameters were checked at construction")
    }

    /// The logical shape `[N, C, spatial...]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The stored values, channels-last.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The stored values, channels-last, by value.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Scale and zero point.
    pub fn qparams(&self) -> PerTensor {
        self.q
    }

    /// The same values under a new logical shape with the same element order in storage; only
    /// for shapes whose channels-last order equals the old one (used by flatten and reshape
    /// after the caller has checked that).
    pub(crate) fn with_storage_shape(self, shape: Vec<usize>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), self.data.len());
        let format = format_for_rank(self.format, shape.len());
        Self { shape, format, ..self }
    }

    /// The strides of the storage (channels-last) broadcast to `shape`.
    fn storage_strides(&self, shape: &[usize]) -> Vec<usize> {
        broadcast_strides(&self.shape, MemoryFormat::ChannelsLast, shape)
    }

    /// The strides PyTorch's tensor has, broadcast to `shape`.
    fn pytorch_strides(&self, shape: &[usize]) -> Vec<usize> {
        broadcast_strides(&self.shape, self.format, shape)
    }
}

/// Calls `f` for each element PyTorch's scalar loop computes when an elementwise kernel writes a
/// new tensor of `shape` in `format` from `inputs` ([`scalar_loop_runs`] with PyTorch's thread
/// count), with its storage index in the output and in every input.
pub(crate) fn for_each_scalar_loop_element(
    shape: &[usize],
    format: MemoryFormat,
    inputs: &[&QuantTensor],
    mut f: impl FnMut(usize, &[usize]),
) {
    let mut strides = vec![format.strides(shape)];
    strides.extend(inputs.iter().map(|x| x.pytorch_strides(shape)));
    let storage: Vec<Vec<usize>> = inputs.iter().map(|x| x.storage_strides(shape)).collect();
    let out_storage = MemoryFormat::ChannelsLast.strides(shape);
    let dot =
        |index: &[usize], strides: &[usize]| -> usize { index.iter().zip(strides).map(|(i, s)| i * s).sum() };
    let (mut at, mut index) = (vec![0; inputs.len()], vec![0; shape.len()]);
    for offset in scalar_loop_runs(shape, &strides, pytorch_threads()).into_iter().flatten() {
        for ((i, &size), &stride) in index.iter_mut().zip(shape).zip(&strides[0]) {
            *i = offset / stride % size;
        }
        for (slot, s) in at.iter_mut().zip(&storage) {
            *slot = dot(&index, s);
        }
        f(dot(&index, &out_storage), &at);
    }
}

/// The PyTorch thread count whose loop split quantized elementwise ops reproduce; see
/// [`set_pytorch_threads`].
static PYTORCH_THREADS: AtomicUsize = AtomicUsize::new(1);

/// Sets the `torch.get_num_threads()` of the PyTorch whose integers quantized elementwise ops
/// reproduce (default 1), and returns the previous value.
///
/// PyTorch splits an elementwise loop over more than 32768 elements into
/// `min(threads, ceil(n / 32768))` parts, and the last elements of each part take its scalar rule,
/// which for add, hardswish, leaky_relu and elu can round differently (`docs/NUMERICS.md` section
/// 9). So PyTorch's own int8 results depend on its thread count; qgraph's depend on this setting
/// only, never on the machine or on the rayon pool. Values below 1 count as 1.
///
/// ```
/// let previous = qgraph::set_pytorch_threads(4);
/// assert_eq!(qgraph::pytorch_threads(), 4);
/// qgraph::set_pytorch_threads(previous);
/// ```
pub fn set_pytorch_threads(threads: usize) -> usize {
    PYTORCH_THREADS.swap(threads.max(1), Ordering::Relaxed)
}

/// The PyTorch thread count quantized elementwise ops reproduce ([`set_pytorch_threads`]).
pub fn pytorch_threads() -> usize {
    PYTORCH_THREADS.load(Ordering::Relaxed)
}

/// The permutation of an NCHW tensor into channels-last order (a copy); rank < 3 is unchanged.
pub(crate) fn to_channels_last<T: Copy>(x: &ArrayD<T>) -> Vec<T> {
    let rank = x.ndim();
    if rank < 3 {
        return x.iter().copied().collect();
    }
    let mut axes: Vec<usize> = vec![0];
    axes.extend(2..rank);
    axes.push(1);
    x.view().permuted_axes(IxDyn(&axes)).iter().copied().collect()
}

/// The inverse of [`to_channels_last`]: channels-last `data` to an NCHW array of `shape`.
pub(crate) fn from_channels_last<T: Copy>(data: Vec<T>, shape: &[usize]) -> ArrayD<T> {
    let rank = shape.len();
    if rank < 3 {
        return ArrayD::from_shape_vec(IxDyn(shape), data).expect("length checked by the caller");
    }
    let mut stored: Vec<usize> = vec![shape[0]];
    stored.extend_from_slice(&shape[2..]);
    stored.push(shape[1]);
    let nhwc = ArrayD::from_shape_vec(IxDyn(&stored), data).expect("length checked by the caller");
    let mut axes: Vec<usize> = vec![0, rank - 1];
    axes.extend(1..rank - 1);
    nhwc.permuted_axes(IxDyn(&axes)).as_standard_layout().into_owned()
}

/// A tensor between modules.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// f32, NCHW, standard layout.
    Float(ArrayD<f32>),
    /// quint8 per-tensor, stored channels-last.
    Quant(QuantTensor),
}

impl From<ArrayD<f32>> for Value {
    fn from(x: ArrayD<f32>) -> Self {
        Value::Float(x.as_standard_layout().into_owned())
    }
}

impl From<QuantTensor> for Value {
    fn from(q: QuantTensor) -> Self {
        Value::Quant(q)
    }
}

impl Value {
    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Float(x) => x.shape(),
            Value::Quant(q) => q.shape(),
        }
    }

    /// True for a quantized value.
    pub fn is_quant(&self) -> bool {
        matches!(self, Value::Quant(_))
    }

    /// The float tensor, or an error naming `module` if the value is quantized (a `DeQuantStub`
    /// is missing before it).
    pub fn into_float(self, module: &str) -> GraphResult<ArrayD<f32>> {
        match self {
            Value::Float(x) => Ok(x),
            Value::Quant(_) => Err(GraphError::ExpectedFloat { module: module.to_string() }),
        }
    }

    /// The quantized tensor, or an error naming `module` if the value is float (a `QuantStub` is
    /// missing before it).
    pub fn into_quant(self, module: &str) -> GraphResult<QuantTensor> {
        match self {
            Value::Quant(q) => Ok(q),
            Value::Float(_) => Err(GraphError::ExpectedQuantized { module: module.to_string() }),
        }
    }

    /// The float tensor, dequantizing a quantized value (what a user reads at the end of a model).
    pub fn to_float(&self) -> ArrayD<f32> {
        match self {
            Value::Float(x) => x.clone(),
            Value::Quant(q) => q.dequantize(),
        }
    }

    /// The value as a float tensor, by value, dequantizing if needed.
    pub fn into_float_lossy(self) -> ArrayD<f32> {
        match self {
            Value::Float(x) => x,
            Value::Quant(q) => q.dequantize(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_round_trip() {
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4, 5]), |i| {
            (i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as f32
        });
        let cl = to_channels_last(&x);
        // [n, h, w, c]: the second stored value is channel 1 of pixel (0, 0).
        assert_eq!(cl[1], 100.0);
        assert_eq!(from_channels_last(cl, x.shape()), x);
    }

    #[test]
    fn quantize_matches_qcore() {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 2, 3, 3]), |i| {
            i[1] as f32 * 0.5 - i[2] as f32 * 0.25 + i[3] as f32
        });
        let q = QuantTensor::quantize(&x, PerTensor::new(0.05, 10)).unwrap();
        let expected = qcore::quantize_per_tensor(&x, 0.05, 10, QDType::QUInt8).unwrap();
        assert_eq!(q.to_qtensor(), expected);
        assert_eq!(q.dequantize(), expected.dequantize());
    }

    #[test]
    fn memory_formats_follow_pytorch() {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 2, 3, 3]), |i| i[3] as f32);
        let q = QuantTensor::quantize(&x, PerTensor::new(0.05, 10)).unwrap();
        // torch.quantize_per_tensor keeps an ordinary tensor NCHW; a convolution's output (made
        // with `new`) is channels-last; rank 2 has no channels-last form.
        assert_eq!(q.memory_format(), MemoryFormat::Contiguous);
        let conv_like = QuantTensor::new(q.data().to_vec(), q.shape().to_vec(), q.qparams()).unwrap();
        assert_eq!(conv_like.memory_format(), MemoryFormat::ChannelsLast);
        let rows = QuantTensor::new(vec![0; 6], vec![2, 3], q.qparams()).unwrap();
        assert_eq!(
            rows.with_memory_format(MemoryFormat::ChannelsLast).memory_format(),
            MemoryFormat::Contiguous
        );
        // Retagging changes neither the values nor the storage.
        let retagged = q.clone().with_memory_format(MemoryFormat::ChannelsLast);
        assert_eq!((retagged.int_repr(), retagged.data()), (q.int_repr(), q.data()));
        // One spatial position: both orders agree, and PyTorch's kernels take the channels-last one.
        let pixel =
            QuantTensor::quantize(&ArrayD::zeros(IxDyn(&[2, 5, 1, 1])), PerTensor::new(0.1, 0)).unwrap();
        assert_eq!(pixel.kernel_format(), MemoryFormat::ChannelsLast);
        assert_eq!(q.kernel_format(), MemoryFormat::Contiguous);
    }

    #[test]
    fn float_where_quantized_is_needed_names_the_module() {
        let err = Value::from(ArrayD::zeros(IxDyn(&[1]))).into_quant("features.1").unwrap_err();
        assert!(err.to_string().contains("features.1") && err.to_string().contains("QuantStub"), "{err}");
    }
}
