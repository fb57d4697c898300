//! What flows between modules: a float tensor (NCHW, as PyTorch shows it), a quantized
//! activation (quint8, qint8 or qint32, per-tensor, stored channels-last, with the memory format
//! PyTorch's tensor would have), or a tuple of values.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{ArrayD, IxDyn};
use qcore::{AffineQuantizer, QDType, QParams, QTensor};
use qkernels::elementwise::PerTensor;
use qkernels::layout::{broadcast_strides, scalar_loop_runs};
use qkernels::{Isa, MemoryFormat, quant};

use crate::{GraphError, GraphResult};

/// The integer element types a quantized [`Value`] can hold: `u8` (quint8), `i8` (qint8) and
/// `i32` (qint32). Sealed: the set matches PyTorch's per-tensor quantized dtypes.
pub trait QuantElement:
    sealed::Sealed + Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static
{
    /// The quantized dtype of these integers.
    const DTYPE: QDType;

    /// `torch.quantize_per_tensor` of NCHW `x` into channels-last storage.
    #[doc(hidden)]
    fn quantize(x: &[f32], shape: &[usize], q: PerTensor) -> GraphResult<Vec<Self>>;

    /// The float values, NCHW, of channels-last `data`.
    #[doc(hidden)]
    fn dequantize(data: &[Self], shape: &[usize], q: PerTensor) -> ArrayD<f32>;

    /// The `qcore` integer representation of NCHW integers.
    #[doc(hidden)]
    fn int_repr(x: ArrayD<Self>) -> qcore::IntRepr;

    /// The value holding `x`.
    #[doc(hidden)]
    fn into_value(x: QuantTensorOf<Self>) -> Value;

    /// The tensor inside `value` if it holds these integers, else the value back.
    #[doc(hidden)]
    fn from_value(value: Value) -> Result<QuantTensorOf<Self>, Value>;
}

mod sealed {
    /// Keeps [`super::QuantElement`] to the types of this file.
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for i8 {}
    impl Sealed for i32 {}
}

impl QuantElement for u8 {
    const DTYPE: QDType = QDType::QUInt8;

    fn quantize(x: &[f32], shape: &[usize], q: PerTensor) -> GraphResult<Vec<u8>> {
        let mut data = vec![0u8; x.len()];
        if shape.len() < 3 {
            quant::quantize_u8(x, q, &mut data, Isa::active())?;
        } else {
            quant::quantize_to_channels_last(x, shape, q, &mut data, Isa::active())?;
        }
        Ok(data)
    }

    fn dequantize(data: &[u8], shape: &[usize], q: PerTensor) -> ArrayD<f32> {
        let mut out = vec![0f32; data.len()];
        let done = if shape.len() < 3 {
            quant::dequantize_u8(data, q, &mut out, Isa::active())
        } else {
            quant::dequantize_from_channels_last(data, shape, q, &mut out, Isa::active())
        };
        done.expect("the parameters and shape were checked at construction");
        ArrayD::from_shape_vec(IxDyn(shape), out).expect("length checked at construction")
    }

    fn int_repr(x: ArrayD<u8>) -> qcore::IntRepr {
        qcore::IntRepr::U8(x)
    }

    fn into_value(x: QuantTensor) -> Value {
        Value::Quant(x)
    }

    fn from_value(value: Value) -> Result<QuantTensor, Value> {
        match value {
            Value::Quant(x) => Ok(x),
            other => Err(other),
        }
    }
}

/// [`QuantElement`] for the integer types without a dedicated kernel: quantizing and
/// dequantizing go through `qcore`'s reference functions, which PyTorch's results follow.
macro_rules! reference_quant_element {
    ($t:ty, $dtype:ident, $repr:ident, $variant:ident) => {
        impl QuantElement for $t {
            const DTYPE: QDType = QDType::$dtype;

            fn quantize(x: &[f32], shape: &[usize], q: PerTensor) -> GraphResult<Vec<$t>> {
                let x = ndarray::ArrayViewD::from_shape(IxDyn(shape), x).expect("length is the shape's");
                let t = qcore::quantize_per_tensor(&x, q.scale, q.zero_point, QDType::$dtype)?;
                let qcore::IntRepr::$repr(ints) = t.into_int_repr() else {
                    unreachable!("quantize_per_tensor returns the dtype it was asked for")
                };
                Ok(to_channels_last(&ints))
            }

            fn dequantize(data: &[$t], shape: &[usize], q: PerTensor) -> ArrayD<f32> {
                from_channels_last(data.to_vec(), shape)
                    .mapv(|v| qcore::dequantize_val(q.scale, q.zero_point, i32::from(v)))
            }

            fn int_repr(x: ArrayD<$t>) -> qcore::IntRepr {
                qcore::IntRepr::$repr(x)
            }

            fn into_value(x: QuantTensorOf<$t>) -> Value {
                Value::$variant(x)
            }

            fn from_value(value: Value) -> Result<QuantTensorOf<$t>, Value> {
                match value {
                    Value::$variant(x) => Ok(x),
                    other => Err(other),
                }
            }
        }
    };
}
reference_quant_element!(i8, QInt8, I8, QInt8);
reference_quant_element!(i32, QInt32, I32, QInt32);

