//! `nn.Embedding` and `nn.EmbeddingBag`: rows of a `[num_embeddings, embedding_dim]` table
//! looked up by int64 indices ([`Value::Int`]), and reduced per bag (sum, mean, max).
//!
//! Not modelled: `max_norm` (PyTorch renormalizes the looked-up rows of the weight in place
//! during forward), `norm_type`, `scale_grad_by_freq` and `sparse` (training only).

use std::fmt;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::init::standard_normal;
use crate::record::{Record, TensorView};
use crate::{GraphError, GraphResult, Module, Value, invalid, memory};

/// The size arguments and `padding_idx` of an embedding table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingOptions {
    /// Rows of the table.
    pub num_embeddings: usize,
    /// Columns of the table: the size of each embedding.
    pub embedding_dim: usize,
    /// The row that does not contribute (normalized: a negative index counts from the end).
    pub padding_idx: Option<usize>,
}

impl EmbeddingOptions {
    /// Checks and normalizes `padding_idx` as PyTorch does: it must lie in
    /// `-num_embeddings..num_embeddings`; a negative one counts from the end.
    pub fn new(
        context: &'static str,
        num_embeddings: usize,
        embedding_dim: usize,
        padding_idx: Option<i64>,
    ) -> GraphResult<Self> {
        super::check_sizes(context, "num_embeddings, embedding_dim", &[num_embeddings, embedding_dim], 0)?;
        let n = num_embeddings as i64;
        let padding_idx = match padding_idx {
            None => None,
            Some(p) if (-n..n).contains(&p) => Some(if p < 0 { p + n } else { p } as usize),
            Some(p) => {
                let reason = format!("padding_idx must be within num_embeddings ({}..{n})", -n);
                return Err(invalid(context, "padding_idx", p, reason));
            }
        };
        Ok(Self { num_embeddings, embedding_dim, padding_idx })
    }

    /// The shape of the table.
    pub fn weight_shape(&self) -> [usize; 2] {
        [self.num_embeddings, self.embedding_dim]
    }

    /// Index `i` as a row, or an error naming it and `num_embeddings`.
    pub fn row(&self, context: &'static str, i: i64) -> GraphResult<usize> {
        if (0..self.num_embeddings as i64).contains(&i) {
            Ok(i as usize)
        } else {
            Err(GraphError::InvalidArgument {
                context,
                what: "index",
                value: i.to_string(),
                reason: format!(
                    "it is out of range: num_embeddings is {}, so indices must lie in 0..{}",
                    self.num_embeddings, self.num_embeddings
                ),
            })
        }
    }

    /// Checks a weight's shape against the table's.
    fn check_weight(&self, context: &'static str, shape: &[usize]) -> GraphResult<()> {
        if shape != self.weight_shape() {
            return Err(GraphError::Mismatch {
                context,
                reason: format!(
                    "the weight has shape {shape:?} but num_embeddings and embedding_dim give {:?}",
                    self.weight_shape()
                ),
            });
        }
        Ok(())
    }

    /// `N, D` and `, padding_idx=P`, as PyTorch prints them.
    fn repr(&self, mode: Option<EmbeddingBagMode>) -> String {
        let mut s = format!("{}, {}", self.num_embeddings, self.embedding_dim);
        if let Some(mode) = mode {
            s += &format!(", mode='{mode}'");
        }
        if let Some(p) = self.padding_idx {
            s += &format!(", padding_idx={p}");
        }
        s
    }
}

/// `nn.Embedding(num_embeddings, embedding_dim, padding_idx)` in f32: `out[..., :] =
/// weight[index, :]` for every index of an int64 tensor of any shape.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qgraph::nn::Embedding;
/// use qgraph::{Module, Value};
/// let emb = Embedding::new(10, 3)?.with_padding_idx(Some(-1))?;
/// assert_eq!((&emb as &dyn Module).to_string(), "Embedding(10, 3, padding_idx=9)");
/// let indices = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0i64, 9, 4, 4]).unwrap();
/// let out = emb.forward(Value::Int(indices))?.into_float("test")?;
/// assert_eq!(out.shape(), &[2, 2, 3]);
/// assert!(out.slice(ndarray::s![0, 1, ..]).iter().all(|&v| v == 0.0));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Embedding {
    options: EmbeddingOptions,
    weight: ArrayD<f32>,
    training: bool,
}

