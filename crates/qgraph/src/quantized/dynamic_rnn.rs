//! `nnqd.LSTM`, `nnqd.GRU`, `nnqd.LSTMCell`, `nnqd.GRUCell` and `nnqd.RNNCell`: recurrent modules
//! with dynamically quantized (qint8 per tensor or per channel) or float16 weights, float in and
//! float out, as PyTorch 2.15's `quantized_lstm` / `quantized_gru` (`use_dynamic=True`) and
//! `quantized_*_cell_dynamic` on FBGEMM.
//!
//! They run the float recurrence of [`crate::nn`] (ATen's `FullLayer`, `FullBidirectionalLayer`
//! and cells, the same gate math) with a [`DynamicProjection`] in place of the f32 one: ATen's
//! `QuantizedCellParamsDynamic::linear_ih` / `linear_hh` are the packed weight's
//! `apply_dynamic(input, reduce_range=true)` with the bias packed in (`QuantizedCellParamsFP16`:
//! the fp16 linear). As on ATen's CPU path, a layer projects its whole input sequence in one call,
//! so the input projection's activation range is taken over all steps; the hidden projection
//! quantizes each step's `h` on its own range.

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use super::dynamic_linear::{DynDType, weight_dtype};
use super::{DynamicQuantizedLinear, QuantizedWeight};
use crate::nn::{
    CellOptions, CellParams, FloatProjection, GRU, GRUCell, GateProjection, LSTM, LSTMCell, RNNCell, RnnMode,
    RnnOptions, forward_cell, forward_rnn,
};
use crate::qconfig::QConfig;
use crate::record::{Record, TensorView, Tensors};
use crate::{GraphResult, Module, Value, invalid};

/// One gate projection of a dynamic recurrent layer (`linear_ih` or `linear_hh`): a
/// [`DynamicQuantizedLinear`] without ReLU. qint8 weights quantize the input per call with
/// `reduce_range=True` (what the version-2 modules and the dynamic cell ops pass); float16
/// weights run the fp16 GEMM. After the first call of a shape a projection allocates nothing.
///
/// ```
/// use ndarray::{ArrayD, IxDyn, array};
/// use qgraph::nn::{FloatProjection, GateProjection};
/// use qgraph::qconfig::float16_dynamic_qconfig;
/// use qgraph::quantized::DynamicProjection;
/// let float = FloatProjection::new(ArrayD::ones(IxDyn(&[2, 3])), Some(ArrayD::zeros(IxDyn(&[2]))))?;
/// let p = DynamicProjection::from_float(&float, &float16_dynamic_qconfig(), "LSTM")?;
/// assert_eq!(p.project(array![[1.0, 2.0, 3.0]].view())?, array![[6.0, 6.0]]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct DynamicProjection {
    linear: DynamicQuantizedLinear,
}

impl DynamicProjection {
    /// As PyTorch's `from_float` for one weight: a fresh weight observer of `qconfig` sees it and
    /// quantizes it (`_quantize_weight`), or (float16) it is kept and rounded when packed; the
    /// float bias is packed with it. `module` names the caller in errors.
    ///
    /// Errors: a weight observer neither qint8 nor float16 (PyTorch: "Unsupported dtype for
    /// dynamic RNN quantization").
    pub fn from_float(float: &FloatProjection, qconfig: &QConfig, module: &'static str) -> GraphResult<Self> {
        let weight = match rnn_weight_dtype(qconfig, module)? {
            DynDType::Qint8 => Err(QuantizedWeight::from_observer(float.weight(), &qconfig.weight)?),
            DynDType::Float16 => Ok(float.weight().clone()),
        };
        Self::from_parts(float.in_features(), float.out_features(), weight, float.bias().cloned())
    }

    fn from_parts(
        in_features: usize,
        out_features: usize,
        weight: Result<ArrayD<f32>, QuantizedWeight>,
        bias: Option<ArrayD<f32>>,
    ) -> GraphResult<Self> {
        let linear = DynamicQuantizedLinear::from_parts(in_features, out_features, false, weight, bias)?;
        Ok(Self { linear })
    }