/// A quantized activation: integers of type `T` ([`QuantElement`]) with one scale and zero
/// point, in PyTorch's logical shape `[N, C, spatial...]` but stored channels-last
/// (`[N, spatial..., C]`), the layout the kernels run on. Rank-1 and rank-2 tensors are stored as
/// they are.
///
/// The value also carries the memory format PyTorch's tensor has at this point
/// ([`QuantTensorOf::memory_format`]): `torch.quantize_per_tensor` keeps an ordinary tensor NCHW,
/// quantized convolutions return channels-last, and the other ops follow PyTorch's rules. The
/// storage does not change with it; the format decides which elements PyTorch's kernels round with
/// their scalar loop (NUMERICS.md section 11, "Layouts").
#[derive(Debug, Clone, PartialEq)]
pub struct QuantTensorOf<T: QuantElement> {
    data: Vec<T>,
    shape: Vec<usize>,
    q: PerTensor,
    format: MemoryFormat,
}

/// A quint8 activation, the dtype every quantized module runs on.
pub type QuantTensor = QuantTensorOf<u8>;

/// `format` for a tensor of rank `rank`: ranks below 3 have no channels-last form.
fn format_for_rank(format: MemoryFormat, rank: usize) -> MemoryFormat {
    if rank < 3 { MemoryFormat::Contiguous } else { format }
}

impl<T: QuantElement> QuantTensorOf<T> {
    /// Wraps channels-last `data` of logical shape `shape` (an error if the lengths differ or the
    /// parameters are not valid for `T`'s dtype), tagged channels-last as a quantized
    /// convolution's output is; see [`QuantTensorOf::with_memory_format`].
    pub fn new(data: Vec<T>, shape: Vec<usize>, q: PerTensor) -> GraphResult<Self> {
        let expected = crate::memory::checked_numel("QuantTensor", &shape)?;
        if data.len() != expected {
            return Err(GraphError::ShapeMismatch {
                context: "QuantTensor",
                what: "data length",
                got: data.len(),
                expected,
            });
        }
        AffineQuantizer::new(q.scale, q.zero_point, T::DTYPE)?;
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
    /// tagged channels-last (see [`QuantTensorOf::with_memory_format`]).
    pub fn from_int_repr(int_repr: &ArrayD<T>, q: PerTensor) -> GraphResult<Self> {
        let data = to_channels_last(&int_repr.as_standard_layout().into_owned());
        Self::new(data, int_repr.shape().to_vec(), q)
    }

    /// Quantizes a float NCHW tensor as `torch.quantize_per_tensor(x, scale, zero_point, dtype)`
    /// does on x86, into channels-last storage; the value is NCHW ([`MemoryFormat::Contiguous`]),
    /// as PyTorch's is.
    pub fn quantize(x: &ArrayD<f32>, q: PerTensor) -> GraphResult<Self> {
        let shape = x.shape().to_vec();
        let x = x.as_standard_layout();
        let data = T::quantize(x.as_slice().expect("standard layout"), &shape, q)?;
        Ok(Self { data, shape, q, format: MemoryFormat::Contiguous })
    }

    /// The float values, NCHW: `(q - zero_point) * scale` as PyTorch's `dequantize`.
    pub fn dequantize(&self) -> ArrayD<f32> {
        T::dequantize(&self.data, &self.shape, self.q)
    }

    /// The integer values in PyTorch's NCHW order (`int_repr()`).
    pub fn int_repr(&self) -> ArrayD<T> {
        from_channels_last(self.data.clone(), &self.shape)
    }

    /// As a `qcore` tensor (NCHW), e.g. to print it as PyTorch does.
    pub fn to_qtensor(&self) -> QTensor {
        QTensor::from_int_repr(
            T::int_repr(self.int_repr()),
            QParams::PerTensor { scale: self.q.scale, zero_point: self.q.zero_point },
        )
        .expect("parameters were checked at construction")
    }

    /// The dtype: quint8, qint8 or qint32.
    pub fn dtype(&self) -> QDType {
        T::DTYPE
    }

    /// The logical shape `[N, C, spatial...]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The stored values, channels-last.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The stored values, channels-last, by value.
    pub fn into_data(self) -> Vec<T> {
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

/// The element type of a tensor [`Value`], as PyTorch names it (`torch.float32`, `torch.quint8`,
/// ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `torch.float32`.
    Float32,
    /// `torch.quint8`.
    QUInt8,
    /// `torch.qint8`.
    QInt8,
    /// `torch.qint32`.
    QInt32,
    /// `torch.quint4x2` (embedding weights only; no [`Value`] holds it).
    QUInt4x2,
    /// `torch.int64`: indices and offsets ([`Value::Int`]).
    Int64,
}

impl From<QDType> for DType {
    fn from(dtype: QDType) -> Self {
        match dtype {
            QDType::QUInt8 => DType::QUInt8,
            QDType::QInt8 => DType::QInt8,
            QDType::QInt32 => DType::QInt32,
            QDType::QUInt4x2 => DType::QUInt4x2,
        }
    }
}

impl fmt::Display for DType {
    /// PyTorch's name without `torch.`: `float32`, `quint8`, `qint8`, `qint32`, `quint4x2`,
    /// `int64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::Float32 => "float32",
            DType::QUInt8 => "quint8",
            DType::QInt8 => "qint8",
            DType::QInt32 => "qint32",
            DType::QUInt4x2 => "quint4x2",
            DType::Int64 => "int64",
        })
    }
}