impl Embedding {
    /// A table drawn from `N(0, 1)` (PyTorch's initialisation) from the
    /// [`manual_seed`](super::manual_seed) stream.
    pub fn new(num_embeddings: usize, embedding_dim: usize) -> GraphResult<Self> {
        let options = EmbeddingOptions::new("Embedding", num_embeddings, embedding_dim, None)?;
        let weight = standard_normal(&options.weight_shape());
        Ok(Self { options, weight, training: true })
    }

    /// Sets `padding_idx` and zeroes that row, as PyTorch's constructor does.
    pub fn with_padding_idx(mut self, padding_idx: Option<i64>) -> GraphResult<Self> {
        let o = self.options;
        self.options = EmbeddingOptions::new("Embedding", o.num_embeddings, o.embedding_dim, padding_idx)?;
        zero_padding_row(&mut self.weight, self.options.padding_idx);
        Ok(self)
    }

    /// Replaces the table (PyTorch's `_weight` argument: the padding row is kept as given).
    pub fn with_weight(mut self, weight: ArrayD<f32>) -> GraphResult<Self> {
        self.options.check_weight("Embedding", weight.shape())?;
        self.weight = weight.as_standard_layout().into_owned();
        Ok(self)
    }

    /// The options.
    pub fn options(&self) -> &EmbeddingOptions {
        &self.options
    }

    /// The table `[num_embeddings, embedding_dim]`.
    pub fn weight(&self) -> &ArrayD<f32> {
        &self.weight
    }

    /// Rebuilds a saved table (in eval mode).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let options: EmbeddingOptions = record.config()?;
        let weight = read_table(&record, &options)?;
        Ok(Self { options, weight, training: false })
    }
}

/// Zeroes row `padding_idx` of a table.
fn zero_padding_row(weight: &mut ArrayD<f32>, padding_idx: Option<usize>) {
    if let Some(p) = padding_idx {
        weight.index_axis_mut(ndarray::Axis(0), p).fill(0.0);
    }
}

/// The saved `weight` of a table, checked against its options.
fn read_table(record: &Record<'_>, options: &EmbeddingOptions) -> GraphResult<ArrayD<f32>> {
    EmbeddingOptions::new(
        "load",
        options.num_embeddings,
        options.embedding_dim,
        options.padding_idx.map(|p| p as i64),
    )
    .map_err(|e| record.tensors.mismatch(e.to_string()))?;
    record.tensors.shaped::<f32>("weight", &options.weight_shape())
}

/// The `Module` methods both float tables have alike.
macro_rules! table_module {
    () => {
        fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
            vec![("weight", &self.weight)]
        }

        fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
            vec![("weight", &mut self.weight)]
        }

        training_field!();

        fn config(&self) -> serde_json::Value {
            serde_json::to_value(&self.options).expect("plain data")
        }

        fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
            vec![("weight".to_string(), TensorView::F32(self.weight.view()))]
        }
    };
}

impl Module for Embedding {
    fn type_name(&self) -> &str {
        "Embedding"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let indices = input.into_int("Embedding")?;
        let d = self.options.embedding_dim;
        let rows =
            indices.iter().map(|&i| self.options.row("Embedding", i)).collect::<GraphResult<Vec<_>>>()?;
        let mut shape = indices.shape().to_vec();
        shape.push(d);
        let mut out = memory::zeroed::<f32>("Embedding", &shape)?;
        let table = self.weight.as_slice().expect("standard layout");
        for (dst, &row) in out.chunks_mut(d.max(1)).zip(&rows) {
            dst.copy_from_slice(&table[row * d..(row + 1) * d]);
        }
        Ok(Value::Float(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("indices x dim")))
    }

