//! `nnq.Embedding` and `nnq.EmbeddingBag`: weight-only quantized tables (quint8 or quint4x2
//! rows, a float scale and zero point per row), float32 out, FBGEMM's arithmetic bit for bit.
//!
//! The weight is what PyTorch's `from_float` makes: the qconfig's weight observer
//! (`per_channel_affine_float_qparams`, axis 0) sees the float table once, `quantize_per_channel`
//! quantizes it with the float parameters, and `embedding_bag_prepack` keeps each row with its
//! scale and `bias = zero_point * scale * -1` (f32 for quint8, rounded to f16 for quint4x2).
//! Each looked-up row adds `fma(scale * w, q, acc + bias * w)` per element (`w` the per-sample
//! weight, else 1), in the order of the indices (NUMERICS §14), by `qkernels::embedding`.

use ndarray::{ArrayD, IxDyn};
use qcore::subbyte::{pack_quint4x2_rows, quint4x2_row_bytes, unpack_quint4x2_rows};
use qcore::{IntRepr, QDType, QParams, QScheme, QTensor};
use qkernels::Isa;
use qkernels::embedding::{QuantRows, RowBits, sum_bags};
use qobserve::ObserverSpec;
use serde::{Deserialize, Serialize};

use crate::nn::{self, Bags, EmbeddingBagMode, EmbeddingOptions};
use crate::record::{Record, TensorView, Tensors};
use crate::{GraphResult, Module, Value, invalid, memory};

/// A quantized embedding table as PyTorch's `EmbeddingPackedParams` holds it: quint8 (one byte
/// per value) or quint4x2 (two values per byte, each row padded to whole bytes) rows with a
/// float scale and float zero point per row.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingWeight {
    dtype: QDType,
    rows: usize,
    cols: usize,
    packed: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    /// Per row, the scale and bias the kernel uses (derived from the two above).
    kernel_scales: Vec<f32>,
    kernel_biases: Vec<f32>,
}

impl EmbeddingWeight {
    /// `from_float`'s weight: the observer built from `spec` sees `weight` once and its
    /// parameters quantize it. Errors: an observer without float parameters along axis 0
    /// (PyTorch: "Embedding quantization is only supported with float_qparams_weight_only_qconfig")
    /// or of another dtype than quint8 / quint4x2, a weight that is not 2-D.
    pub fn from_observer(weight: &ArrayD<f32>, spec: &ObserverSpec) -> GraphResult<Self> {
        let refused = || {
            invalid(
                "quantize embedding weight",
                "weight observer",
                spec.name(),
                "embedding quantization is only supported with float_qparams_weight_only_qconfig: use a \
                 PerChannelMinMaxObserver with qscheme per_channel_affine_float_qparams and ch_axis 0",
            )
        };
        let mut observer = spec.build()?;
        observer.observe(weight.view())?;
        // Observers without parameters of their own (float16's placeholder) are refused alike.
        let Ok(QParams::PerChannelFloat { scales, zero_points, axis: 0 }) = observer.calculate_qparams()
        else {
            return Err(refused());
        };
        let dtype = observer_dtype(spec)?;
        let q = qcore::quantize_per_channel_float_qparams(weight, &scales, &zero_points, 0, dtype)?;
        Self::from_qtensor(&q)
    }

    /// PyTorch's `embedding_bag_prepack` of a quantized table: 2-D, quint8 or quint4x2,
    /// `per_channel_affine_float_qparams` along axis 0.
    pub fn from_qtensor(q: &QTensor) -> GraphResult<Self> {
        const CONTEXT: &str = "embedding_bag_prepack";
        let &[_, cols] = q.shape() else {
            return Err(invalid(CONTEXT, "weight rank", q.shape().len(), "the weight tensor must be 2-D"));
        };
        let QParams::PerChannelFloat { scales, zero_points, axis: 0 } = q.qparams() else {
            return Err(invalid(
                CONTEXT,
                "qscheme",
                q.qscheme(),
                "embedding weights must be quantized per_channel_affine_float_qparams along axis 0",
            ));
        };
        let packed = match q.int_repr() {
            IntRepr::U8(a) => a.iter().copied().collect(),
            IntRepr::U4(a) => pack_quint4x2_rows(&a.iter().copied().collect::<Vec<_>>(), cols)?,
            other => {
                let reason = "embedding weights must be quint8 or quint4x2";
                return Err(invalid(CONTEXT, "dtype", other.dtype(), reason));
            }
        };
        Ok(Self::assemble(q.dtype(), cols, packed, scales.clone(), zero_points.clone()))
    }