    /// The qint8 weight, or `None` for float16 weights.
    pub fn quantized_weight(&self) -> Option<&QuantizedWeight> {
        self.linear.quantized_weight()
    }

    /// The float bias.
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.linear.bias()
    }

    /// The tensors to save, each name behind `prefix`.
    fn tensors(&self, prefix: &str) -> Vec<(String, TensorView<'_>)> {
        self.linear.tensors().into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect()
    }

    /// Reads what [`tensors`](Self::tensors) saved under `prefix`, for a weight `shape`.
    fn from_tensors(t: &Tensors<'_>, prefix: &str, shape: [usize; 2], kind: Kind) -> GraphResult<Self> {
        let name = |n: &str| format!("{prefix}{n}");
        let weight = match kind.dtype {
            DynDType::Qint8 => {
                let int = t.shaped::<i8>(&name("weight"), &shape)?;
                let count = if kind.per_channel { shape[0] } else { 1 };
                let scales = t.shaped::<f64>(&name("weight_scale"), &[count])?.into_raw_vec_and_offset().0;
                let zps = t.shaped::<i64>(&name("weight_zero_point"), &[count])?.into_raw_vec_and_offset().0;
                let q = QuantizedWeight::new(int, scales, zps, kind.per_channel)
                    .map_err(|e| t.mismatch(e.to_string()))?;
                Err(q)
            }
            DynDType::Float16 => Ok(t.shaped::<f32>(&name("weight"), &shape)?),
        };
        let bias = t.shaped::<f32>(&name("bias"), &shape[..1])?;
        Self::from_parts(shape[1], shape[0], weight, Some(bias))
    }
}

impl GateProjection for DynamicProjection {
    fn in_features(&self) -> usize {
        self.linear.in_features()
    }

    fn out_features(&self) -> usize {
        self.linear.out_features()
    }

    fn project_into(&self, x: &[f32], rows: usize, out: &mut [f32]) -> GraphResult<()> {
        self.linear.run_into(x, rows, out)
    }
}

/// The weight dtype of a dynamic recurrent module's qconfig: qint8 or float16.
fn rnn_weight_dtype(qconfig: &QConfig, module: &'static str) -> GraphResult<DynDType> {
    weight_dtype(&qconfig.weight).map_err(|_| {
        invalid(
            module,
            "weight observer",
            qconfig.weight.name(),
            "Unsupported dtype for dynamic RNN quantization: the weight observer must be qint8 or float16; \
             use default_dynamic_qconfig(), per_channel_dynamic_qconfig() or float16_dynamic_qconfig()",
        )
    })
}

/// The weight kind of a whole module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Kind {
    dtype: DynDType,
    per_channel: bool,
}

impl Kind {
    fn of(p: &DynamicProjection) -> Self {
        match p.quantized_weight() {
            Some(w) => Kind { dtype: DynDType::Qint8, per_channel: w.is_per_channel() },
            None => Kind { dtype: DynDType::Float16, per_channel: false },
        }
    }
}

/// What a dynamic recurrent module saves besides its tensors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Saved<O> {
    mode: RnnMode,
    options: O,
    kind: Kind,
}