    fn extra_repr(&self) -> String {
        self.options.repr(None)
    }

    table_module!();
}

/// How an `EmbeddingBag` reduces each bag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingBagMode {
    /// The sum of the rows (weighted by `per_sample_weights` if given).
    Sum,
    /// The mean of the rows.
    Mean,
    /// The elementwise maximum of the rows.
    Max,
}

impl fmt::Display for EmbeddingBagMode {
    /// PyTorch's spelling: `sum`, `mean`, `max`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EmbeddingBagMode::Sum => "sum",
            EmbeddingBagMode::Mean => "mean",
            EmbeddingBagMode::Max => "max",
        })
    }
}

/// The configuration of an `EmbeddingBag` (float or quantized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingBagOptions {
    /// The table's sizes and padding row.
    pub table: EmbeddingOptions,
    /// The reduction.
    pub mode: EmbeddingBagMode,
    /// True if `offsets` ends with the end of the last bag (then it has one entry per bag plus one).
    pub include_last_offset: bool,
}

/// The bags of one forward: each index checked, each bag a range of `rows`, and the
/// per-sample weights if given.
#[derive(Debug)]
pub struct Bags {
    /// The table row of each index.
    pub rows: Vec<usize>,
    /// The start and end of each bag in `rows`.
    pub bounds: Vec<(usize, usize)>,
    /// One weight per index (`per_sample_weights`).
    pub weights: Option<Vec<f32>>,
}

impl Bags {
    /// Reads `input` as PyTorch's `forward(input, offsets=None, per_sample_weights=None)`: a 2-D
    /// int64 tensor `[B, L]` (B bags of L), or a tuple `(input, offsets)`,
    /// `(input, offsets, per_sample_weights)` or `(2-D input, per_sample_weights)`.
    pub fn parse(
        context: &'static str,
        input: Value,
        options: &EmbeddingOptions,
        include_last_offset: bool,
    ) -> GraphResult<Self> {
        let fix = "pass a 2-D int64 tensor, or a tuple (indices, offsets[, per_sample_weights]) of a 1-D \
                   int64 tensor, 1-D int64 offsets and float32 weights shaped as the indices";
        let (indices, offsets, weights) = match input {
            Value::Int(x) => (x, None, None),
            Value::Tuple(items) => {
                let described = Value::Tuple(items.clone());
                let mut items = items.into_iter();
                let (first, second, third) = (items.next(), items.next(), items.next());
                match (first, second, third, items.next()) {
                    (Some(Value::Int(x)), Some(Value::Int(o)), None, None) => (x, Some(o), None),
                    (Some(Value::Int(x)), Some(Value::Int(o)), Some(Value::Float(w)), None) => {
                        (x, Some(o), Some(w))
                    }
                    (Some(Value::Int(x)), Some(Value::Float(w)), None, None) => (x, None, Some(w)),
                    _ => {
                        return Err(described.unsupported(
                            context,
                            "indices, offsets and per-sample weights",
                            fix,
                        ));
                    }
                }
            }
            other => return Err(other.unsupported(context, "int64 indices", fix)),
        };
        if let Some(w) = &weights
            && w.shape() != indices.shape()
        {
            return Err(GraphError::Mismatch {
                context,
                reason: format!(
                    "per_sample_weights has shape {:?} but the input has shape {:?}; give one weight per index",
                    w.shape(),
                    indices.shape()
                ),
            });
        }
        let rows = indices.iter().map(|&i| options.row(context, i)).collect::<GraphResult<Vec<_>>>()?;
        let bounds = match (indices.ndim(), offsets) {
            (2, None) => {
                let len = indices.shape()[1];
                (0..indices.shape()[0]).map(|b| (b * len, (b + 1) * len)).collect()
            }
            (2, Some(_)) => {
                return Err(invalid(
                    context,
                    "offsets",
                    "given",
                    "if the input is 2-D, offsets has to be None",
                ));
            }
            (1, Some(offsets)) => bounds_of(context, &offsets, rows.len(), include_last_offset)?,
            (1, None) => {
                return Err(invalid(
                    context,
                    "offsets",
                    "None",
                    "a 1-D input needs 1-D offsets; pass (input, offsets)",
                ));
            }
            (ndim, _) => {
                return Err(invalid(context, "input rank", ndim, "the input has to be a 1-D or 2-D tensor"));
            }
        };
        let weights = weights.map(|w| w.as_standard_layout().iter().copied().collect());
        Ok(Self { rows, bounds, weights })
    }
}