/// What flows between modules: a tensor, or a tuple of values (a module with several inputs or
/// outputs, e.g. LSTM's `(output, (h, c))`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// f32, NCHW, standard layout.
    Float(ArrayD<f32>),
    /// quint8 per-tensor, stored channels-last: what the quantized modules run on.
    Quant(QuantTensor),
    /// qint8 per-tensor, stored channels-last.
    QInt8(QuantTensorOf<i8>),
    /// qint32 per-tensor, stored channels-last.
    QInt32(QuantTensorOf<i32>),
    /// int64 (`torch.long`), standard layout: indices and offsets of embeddings.
    Int(ArrayD<i64>),
    /// Several values, in order.
    Tuple(Vec<Value>),
}

impl From<ArrayD<f32>> for Value {
    fn from(x: ArrayD<f32>) -> Self {
        Value::Float(standard_layout(x))
    }
}

/// `x` in standard (row-major, contiguous) layout: `x` itself when it already is, else a copy.
pub(crate) fn standard_layout<A: Clone, D: ndarray::Dimension>(
    x: ndarray::Array<A, D>,
) -> ndarray::Array<A, D> {
    if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() }
}

impl<T: QuantElement> From<QuantTensorOf<T>> for Value {
    fn from(q: QuantTensorOf<T>) -> Self {
        T::into_value(q)
    }
}

impl From<Vec<Value>> for Value {
    fn from(values: Vec<Value>) -> Self {
        Value::Tuple(values)
    }
}