    /// The table with the kernel's per-row scale and bias: `bias = zero_point * scale * -1` in
    /// f32 (negating is exact), both rounded to f16 and back for quint4x2 (prepack stores them as
    /// `at::Half`).
    fn assemble(
        dtype: QDType,
        cols: usize,
        packed: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Vec<f32>,
    ) -> Self {
        let half = |v: f32| if dtype == QDType::QUInt4x2 { half::f16::from_f32(v).to_f32() } else { v };
        let kernel_scales = scales.iter().map(|&s| half(s)).collect();
        let kernel_biases = scales.iter().zip(&zero_points).map(|(&s, &z)| half(-(z * s))).collect();
        Self { dtype, rows: scales.len(), cols, packed, scales, zero_points, kernel_scales, kernel_biases }
    }

    /// The dtype: quint8 or quint4x2.
    pub fn dtype(&self) -> QDType {
        self.dtype
    }

    /// `[num_embeddings, embedding_dim]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The stored bytes, row after row: `embedding_dim` bytes a row for quint8, `ceil(dim / 2)`
    /// for quint4x2 (element `2i` in the low nibble, an odd row's last high nibble 0).
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// One float scale per row.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// One float zero point per row.
    pub fn zero_points(&self) -> &[f32] {
        &self.zero_points
    }

    /// The quantized table (PyTorch's `weight()`), values unpacked.
    pub fn to_qtensor(&self) -> GraphResult<QTensor> {
        let shape = IxDyn(&[self.rows, self.cols]);
        let repr = match self.dtype {
            QDType::QUInt4x2 => IntRepr::U4(
                ArrayD::from_shape_vec(shape, unpack_quint4x2_rows(&self.packed, self.cols)?)
                    .expect("rows x cols"),
            ),
            _ => IntRepr::U8(ArrayD::from_shape_vec(shape, self.packed.clone()).expect("rows x cols")),
        };
        let qparams = QParams::PerChannelFloat {
            scales: self.scales.clone(),
            zero_points: self.zero_points.clone(),
            axis: 0,
        };
        Ok(QTensor::from_int_repr(repr, qparams)?)
    }

    /// The bags' sums, `[bags, embedding_dim]`.
    fn sum_bags(&self, context: &'static str, bags: &Bags) -> GraphResult<ArrayD<f32>> {
        let shape = [bags.bounds.len(), self.cols];
        let mut out = memory::zeroed::<f32>(context, &shape)?;
        let bits = if self.dtype == QDType::QUInt4x2 { RowBits::Four } else { RowBits::Eight };
        let table = QuantRows::new(bits, self.cols, &self.packed, &self.kernel_scales, &self.kernel_biases)?;
        sum_bags(&table, &bags.rows, &bags.bounds, bags.weights.as_deref(), &mut out, Isa::active())?;
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("bags x dim"))
    }

    fn table(&self) -> EmbeddingOptions {
        EmbeddingOptions { num_embeddings: self.rows, embedding_dim: self.cols, padding_idx: None }
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        let bytes = self.packed.len().checked_div(self.rows).unwrap_or(0);
        let packed =
            ndarray::ArrayViewD::from_shape(IxDyn(&[self.rows, bytes]), &self.packed).expect("whole rows");
        vec![
            ("weight".to_string(), TensorView::U8(packed)),
            (
                "scales".to_string(),
                TensorView::F32(
                    ndarray::ArrayViewD::from_shape(IxDyn(&[self.rows]), &self.scales).expect("one per row"),
                ),
            ),
            (
                "zero_points".to_string(),
                TensorView::F32(
                    ndarray::ArrayViewD::from_shape(IxDyn(&[self.rows]), &self.zero_points)
                        .expect("one per row"),
                ),
            ),
        ]
    }

    fn from_tensors(t: &Tensors<'_>, config: &QuantizedTableConfig) -> GraphResult<Self> {
        let (rows, cols) = (config.num_embeddings, config.embedding_dim);
        let bytes = match config.dtype {
            QDType::QUInt8 => cols,
            QDType::QUInt4x2 => quint4x2_row_bytes(cols),
            other => {
                return Err(t.mismatch(format!("dtype {other} is not an embedding dtype (quint8, quint4x2)")));
            }
        };
        let packed = t.shaped::<u8>("weight", &[rows, bytes])?.into_raw_vec_and_offset().0;
        let scales = t.shaped::<f32>("scales", &[rows])?.into_raw_vec_and_offset().0;
        let zero_points = t.shaped::<f32>("zero_points", &[rows])?.into_raw_vec_and_offset().0;
        let weight = Self::assemble(config.dtype, cols, packed, scales, zero_points);
        // Checks the values and parameters as a quantized tensor would be checked.
        weight.to_qtensor().map_err(|e| t.mismatch(e.to_string()))?;
        Ok(weight)
    }

    /// The saved configuration of a module around this table (`mode` for a bag).
    fn config(&self, mode: Option<EmbeddingBagMode>, include_last_offset: bool) -> serde_json::Value {
        let [num_embeddings, embedding_dim] = self.shape();
        let config = QuantizedTableConfig {
            num_embeddings,
            embedding_dim,
            dtype: self.dtype,
            mode,
            include_last_offset,
        };
        serde_json::to_value(config).expect("plain data")
    }

    fn repr(&self) -> String {
        format!(
            "num_embeddings={}, embedding_dim={}, dtype={}, qscheme={}",
            self.rows,
            self.cols,
            self.dtype,
            QScheme::PerChannelAffineFloatQParams
        )
    }
}