/// The bags `offsets` cuts `len` indices into, with PyTorch's checks.
fn bounds_of(
    context: &'static str,
    offsets: &ArrayD<i64>,
    len: usize,
    include_last_offset: bool,
) -> GraphResult<Vec<(usize, usize)>> {
    if offsets.ndim() != 1 {
        return Err(invalid(context, "offsets rank", offsets.ndim(), "offsets has to be a 1-D tensor"));
    }
    let offsets: Vec<i64> = offsets.iter().copied().collect();
    if let Some(&first) = offsets.first()
        && first != 0
    {
        let reason = "offsets[0] has to be 0: the first bag starts at position 0";
        return Err(invalid(context, "offsets[0]", first, reason));
    }
    if let Some(&last) = offsets.last()
        && last > len as i64
    {
        let reason = format!("offsets[-1] can not be greater than the input's length ({len})");
        return Err(invalid(context, "offsets[-1]", last, reason));
    }
    if let Some(w) = offsets.windows(2).find(|w| w[1] < w[0]) {
        return Err(invalid(context, "offsets", w, "offsets must be non-decreasing"));
    }
    let bags = if include_last_offset { offsets.len().saturating_sub(1) } else { offsets.len() };
    Ok((0..bags)
        .map(|b| {
            let end = offsets.get(b + 1).map_or(len, |&e| e as usize);
            (offsets[b] as usize, end)
        })
        .collect())
}

/// `nn.EmbeddingBag(num_embeddings, embedding_dim, mode, include_last_offset, padding_idx)` in
/// f32: each bag of indices reduced to one row, as PyTorch's CPU kernel does: `sum` adds the rows
/// in order (with per-sample weights `fma(weight, row, acc)`, or `acc + row * weight` when a
/// `padding_idx` is set, which sends PyTorch to its generic loop), `mean` divides the sum by the
/// number of indices that are not `padding_idx`, `max` takes the elementwise maximum; an
/// empty bag (or one of padding only) gives zeros.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qgraph::nn::{EmbeddingBag, EmbeddingBagMode};
/// use qgraph::{Module, Value};
/// let bag = EmbeddingBag::new(10, 3, EmbeddingBagMode::Mean)?;
/// assert_eq!((&bag as &dyn Module).to_string(), "EmbeddingBag(10, 3, mode='mean')");
/// let indices = ArrayD::from_shape_vec(IxDyn(&[5]), vec![1i64, 2, 4, 5, 4]).unwrap();
/// let offsets = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0i64, 2]).unwrap();
/// let out = bag.forward(Value::Tuple(vec![Value::Int(indices), Value::Int(offsets)]))?;
/// assert_eq!(out.shape()?, &[2, 3]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddingBag {
    options: EmbeddingBagOptions,
    weight: ArrayD<f32>,
    training: bool,
}

impl EmbeddingBag {
    /// A table drawn from `N(0, 1)` from the [`manual_seed`](super::manual_seed) stream, offsets
    /// without the last one, no padding row.
    pub fn new(num_embeddings: usize, embedding_dim: usize, mode: EmbeddingBagMode) -> GraphResult<Self> {
        let table = EmbeddingOptions::new("EmbeddingBag", num_embeddings, embedding_dim, None)?;
        let weight = standard_normal(&table.weight_shape());
        Ok(Self {
            options: EmbeddingBagOptions { table, mode, include_last_offset: false },
            weight,
            training: true,
        })
    }