/// A borrowed tensor value, whatever its dtype.
#[derive(Clone, Copy)]
enum Tensor<'a> {
    Float(&'a ArrayD<f32>),
    Int(&'a ArrayD<i64>),
    Quant(&'a dyn AnyQuant),
}

impl<'a> Tensor<'a> {
    fn dtype(self) -> DType {
        match self {
            Tensor::Float(_) => DType::Float32,
            Tensor::Int(_) => DType::Int64,
            Tensor::Quant(q) => q.dtype().into(),
        }
    }

    fn shape(self) -> &'a [usize] {
        match self {
            Tensor::Float(x) => x.shape(),
            Tensor::Int(x) => x.shape(),
            Tensor::Quant(q) => q.shape(),
        }
    }
}

/// What every [`QuantTensorOf`] answers, whatever its integer type.
trait AnyQuant {
    fn dtype(&self) -> QDType;
    fn shape(&self) -> &[usize];
    fn dequantize(&self) -> ArrayD<f32>;
}

impl<T: QuantElement> AnyQuant for QuantTensorOf<T> {
    fn dtype(&self) -> QDType {
        T::DTYPE
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn dequantize(&self) -> ArrayD<f32> {
        QuantTensorOf::dequantize(self)
    }
}

impl Value {
    /// The element type, or an error for a tuple (which has one per element).
    pub fn dtype(&self) -> GraphResult<DType> {
        Ok(self.tensor("Value::dtype")?.dtype())
    }

    /// The logical shape, or an error for a tuple.
    pub fn shape(&self) -> GraphResult<&[usize]> {
        Ok(self.tensor("Value::shape")?.shape())
    }

    /// The tensor inside, or the error of a tuple reaching `module`.
    fn tensor(&self, module: &str) -> GraphResult<Tensor<'_>> {
        self.as_tensor().map_err(|_| self.not_a_tensor(module))
    }

    /// The tensor inside, or the elements of a tuple.
    fn as_tensor(&self) -> Result<Tensor<'_>, &[Value]> {
        match self {
            Value::Float(x) => Ok(Tensor::Float(x)),
            Value::Quant(q) => Ok(Tensor::Quant(q)),
            Value::QInt8(q) => Ok(Tensor::Quant(q)),
            Value::QInt32(q) => Ok(Tensor::Quant(q)),
            Value::Int(x) => Ok(Tensor::Int(x)),
            Value::Tuple(values) => Err(values),
        }
    }

    /// What the value is, for messages: `a qint8 tensor of shape [1, 3]`, `a tuple of 2 values
    /// (...)`.
    pub fn describe(&self) -> String {
        match self.as_tensor() {
            Ok(t) => {
                let dtype = t.dtype().to_string();
                let article = if dtype.starts_with('i') { "an" } else { "a" };
                format!("{article} {dtype} tensor of shape {:?}", t.shape())
            }
            Err(values) => {
                let items: Vec<String> = values.iter().map(Value::describe).collect();
                format!("a tuple of {} values ({})", values.len(), items.join(", "))
            }
        }
    }

    /// The error of giving this value to `module`, which runs on `expected` (e.g. `quint8
    /// tensors`); `fix` says what to change. The message names all three and this value's dtype
    /// and shape.
    ///
    /// ```
    /// use qgraph::Value;
    /// let err = Value::Tuple(vec![]).unsupported("Conv2d", "one float32 tensor", "pass one element");
    /// assert_eq!(err.to_string(), "Conv2d received a tuple of 0 values () but runs on one float32 tensor: pass one element");
    /// ```
    pub fn unsupported(&self, module: &str, expected: &str, fix: &str) -> GraphError {
        GraphError::UnsupportedValue {
            module: module.to_string(),
            got: self.describe(),
            expected: expected.to_string(),
            fix: fix.to_string(),
        }
    }

    /// The error of a tuple reaching `module`, which takes one tensor.
    fn not_a_tensor(&self, module: &str) -> GraphError {
        self.unsupported(
            module,
            "one tensor",
            "take the element it needs first (a graph's Op::GetItem, or Value::into_tuple)",
        )
    }

    /// True for a quantized tensor (of any dtype).
    pub fn is_quant(&self) -> bool {
        matches!(self, Value::Quant(_) | Value::QInt8(_) | Value::QInt32(_))
    }

    /// The float tensor, or an error naming `module` if the value is quantized (a `DeQuantStub`
    /// is missing before it) or a tuple.
    pub fn into_float(self, module: &str) -> GraphResult<ArrayD<f32>> {
        match self {
            Value::Float(x) => Ok(x),
            Value::Tuple(_) => Err(self.not_a_tensor(module)),
            Value::Int(_) => Err(self.unsupported(
                module,
                "a float32 tensor",
                "int64 tensors are indices; pass them to an Embedding or EmbeddingBag",
            )),
            _ => Err(GraphError::ExpectedFloat { module: module.to_string() }),
        }
    }

    /// The quint8 tensor, or an error naming `module` if the value is float (a `QuantStub` is
    /// missing before it), of another quantized dtype (the quantized modules run on quint8
    /// only) or a tuple.
    pub fn into_quant(self, module: &str) -> GraphResult<QuantTensor> {
        self.into_quantized::<u8>(module)
    }

    /// The quantized tensor of integers `T`, or an error naming `module`, the value and the fix.
    pub fn into_quantized<T: QuantElement>(self, module: &str) -> GraphResult<QuantTensorOf<T>> {
        match T::from_value(self) {
            Ok(q) => Ok(q),
            Err(Value::Float(_)) => Err(GraphError::ExpectedQuantized { module: module.to_string() }),
            Err(other @ Value::Int(_)) => Err(other.unsupported(
                module,
                &format!("{} tensors", DType::from(T::DTYPE)),
                "int64 tensors are indices; pass them to an Embedding or EmbeddingBag",
            )),
            Err(other @ Value::Tuple(_)) => Err(other.not_a_tensor(module)),
            Err(other) => {
                let dtype = DType::from(T::DTYPE);
                Err(other.unsupported(
                    module,
                    &format!("{dtype} tensors"),
                    &format!(
                        "its kernels take {dtype} only; dequantize the input (DeQuantStub) and quantize it as \
                         {dtype} (a QuantStub whose qconfig has dtype {dtype})"
                    ),
                ))
            }
        }
    }

    /// The int64 tensor, or an error naming `module`, the value and the fix.
    pub fn into_int(self, module: &str) -> GraphResult<ArrayD<i64>> {
        match self {
            Value::Int(x) => Ok(x),
            other => Err(other.int_expected(module)),
        }
    }

    /// The int64 tensor, borrowed, or an error naming `module`, the value and the fix.
    pub fn as_int(&self, module: &str) -> GraphResult<&ArrayD<i64>> {
        match self {
            Value::Int(x) => Ok(x),
            other => Err(other.int_expected(module)),
        }
    }

    fn int_expected(&self, module: &str) -> GraphError {
        self.unsupported(
            module,
            "an int64 tensor of indices",
            "pass the indices as Value::Int (an ndarray of i64), as PyTorch takes torch.long",
        )
    }

    /// The values of a tuple, or an error naming `module` for a tensor.
    pub fn into_tuple(self, module: &str) -> GraphResult<Vec<Value>> {
        match self {
            Value::Tuple(values) => Ok(values),
            other => Err(other.unsupported(
                module,
                "a tuple",
                "pass a Value::Tuple (a graph with several inputs takes one value per input)",
            )),
        }
    }

    /// The float tensor, dequantizing a quantized value (what a user reads at the end of a
    /// model); an error for a tuple or an int64 tensor.
    pub fn to_float(&self) -> GraphResult<ArrayD<f32>> {
        Ok(match self.tensor("Value::to_float")? {
            Tensor::Float(x) => x.clone(),
            Tensor::Quant(q) => q.dequantize(),
            Tensor::Int(_) => {
                return Err(self.unsupported(
                    "Value::to_float",
                    "a float or quantized tensor",
                    "read int64 values with Value::as_int",
                ));
            }
        })
    }

    /// The value as a float tensor, by value, dequantizing if needed; an error for a tuple.
    pub fn into_float_lossy(self) -> GraphResult<ArrayD<f32>> {
        match self {
            Value::Float(x) => Ok(x),
            other => other.to_float(),
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

    fn small(dtype: DType) -> Value {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 2, 2, 3]), |i| i[1] as f32 - i[3] as f32 * 0.5);
        let q = PerTensor::new(0.1, 0);
        match dtype {
            DType::Float32 => Value::from(x),
            DType::QUInt8 => QuantTensor::quantize(&x, PerTensor::new(0.1, 128)).unwrap().into(),
            DType::QInt8 => QuantTensorOf::<i8>::quantize(&x, q).unwrap().into(),
            DType::QInt32 => QuantTensorOf::<i32>::quantize(&x, q).unwrap().into(),
            DType::Int64 => Value::Int(x.mapv(|v| v as i64)),
            DType::QUInt4x2 => unreachable!("no value holds quint4x2"),
        }
    }

    #[test]
    fn int64_values_hold_indices_and_are_refused_elsewhere() {
        let v = small(DType::Int64);
        assert_eq!(v.dtype().unwrap(), DType::Int64);
        assert_eq!(v.describe(), "an int64 tensor of shape [1, 2, 2, 3]");
        assert!(!v.is_quant());
        assert_eq!(v.as_int("Embedding").unwrap().shape(), &[1, 2, 2, 3]);
        assert_eq!(v.clone().into_int("Embedding").unwrap().iter().copied().max(), Some(1));
        let err = v.clone().into_float("Linear").unwrap_err().to_string();
        assert!(err.contains("Linear received an int64 tensor") && err.contains("Embedding"), "{err}");
        assert!(
            v.clone()
                .into_quant("QuantizedConv2d")
                .unwrap_err()
                .to_string()
                .contains("int64 tensors are indices")
        );
        assert!(v.to_float().is_err());
        let err = small(DType::Float32).into_int("Embedding").unwrap_err().to_string();
        assert!(err.contains("Embedding received a float32 tensor") && err.contains("Value::Int"), "{err}");
    }

    #[test]
    fn dtype_shape_and_accessors() {
        for dtype in [DType::Float32, DType::QUInt8, DType::QInt8, DType::QInt32] {
            let v = small(dtype);
            assert_eq!(v.dtype().unwrap(), dtype);
            assert_eq!(v.shape().unwrap(), &[1, 2, 2, 3]);
            assert_eq!(v.is_quant(), dtype != DType::Float32);
            // Every dtype dequantizes to the float values (0.1 steps are exact enough here).
            let x = small(DType::Float32).into_float("test").unwrap();
            let back = v.to_float().unwrap();
            assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() < 0.051), "{dtype}: {back:?}");
            assert_eq!(v.clone().into_float_lossy().unwrap(), back);
        }
        let qint8 = small(DType::QInt8);
        let q = qint8.clone().into_quantized::<i8>("test").unwrap();
        assert_eq!(q.dtype(), QDType::QInt8);
        assert_eq!(q.int_repr().iter().copied().min(), Some(-10));
        assert!(qint8.clone().into_quantized::<i32>("test").is_err());
        let pair = Value::Tuple(vec![qint8, small(DType::Float32)]);
        assert_eq!(
            pair.describe(),
            "a tuple of 2 values (a qint8 tensor of shape [1, 2, 2, 3], a float32 tensor of shape [1, 2, 2, 3])"
        );
        assert!(pair.dtype().is_err() && pair.shape().is_err() && pair.to_float().is_err());
        assert_eq!(pair.clone().into_tuple("test").unwrap().len(), 2);
        let err = small(DType::Float32).into_tuple("Graph").unwrap_err().to_string();
        assert!(
            err.starts_with("Graph received a float32 tensor of shape [1, 2, 2, 3] but runs on a tuple"),
            "{err}"
        );
        let err = pair.into_float("ReLU").unwrap_err().to_string();
        assert!(err.contains("ReLU received a tuple of 2 values") && err.contains("GetItem"), "{err}");
    }

    #[test]
    fn qint8_and_qint32_match_qcore() {
        let x =
            ArrayD::from_shape_fn(IxDyn(&[2, 3, 2, 2]), |i| (i[0] + 2 * i[1]) as f32 * 0.37 - i[3] as f32);
        let q = PerTensor::new(0.02, -3);
        let ours = QuantTensorOf::<i8>::quantize(&x, q).unwrap();
        let reference = qcore::quantize_per_tensor(&x, 0.02, -3, QDType::QInt8).unwrap();
        assert_eq!(ours.to_qtensor(), reference);
        assert_eq!(ours.dequantize(), reference.dequantize());
        let wide = QuantTensorOf::<i32>::quantize(&x, PerTensor::new(0.001, 1000)).unwrap();
        let reference = qcore::quantize_per_tensor(&x, 0.001, 1000, QDType::QInt32).unwrap();
        assert_eq!(wide.to_qtensor(), reference);
        assert_eq!(wide.dequantize(), reference.dequantize());
        // The zero point is checked against the dtype's range.
        assert!(QuantTensorOf::<i8>::new(vec![0; 2], vec![2], PerTensor::new(0.1, 200)).is_err());
    }

    #[test]
    fn other_dtypes_where_quint8_is_needed_name_the_module_the_value_and_the_fix() {
        let err = small(DType::QInt8).into_quant("QuantizedConv2d").unwrap_err();
        assert!(matches!(err, GraphError::UnsupportedValue { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "QuantizedConv2d received a qint8 tensor of shape [1, 2, 2, 3] but runs on quint8 tensors: its kernels \
             take quint8 only; dequantize the input (DeQuantStub) and quantize it as quint8 (a QuantStub whose \
             qconfig has dtype quint8)"
        );
    }
}