/// The dtype a float-qparams weight observer quantizes to, if it is one of the embedding dtypes.
fn observer_dtype(spec: &ObserverSpec) -> GraphResult<QDType> {
    match spec.args().map(|a| a.dtype) {
        Some(dtype @ (QDType::QUInt8 | QDType::QUInt4x2)) => Ok(dtype),
        dtype => {
            let reason =
                "the only supported dtypes for quantized embeddings are torch.quint8 and torch.quint4x2";
            Err(invalid("quantize embedding weight", "weight observer dtype", dtype, reason))
        }
    }
}

/// What a quantized table saves besides its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct QuantizedTableConfig {
    num_embeddings: usize,
    embedding_dim: usize,
    dtype: QDType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<EmbeddingBagMode>,
    #[serde(default)]
    include_last_offset: bool,
}

/// A weight-only quantized `nn.Embedding` (`QuantizedEmbedding`): int64 indices of any shape
/// in, float32 rows out.
///
/// ```
/// use qgraph::nn::Embedding;
/// use qgraph::quantized::QuantizedEmbedding;
/// use qgraph::Module;
/// let float = Embedding::new(10, 12)?;
/// let q = QuantizedEmbedding::from_float(&float, &qobserve::defaults::default_float_qparams_observer())?;
/// assert_eq!(
///     (&q as &dyn Module).to_string(),
///     "QuantizedEmbedding(num_embeddings=10, embedding_dim=12, dtype=torch.quint8, \
///      qscheme=torch.per_channel_affine_float_qparams)"
/// );
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedEmbedding {
    weight: EmbeddingWeight,
}

impl QuantizedEmbedding {
    /// `nnq.Embedding.from_float`: the table quantized with the weight observer `spec`.
    /// PyTorch's own `from_float` labels a quint4x2 table quint8 and then reads its 4-bit rows as
    /// bytes; here a quint4x2 table is kept and run as 4-bit rows.
    pub fn from_float(float: &nn::Embedding, spec: &ObserverSpec) -> GraphResult<Self> {
        Ok(Self { weight: EmbeddingWeight::from_observer(float.weight(), spec)? })
    }

    /// A module around an already quantized table (`set_weight`).
    pub fn new(weight: EmbeddingWeight) -> Self {
        Self { weight }
    }

    /// The quantized table.
    pub fn weight(&self) -> &EmbeddingWeight {
        &self.weight
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let config: QuantizedTableConfig = record.config()?;
        Ok(Self { weight: EmbeddingWeight::from_tensors(&record.tensors, &config)? })
    }
}