/// `RnnOptions` (multi-layer modules) or `CellOptions` (cells): what differs between the two.
trait Shape: Copy + Serialize + serde::de::DeserializeOwned + Send + Sync + std::fmt::Debug + 'static {
    /// PyTorch's class name (`_get_name`).
    fn class_name(mode: RnnMode) -> &'static str;

    /// Per cell (layer-major, forward then reverse): the prefix of its saved tensors and the
    /// shapes of `weight_ih` and `weight_hh`.
    fn cells(&self, mode: RnnMode) -> Vec<(String, [usize; 2], [usize; 2])>;

    fn extra_repr(&self, mode: RnnMode) -> String;

    /// The input rank the module takes: PyTorch's dynamic modules take batched inputs only
    /// (`check_input`: 3 dimensions; the cells read `input.size(1)`).
    const INPUT_RANK: usize;

    /// The float recurrence's forward with these projections.
    fn run(&self, mode: RnnMode, cells: Cells<'_>, input: Value) -> GraphResult<Value>;

    /// [`run`](Self::run) after the input rank check.
    fn forward(&self, mode: RnnMode, cells: Cells<'_>, input: Value) -> GraphResult<Value> {
        if let Some(rank) = input_rank(&input)
            && rank != Self::INPUT_RANK
        {
            return Err(invalid(
                Self::class_name(mode),
                "input rank",
                rank,
                format!(
                    "input must have {} dimensions, got {rank}; add the batch dimension (dynamic modules take batched input only)",
                    Self::INPUT_RANK
                ),
            ));
        }
        self.run(mode, cells, input)
    }
}

/// The projections of a dynamic module's cells.
type Cells<'a> = &'a [CellParams<DynamicProjection>];

/// The rank of a module's input tensor: the tensor itself or a tuple's first item.
fn input_rank(input: &Value) -> Option<usize> {
    match input {
        Value::Tuple(items) => items.first().and_then(|x| x.shape().ok()).map(<[usize]>::len),
        x => x.shape().ok().map(<[usize]>::len),
    }
}

impl Shape for RnnOptions {
    const INPUT_RANK: usize = 3;

    fn class_name(mode: RnnMode) -> &'static str {
        match mode {
            RnnMode::Lstm => "DynamicQuantizedLSTM",
            _ => "DynamicQuantizedGRU",
        }
    }

    fn cells(&self, mode: RnnMode) -> Vec<(String, [usize; 2], [usize; 2])> {
        let g = mode.gates() * self.hidden_size;
        let mut out = Vec::new();
        for layer in 0..self.num_layers {
            for d in 0..self.num_directions() {
                let suffix = if d == 1 { "_reverse" } else { "" };
                out.push((
                    format!("l{layer}{suffix}."),
                    [g, self.layer_input_size(layer)],
                    [g, self.hidden_size],
                ));
            }
        }
        out
    }

    fn extra_repr(&self, _mode: RnnMode) -> String {
        RnnOptions::extra_repr(self)
    }

    fn run(&self, mode: RnnMode, cells: Cells<'_>, input: Value) -> GraphResult<Value> {
        forward_rnn(mode, self, cells, false, input)
    }
}

impl Shape for CellOptions {
    const INPUT_RANK: usize = 2;

    fn class_name(mode: RnnMode) -> &'static str {
        match mode {
            RnnMode::Lstm => "DynamicQuantizedLSTMCell",
            RnnMode::Gru => "DynamicQuantizedGRUCell",
            RnnMode::RnnTanh | RnnMode::RnnRelu => "DynamicQuantizedRNNCell",
        }
    }

    fn cells(&self, mode: RnnMode) -> Vec<(String, [usize; 2], [usize; 2])> {
        let g = mode.gates() * self.hidden_size;
        vec![(String::new(), [g, self.input_size], [g, self.hidden_size])]
    }

    fn extra_repr(&self, mode: RnnMode) -> String {
        let mut s = format!("{}, {}", self.input_size, self.hidden_size);
        if mode == RnnMode::RnnRelu {
            s += ", nonlinearity=relu";
        }
        s
    }

    fn run(&self, mode: RnnMode, cells: Cells<'_>, input: Value) -> GraphResult<Value> {
        forward_cell(mode, self, &cells[0], input)
    }
}

/// A dynamic recurrent module of options `O`: its cells' projections (one cell for the `*Cell`
/// modules).
#[derive(Debug, Clone)]
struct DynamicRecurrent<O> {
    mode: RnnMode,
    options: O,
    kind: Kind,
    cells: Vec<CellParams<DynamicProjection>>,
}