    /// Sets `include_last_offset`.
    pub fn with_include_last_offset(mut self, include_last_offset: bool) -> Self {
        self.options.include_last_offset = include_last_offset;
        self
    }

    /// Sets `padding_idx` and zeroes that row, as PyTorch's constructor does.
    pub fn with_padding_idx(mut self, padding_idx: Option<i64>) -> GraphResult<Self> {
        let t = self.options.table;
        self.options.table =
            EmbeddingOptions::new("EmbeddingBag", t.num_embeddings, t.embedding_dim, padding_idx)?;
        zero_padding_row(&mut self.weight, self.options.table.padding_idx);
        Ok(self)
    }

    /// Replaces the table (PyTorch's `_weight` argument: the padding row is kept as given).
    pub fn with_weight(mut self, weight: ArrayD<f32>) -> GraphResult<Self> {
        self.options.table.check_weight("EmbeddingBag", weight.shape())?;
        self.weight = weight.as_standard_layout().into_owned();
        Ok(self)
    }

    /// The options.
    pub fn options(&self) -> &EmbeddingBagOptions {
        &self.options
    }

    /// The table `[num_embeddings, embedding_dim]`.
    pub fn weight(&self) -> &ArrayD<f32> {
        &self.weight
    }

    /// Rebuilds a saved layer (in eval mode).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let options: EmbeddingBagOptions = record.config()?;
        let weight = read_table(&record, &options.table)?;
        Ok(Self { options, weight, training: false })
    }

    /// The forward on bags [`Bags::parse`] read: one row per bag.
    pub fn run(&self, bags: &Bags) -> GraphResult<ArrayD<f32>> {
        let d = self.options.table.embedding_dim;
        let padding = self.options.table.padding_idx;
        let mode = self.options.mode;
        if bags.weights.is_some() && mode != EmbeddingBagMode::Sum {
            return Err(invalid(
                "EmbeddingBag",
                "per_sample_weights",
                "given",
                format!("per_sample_weights is only supported for mode='sum' (got mode='{mode}')"),
            ));
        }
        let shape = [bags.bounds.len(), d];
        let mut out = memory::zeroed::<f32>("EmbeddingBag", &shape)?;
        let table = self.weight.as_slice().expect("standard layout");
        for (acc, &(start, end)) in out.chunks_mut(d.max(1)).zip(&bags.bounds) {
            let mut count = 0usize;
            for k in start..end {
                let row = bags.rows[k];
                if Some(row) == padding {
                    continue;
                }
                let values = &table[row * d..(row + 1) * d];
                match (mode, &bags.weights) {
                    (EmbeddingBagMode::Max, _) if count == 0 => acc.copy_from_slice(values),
                    (EmbeddingBagMode::Max, _) => {
                        acc.iter_mut().zip(values).for_each(|(a, &v)| *a = if v > *a { v } else { *a })
                    }
                    // FBGEMM's kernel (no padding row) fuses; PyTorch's generic loop does not.
                    (_, Some(w)) if padding.is_some() => {
                        acc.iter_mut().zip(values).for_each(|(a, &v)| *a += v * w[k])
                    }
                    (_, Some(w)) => acc.iter_mut().zip(values).for_each(|(a, &v)| *a = w[k].mul_add(v, *a)),
                    (_, None) => acc.iter_mut().zip(values).for_each(|(a, &v)| *a += v),
                }
                count += 1;
            }
            if mode == EmbeddingBagMode::Mean && count > 0 {
                let n = count as f32;
                acc.iter_mut().for_each(|a| *a /= n);
            }
        }
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("bags x dim"))
    }
}

impl Module for EmbeddingBag {
    fn type_name(&self) -> &str {
        "EmbeddingBag"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let o = &self.options;
        let bags = Bags::parse("EmbeddingBag", input, &o.table, o.include_last_offset)?;
        Ok(Value::Float(self.run(&bags)?))
    }

    fn extra_repr(&self) -> String {
        self.options.table.repr(Some(self.options.mode))
    }

    table_module!();
}