impl Module for QuantizedEmbedding {
    fn type_name(&self) -> &str {
        "QuantizedEmbedding"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        const CONTEXT: &str = "QuantizedEmbedding";
        let indices = input.into_int(CONTEXT)?;
        let table = self.weight.table();
        let rows = indices.iter().map(|&i| table.row(CONTEXT, i)).collect::<GraphResult<Vec<_>>>()?;
        // `embedding_byte` / `embedding_4bit`: one bag per index.
        let bags = Bags { bounds: (0..rows.len()).map(|k| (k, k + 1)).collect(), rows, weights: None };
        let out = self.weight.sum_bags(CONTEXT, &bags)?;
        let mut shape = indices.shape().to_vec();
        shape.push(table.embedding_dim);
        Ok(Value::Float(out.into_shape_with_order(IxDyn(&shape)).expect("one row per index")))
    }

    fn extra_repr(&self) -> String {
        self.weight.repr()
    }

    fn config(&self) -> serde_json::Value {
        self.weight.config(None, false)
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.weight.tensors()
    }
}

/// A weight-only quantized `nn.EmbeddingBag` (`QuantizedEmbeddingBag`), taking the inputs of
/// [`nn::EmbeddingBag`]. As in PyTorch, whose forward passes mode 0 to
/// `embedding_bag_byte` / `embedding_bag_4bit`, every bag is **summed** whatever `mode` says,
/// and `padding_idx` is not kept by `from_float`.
///
/// ```
/// use qgraph::nn::{EmbeddingBag, EmbeddingBagMode};
/// use qgraph::quantized::QuantizedEmbeddingBag;
/// use qgraph::Module;
/// let float = EmbeddingBag::new(10, 12, EmbeddingBagMode::Sum)?;
/// let q = QuantizedEmbeddingBag::from_float(&float, &qobserve::defaults::default_float_qparams_observer_4bit())?;
/// assert_eq!(
///     (&q as &dyn Module).to_string(),
///     "QuantizedEmbeddingBag(num_embeddings=10, embedding_dim=12, dtype=torch.quint4x2, \
///      qscheme=torch.per_channel_affine_float_qparams)"
/// );
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedEmbeddingBag {
    weight: EmbeddingWeight,
    mode: EmbeddingBagMode,
    include_last_offset: bool,
}

impl QuantizedEmbeddingBag {
    /// `nnq.EmbeddingBag.from_float`: the table quantized with the weight observer `spec`,
    /// `mode` and `include_last_offset` kept.
    pub fn from_float(float: &nn::EmbeddingBag, spec: &ObserverSpec) -> GraphResult<Self> {
        let o = float.options();
        Ok(Self {
            weight: EmbeddingWeight::from_observer(float.weight(), spec)?,
            mode: o.mode,
            include_last_offset: o.include_last_offset,
        })
    }

    /// A module around an already quantized table (`set_weight`).
    pub fn new(weight: EmbeddingWeight, mode: EmbeddingBagMode, include_last_offset: bool) -> Self {
        Self { weight, mode, include_last_offset }
    }

    /// The quantized table.
    pub fn weight(&self) -> &EmbeddingWeight {
        &self.weight
    }

    /// The mode the float module had (the forward sums in every mode, as PyTorch's).
    pub fn mode(&self) -> EmbeddingBagMode {
        self.mode
    }

    /// Rebuilds a saved module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let config: QuantizedTableConfig = record.config()?;
        let weight = EmbeddingWeight::from_tensors(&record.tensors, &config)?;
        let mode =
            config.mode.ok_or_else(|| record.tensors.mismatch("the configuration has no mode".into()))?;
        Ok(Self { weight, mode, include_last_offset: config.include_last_offset })
    }
}

impl Module for QuantizedEmbeddingBag {
    fn type_name(&self) -> &str {
        "QuantizedEmbeddingBag"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        const CONTEXT: &str = "QuantizedEmbeddingBag";
        let bags = Bags::parse(CONTEXT, input, &self.weight.table(), self.include_last_offset)?;
        Ok(Value::Float(self.weight.sum_bags(CONTEXT, &bags)?))
    }

    fn extra_repr(&self) -> String {
        self.weight.repr()
    }

    fn config(&self) -> serde_json::Value {
        self.weight.config(Some(self.mode), self.include_last_offset)
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.weight.tensors()
    }
}