impl<O: Shape> DynamicRecurrent<O> {
    /// As `from_float`: bias required, every weight observed and quantized on its own.
    fn from_float(
        mode: RnnMode,
        options: O,
        bias: bool,
        float: &[CellParams<FloatProjection>],
        qconfig: &QConfig,
    ) -> GraphResult<Self> {
        let name = O::class_name(mode);
        rnn_weight_dtype(qconfig, name)?;
        if !bias {
            return Err(invalid(
                name,
                "bias",
                false,
                "mod.bias must be True: PyTorch's dynamic recurrent modules need biases; build the float module with bias",
            ));
        }
        let cells = float
            .iter()
            .map(|c| {
                if c.hr.is_some() {
                    return Err(invalid(
                        name,
                        "proj_size",
                        c.hr.as_ref().map(GateProjection::out_features),
                        "quantized LSTM with projections is not supported; use proj_size 0",
                    ));
                }
                Ok(CellParams {
                    ih: DynamicProjection::from_float(&c.ih, qconfig, name)?,
                    hh: DynamicProjection::from_float(&c.hh, qconfig, name)?,
                    hr: None,
                })
            })
            .collect::<GraphResult<Vec<_>>>()?;
        let kind = Kind::of(&cells[0].ih);
        Ok(Self { mode, options, kind, cells })
    }

    fn from_record(record: Record<'_>, modes: &[RnnMode]) -> GraphResult<Self> {
        let saved: Saved<O> = record.config()?;
        if !modes.contains(&saved.mode) {
            return Err(record.tensors.mismatch(format!(
                "configuration mode {:?} is not a {}; the file is inconsistent, re-save it",
                saved.mode,
                O::class_name(modes[0])
            )));
        }
        let t = &record.tensors;
        let cells = saved
            .options
            .cells(saved.mode)
            .into_iter()
            .map(|(prefix, ih, hh)| {
                Ok(CellParams {
                    ih: DynamicProjection::from_tensors(t, &format!("{prefix}ih."), ih, saved.kind)?,
                    hh: DynamicProjection::from_tensors(t, &format!("{prefix}hh."), hh, saved.kind)?,
                    hr: None,
                })
            })
            .collect::<GraphResult<Vec<_>>>()?;
        Ok(Self { mode: saved.mode, options: saved.options, kind: saved.kind, cells })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(Saved { mode: self.mode, options: self.options, kind: self.kind })
            .expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        let prefixes = self.options.cells(self.mode);
        let mut out = Vec::new();
        for (c, (prefix, ..)) in self.cells.iter().zip(prefixes) {
            out.extend(c.ih.tensors(&format!("{prefix}ih.")));
            out.extend(c.hh.tensors(&format!("{prefix}hh.")));
        }
        out
    }
}

/// Defines a public dynamic recurrent module over [`DynamicRecurrent`].
macro_rules! dynamic_recurrent {
    ($(#[$doc:meta])* $name:ident($options:ty), $modes:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(DynamicRecurrent<$options>);

        impl $name {
            /// The options.
            pub fn options(&self) -> &$options {
                &self.0.options
            }

            /// The recurrence this module runs.
            pub fn mode(&self) -> RnnMode {
                self.0.mode
            }

            /// The projections of every cell (layer-major, forward direction first).
            pub fn cells(&self) -> &[CellParams<DynamicProjection>] {
                &self.0.cells
            }

            /// Rebuilds a saved module, re-packing its weights.
            pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
                DynamicRecurrent::from_record(record, &$modes).map(Self)
            }
        }

        impl Module for $name {
            fn type_name(&self) -> &str {
                <$options as Shape>::class_name(self.0.mode)
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                self.0.options.forward(self.0.mode, &self.0.cells, input)
            }

            fn extra_repr(&self) -> String {
                Shape::extra_repr(&self.0.options, self.0.mode)
            }

            fn config(&self) -> serde_json::Value {
                self.0.config()
            }

            fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
                self.0.tensors()
            }
        }
    };
}

dynamic_recurrent!(
    /// `nnqd.LSTM`: as [`LSTM`] (batched 3-D input only, as PyTorch's dynamic module), with
    /// dynamically quantized or float16 weights.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use qgraph::nn::{LSTM, RnnOptions};
    /// use qgraph::qconfig::default_dynamic_qconfig;
    /// use qgraph::quantized::DynamicQuantizedLSTM;
    /// use qgraph::{Module, Value};
    /// let lstm = LSTM::new(RnnOptions { num_layers: 2, bidirectional: true, ..RnnOptions::new(8, 16) })?;
    /// let q = DynamicQuantizedLSTM::from_float(&lstm, &default_dynamic_qconfig())?;
    /// assert_eq!((&q as &dyn Module).to_string(), "DynamicQuantizedLSTM(8, 16, num_layers=2, bidirectional=True)");
    /// let out = q.forward(Value::from(ArrayD::<f32>::ones(IxDyn(&[5, 3, 8]))))?.into_tuple("doc")?;
    /// assert_eq!(out[0].shape()?, &[5, 3, 32]);
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    DynamicQuantizedLSTM(RnnOptions),
    [RnnMode::Lstm]
);

dynamic_recurrent!(
    /// `nnqd.GRU`: as [`GRU`] (batched 3-D input only), with dynamically quantized or float16
    /// weights.
    DynamicQuantizedGRU(RnnOptions),
    [RnnMode::Gru]
);

dynamic_recurrent!(
    /// `nnqd.LSTMCell`: as [`LSTMCell`] (2-D input only), with dynamically quantized or float16
    /// weights.
    DynamicQuantizedLSTMCell(CellOptions),
    [RnnMode::Lstm]
);

dynamic_recurrent!(
    /// `nnqd.GRUCell`: as [`GRUCell`] (2-D input only), with dynamically quantized or float16
    /// weights.
    DynamicQuantizedGRUCell(CellOptions),
    [RnnMode::Gru]
);

dynamic_recurrent!(
    /// `nnqd.RNNCell` (`tanh` or `relu`): as [`RNNCell`] (2-D input only), with dynamically
    /// quantized or float16 weights.
    DynamicQuantizedRNNCell(CellOptions),
    [RnnMode::RnnTanh, RnnMode::RnnRelu]
);

/// A float module's cells as a slice: all of a multi-layer module's, or a cell module's one.
trait AsCells {
    fn as_cells(&self) -> &[CellParams<FloatProjection>];
}

impl AsCells for [CellParams<FloatProjection>] {
    fn as_cells(&self) -> &[CellParams<FloatProjection>] {
        self
    }
}

impl AsCells for CellParams<FloatProjection> {
    fn as_cells(&self) -> &[CellParams<FloatProjection>] {
        std::slice::from_ref(self)
    }
}

/// `from_float` of each module from its float form, whose cells `$cells` returns.
macro_rules! from_float {
    ($($name:ident($float:ident::$cells:ident)),+) => {
        $(impl $name {
            #[doc = concat!("As PyTorch's `from_float`: the float `", stringify!($float), "`'s weights, each")]
            /// seen by a fresh weight observer of `qconfig` and quantized (qint8), or kept for
            /// fp16 packing (float16).
            ///
            /// Errors: `bias=False` ("mod.bias must be True"), an LSTM with `proj_size > 0`, a
            /// qconfig whose weight is neither qint8 nor float16.
            pub fn from_float(float: &$float, qconfig: &QConfig) -> GraphResult<Self> {
                let o = *float.options();
                let cells = float.$cells().as_cells();
                DynamicRecurrent::from_float(float.mode(), o, o.bias, cells, qconfig).map(Self)
            }
        })+
    };
}

from_float!(
    DynamicQuantizedLSTM(LSTM::cells),
    DynamicQuantizedGRU(GRU::cells),
    DynamicQuantizedLSTMCell(LSTMCell::cell),
    DynamicQuantizedGRUCell(GRUCell::cell),
    DynamicQuantizedRNNCell(RNNCell::cell)
);
