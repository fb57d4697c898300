//! Float recurrent modules (`torch.nn.LSTM`, `GRU`, `RNN`, `LSTMCell`, `GRUCell`, `RNNCell`):
//! PyTorch's arguments, checks, printouts, `state_dict` keys and CPU numerics (ATen `RNN.cpp`).
//!
//! The recurrence ([`stack`](self) over layers and directions, the cell steps) is generic over a
//! [`GateProjection`]; these modules use [`FloatProjection`] (the f32 GEMM of `nn::Linear`), and
//! quantized forms plug in their own projection.

mod cell;
mod options;
mod stack;

use std::collections::BTreeMap;

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

pub use cell::{
    CellParams, FloatProjection, GateProjection, gru_pointwise, lstm_cell_state, lstm_gates, lstm_hidden,
};
pub use options::{CellOptions, Nonlinearity, RnnMode, RnnOptions};
pub(crate) use stack::{forward_cell, forward_rnn};

use super::init::uniform;
use crate::record::Record;
use crate::{GraphError, GraphResult, Module, Value};
use options::CELL_PARAM_NAMES;

/// What an `LSTM`, `GRU` or `RNN` saves as its configuration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct RnnConfig {
    mode: RnnMode,
    options: RnnOptions,
}

/// Looks up a given parameter by name and expected shape.
type GetTensor<'a> = &'a mut dyn FnMut(&str, &[usize]) -> GraphResult<ArrayD<f32>>;

/// Where a module's parameters come from: PyTorch's initialisation or given tensors.
enum Source<'a> {
    /// `U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))` from the [`super::manual_seed`] stream,
    /// in `state_dict` order.
    Init(f32),
    /// Tensors by name; every expected one must be present with its shape.
    Given(GetTensor<'a>),
}

impl Source<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> GraphResult<ArrayD<f32>> {
        match self {
            Source::Init(bound) => Ok(uniform(shape, *bound)),
            Source::Given(get) => get(name, shape),
        }
    }
}

/// The parameter `name` of shape `shape` from a map of given tensors (removed from it).
fn take_given(
    context: &'static str,
    map: &mut BTreeMap<String, ArrayD<f32>>,
    name: &str,
    shape: &[usize],
) -> GraphResult<ArrayD<f32>> {
    let t = map.remove(name).ok_or_else(|| GraphError::Mismatch {
        context,
        reason: format!("parameter `{name}` is missing; give every parameter of the state_dict"),
    })?;
    if t.shape() != shape {
        return Err(GraphError::Mismatch {
            context,
            reason: format!("parameter `{name}` has shape {:?}, expected {shape:?}", t.shape()),
        });
    }
    Ok(t)
}

/// Fails if `map` still holds tensors no parameter took.
fn no_leftovers(context: &'static str, map: &BTreeMap<String, ArrayD<f32>>) -> GraphResult<()> {
    match map.keys().next() {
        Some(name) => Err(GraphError::Mismatch {
            context,
            reason: format!("unexpected parameter `{name}`; the module's keys are its state_dict names"),
        }),
        None => Ok(()),
    }
}

/// The multi-layer recurrence shared by [`LSTM`], [`GRU`] and [`RNN`].
#[derive(Debug, Clone)]
struct RnnBase {
    mode: RnnMode,
    options: RnnOptions,
    /// Layer-major, forward then reverse direction.
    cells: Vec<CellParams<FloatProjection>>,
    names: Vec<[Option<&'static str>; 5]>,
    training: bool,
}

impl RnnBase {
    fn build(
        mode: RnnMode,
        options: RnnOptions,
        mut source: Source<'_>,
        training: bool,
    ) -> GraphResult<Self> {
        options.check(mode)?;
        let mut cells = Vec::new();
        let mut names = Vec::new();
        for layer in 0..options.num_layers {
            let shapes = options.param_shapes(mode, layer);
            for d in 0..options.num_directions() {
                let n = options.param_names(layer, d);
                let mut get = |i: usize| n[i].map(|name| source.take(name, &shapes[i])).transpose();
                let (w_ih, w_hh, b_ih, b_hh, w_hr) = (get(0)?, get(1)?, get(2)?, get(3)?, get(4)?);
                cells.push(CellParams {
                    ih: FloatProjection::new(w_ih.expect("always present"), b_ih)?,
                    hh: FloatProjection::new(w_hh.expect("always present"), b_hh)?,
                    hr: w_hr.map(|w| FloatProjection::new(w, None)).transpose()?,
                });
                names.push(n);
            }
        }
        Ok(Self { mode, options, cells, names, training })
    }

    fn new(mode: RnnMode, options: RnnOptions) -> GraphResult<Self> {
        let bound = super::init::default_bound(options.hidden_size);
        Self::build(mode, options, Source::Init(bound), true)
    }

    fn from_tensors(
        mode: RnnMode,
        options: RnnOptions,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        let context = mode.module_name();
        let mut map: BTreeMap<String, ArrayD<f32>> = tensors.into_iter().collect();
        let mut get = |name: &str, shape: &[usize]| take_given(context, &mut map, name, shape);
        let base = Self::build(mode, options, Source::Given(&mut get), true)?;
        no_leftovers(context, &map)?;
        Ok(base)
    }

    fn from_record(record: Record<'_>, modes: &[RnnMode]) -> GraphResult<Self> {
        let config: RnnConfig = record.config()?;
        if !modes.contains(&config.mode) {
            return Err(record.tensors.mismatch(format!(
                "configuration mode {:?} is not a {}; the file is inconsistent, re-save it",
                config.mode,
                modes[0].module_name()
            )));
        }
        let mut get = |name: &str, shape: &[usize]| record.tensors.shaped::<f32>(name, shape);
        Self::build(config.mode, config.options, Source::Given(&mut get), false)
    }

    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        let mut out = Vec::new();
        for (c, n) in self.cells.iter().zip(&self.names) {
            let tensors = [
                Some(&c.ih.weight),
                Some(&c.hh.weight),
                c.ih.bias.as_ref(),
                c.hh.bias.as_ref(),
                c.hr.as_ref().map(|p| &p.weight),
            ];
            out.extend(n.iter().zip(tensors).filter_map(|(n, t)| Some(((*n)?, t?))));
        }
        out
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
        let mut out = Vec::new();
        for (c, n) in self.cells.iter_mut().zip(&self.names) {
            let tensors = [
                Some(&mut c.ih.weight),
                Some(&mut c.hh.weight),
                c.ih.bias.as_mut(),
                c.hh.bias.as_mut(),
                c.hr.as_mut().map(|p| &mut p.weight),
            ];
            out.extend(n.iter().zip(tensors).filter_map(|(n, t)| Some(((*n)?, t?))));
        }
        out
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(RnnConfig { mode: self.mode, options: self.options }).expect("plain data")
    }
}

/// Defines a multi-layer recurrent module type over [`RnnBase`].
macro_rules! rnn_module {
    ($(#[$doc:meta])* $name:ident, $modes:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(RnnBase);

        impl $name {
            /// The options.
            pub fn options(&self) -> &RnnOptions {
                &self.0.options
            }

            /// The recurrence this module runs.
            pub fn mode(&self) -> RnnMode {
                self.0.mode
            }

            /// The projections of every layer and direction (layer-major, forward first).
            pub fn cells(&self) -> &[CellParams<FloatProjection>] {
                &self.0.cells
            }

            /// Rebuilds a saved module (in eval mode).
            pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
                RnnBase::from_record(record, &$modes).map(Self)
            }
        }

        impl Module for $name {
            fn type_name(&self) -> &str {
                self.0.mode.module_name()
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                forward_rnn(self.0.mode, &self.0.options, &self.0.cells, self.0.training, input)
            }

            fn extra_repr(&self) -> String {
                self.0.options.extra_repr()
            }

            fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
                self.0.params()
            }

            fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
                self.0.params_mut()
            }

            fn training(&self) -> bool {
                self.0.training
            }

            fn set_training(&mut self, training: bool) {
                self.0.training = training;
            }

            fn config(&self) -> serde_json::Value {
                self.0.config()
            }
        }
    };
}

rnn_module!(
    /// `nn.LSTM`: input `(L, N, H_in)` (`(N, L, H_in)` if `batch_first`, or unbatched
    /// `(L, H_in)`), alone or as `Tuple([input, Tuple([h_0, c_0])])`; output
    /// `Tuple([output, Tuple([h_n, c_n])])`. Built in training mode, as PyTorch.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use qgraph::nn::{LSTM, RnnOptions};
    /// use qgraph::{Module, Value};
    /// let lstm = LSTM::new(RnnOptions { num_layers: 2, batch_first: true, bidirectional: true, ..RnnOptions::new(10, 20) })?;
    /// assert_eq!((&lstm as &dyn Module).to_string(), "LSTM(10, 20, num_layers=2, batch_first=True, bidirectional=True)");
    /// let out = lstm.forward(Value::from(ArrayD::<f32>::zeros(IxDyn(&[3, 5, 10]))))?.into_tuple("test")?;
    /// assert_eq!(out[0].shape()?, &[3, 5, 40]);
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    LSTM,
    [RnnMode::Lstm]
);

rnn_module!(
    /// `nn.GRU`: inputs as [`LSTM`], the state a single tensor: `Tuple([input, h_0])` in,
    /// `Tuple([output, h_n])` out.
    ///
    /// ```
    /// use qgraph::nn::{GRU, RnnOptions};
    /// use qgraph::Module;
    /// let gru = GRU::new(RnnOptions { bias: false, ..RnnOptions::new(4, 8) })?;
    /// assert_eq!((&gru as &dyn Module).to_string(), "GRU(4, 8, bias=False)");
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    GRU,
    [RnnMode::Gru]
);

rnn_module!(
    /// `nn.RNN` (Elman, `tanh` or `relu`): inputs and outputs as [`GRU`].
    ///
    /// ```
    /// use qgraph::nn::{Nonlinearity, RNN, RnnOptions};
    /// use qgraph::Module;
    /// let rnn = RNN::new(RnnOptions::new(4, 8), Nonlinearity::Relu)?;
    /// assert_eq!((&rnn as &dyn Module).to_string(), "RNN(4, 8)");
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    RNN,
    [RnnMode::RnnTanh, RnnMode::RnnRelu]
);

impl LSTM {
    /// An LSTM with PyTorch's initialisation bounds, drawn from the
    /// [`manual_seed`](super::manual_seed) stream; PyTorch's argument errors otherwise.
    pub fn new(options: RnnOptions) -> GraphResult<Self> {
        RnnBase::new(RnnMode::Lstm, options).map(Self)
    }

    /// An LSTM with the given parameters under their `state_dict` names (`weight_ih_l0`, ...):
    /// every one must be given with its shape, and nothing else.
    pub fn from_tensors(
        options: RnnOptions,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        RnnBase::from_tensors(RnnMode::Lstm, options, tensors).map(Self)
    }
}

impl GRU {
    /// A GRU with PyTorch's initialisation bounds (see [`LSTM::new`]).
    pub fn new(options: RnnOptions) -> GraphResult<Self> {
        RnnBase::new(RnnMode::Gru, options).map(Self)
    }

    /// A GRU with the given parameters (see [`LSTM::from_tensors`]).
    pub fn from_tensors(
        options: RnnOptions,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        RnnBase::from_tensors(RnnMode::Gru, options, tensors).map(Self)
    }
}

impl RNN {
    /// An RNN with PyTorch's initialisation bounds (see [`LSTM::new`]).
    pub fn new(options: RnnOptions, nonlinearity: Nonlinearity) -> GraphResult<Self> {
        RnnBase::new(nonlinearity.mode(), options).map(Self)
    }

    /// An RNN with the given parameters (see [`LSTM::from_tensors`]).
    pub fn from_tensors(
        options: RnnOptions,
        nonlinearity: Nonlinearity,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        RnnBase::from_tensors(nonlinearity.mode(), options, tensors).map(Self)
    }
}

/// What a cell saves as its configuration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CellConfig {
    mode: RnnMode,
    options: CellOptions,
}

/// The single step shared by [`LSTMCell`], [`GRUCell`] and [`RNNCell`].
#[derive(Debug, Clone)]
struct CellBase {
    mode: RnnMode,
    options: CellOptions,
    params: CellParams<FloatProjection>,
    training: bool,
}

impl CellBase {
    fn build(
        mode: RnnMode,
        options: CellOptions,
        mut source: Source<'_>,
        training: bool,
    ) -> GraphResult<Self> {
        options.check(mode)?;
        let shapes = options.param_shapes(mode);
        let mut get = |i: usize| source.take(CELL_PARAM_NAMES[i], &shapes[i]);
        let (w_ih, w_hh) = (get(0)?, get(1)?);
        let (b_ih, b_hh) = if options.bias { (Some(get(2)?), Some(get(3)?)) } else { (None, None) };
        let params = CellParams {
            ih: FloatProjection::new(w_ih, b_ih)?,
            hh: FloatProjection::new(w_hh, b_hh)?,
            hr: None,
        };
        Ok(Self { mode, options, params, training })
    }

    fn new(mode: RnnMode, options: CellOptions) -> GraphResult<Self> {
        let bound = super::init::default_bound(options.hidden_size);
        Self::build(mode, options, Source::Init(bound), true)
    }

    fn from_tensors(
        mode: RnnMode,
        options: CellOptions,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        let context = mode.cell_name();
        let mut map: BTreeMap<String, ArrayD<f32>> = tensors.into_iter().collect();
        let mut get = |name: &str, shape: &[usize]| take_given(context, &mut map, name, shape);
        let base = Self::build(mode, options, Source::Given(&mut get), true)?;
        no_leftovers(context, &map)?;
        Ok(base)
    }

    fn from_record(record: Record<'_>, modes: &[RnnMode]) -> GraphResult<Self> {
        let config: CellConfig = record.config()?;
        if !modes.contains(&config.mode) {
            return Err(record.tensors.mismatch(format!(
                "configuration mode {:?} is not a {}; the file is inconsistent, re-save it",
                config.mode,
                modes[0].cell_name()
            )));
        }
        let mut get = |name: &str, shape: &[usize]| record.tensors.shaped::<f32>(name, shape);
        Self::build(config.mode, config.options, Source::Given(&mut get), false)
    }

    fn extra_repr(&self) -> String {
        let o = self.options;
        let mut s = format!("{}, {}", o.input_size, o.hidden_size);
        if !o.bias {
            s += ", bias=False";
        }
        if self.mode == RnnMode::RnnRelu {
            s += ", nonlinearity=relu";
        }
        s
    }

    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        let p = &self.params;
        let tensors = [Some(&p.ih.weight), Some(&p.hh.weight), p.ih.bias.as_ref(), p.hh.bias.as_ref()];
        CELL_PARAM_NAMES.into_iter().zip(tensors).filter_map(|(n, t)| Some((n, t?))).collect()
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
        let p = &mut self.params;
        let tensors =
            [Some(&mut p.ih.weight), Some(&mut p.hh.weight), p.ih.bias.as_mut(), p.hh.bias.as_mut()];
        CELL_PARAM_NAMES.into_iter().zip(tensors).filter_map(|(n, t)| Some((n, t?))).collect()
    }
}

/// Defines a recurrent cell type over [`CellBase`].
macro_rules! cell_module {
    ($(#[$doc:meta])* $name:ident, $modes:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(CellBase);

        impl $name {
            /// The options.
            pub fn options(&self) -> &CellOptions {
                &self.0.options
            }

            /// The recurrence this cell runs.
            pub fn mode(&self) -> RnnMode {
                self.0.mode
            }

            /// The projections `ih` and `hh`.
            pub fn cell(&self) -> &CellParams<FloatProjection> {
                &self.0.params
            }

            /// Rebuilds a saved cell (in eval mode).
            pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
                CellBase::from_record(record, &$modes).map(Self)
            }
        }

        impl Module for $name {
            fn type_name(&self) -> &str {
                self.0.mode.cell_name()
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                forward_cell(self.0.mode, &self.0.options, &self.0.params, input)
            }

            fn extra_repr(&self) -> String {
                self.0.extra_repr()
            }

            fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
                self.0.params()
            }

            fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
                self.0.params_mut()
            }

            fn training(&self) -> bool {
                self.0.training
            }

            fn set_training(&mut self, training: bool) {
                self.0.training = training;
            }

            fn config(&self) -> serde_json::Value {
                serde_json::to_value(CellConfig { mode: self.0.mode, options: self.0.options }).expect("plain data")
            }
        }
    };
}

cell_module!(
    /// `nn.LSTMCell`: `input` `[N, H_in]` or `[H_in]`, alone or as `Tuple([input, Tuple([h, c])])`;
    /// returns `Tuple([h', c'])`.
    ///
    /// ```
    /// use qgraph::nn::{CellOptions, LSTMCell};
    /// use qgraph::Module;
    /// let cell = LSTMCell::new(CellOptions { input_size: 10, hidden_size: 20, bias: true })?;
    /// assert_eq!((&cell as &dyn Module).to_string(), "LSTMCell(10, 20)");
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    LSTMCell,
    [RnnMode::Lstm]
);

cell_module!(
    /// `nn.GRUCell`: `input` alone or as `Tuple([input, hx])`; returns `h'`.
    GRUCell,
    [RnnMode::Gru]
);

cell_module!(
    /// `nn.RNNCell` (`tanh` or `relu`): `input` alone or as `Tuple([input, hx])`; returns `h'`.
    RNNCell,
    [RnnMode::RnnTanh, RnnMode::RnnRelu]
);

impl LSTMCell {
    /// A cell with PyTorch's initialisation bounds, drawn from the
    /// [`manual_seed`](super::manual_seed) stream.
    pub fn new(options: CellOptions) -> GraphResult<Self> {
        CellBase::new(RnnMode::Lstm, options).map(Self)
    }

    /// A cell with the given `weight_ih`, `weight_hh` (and `bias_ih`, `bias_hh`).
    pub fn from_tensors(
        options: CellOptions,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        CellBase::from_tensors(RnnMode::Lstm, options, tensors).map(Self)
    }
}

impl GRUCell {
    /// A cell with PyTorch's initialisation bounds (see [`LSTMCell::new`]).
    pub fn new(options: CellOptions) -> GraphResult<Self> {
        CellBase::new(RnnMode::Gru, options).map(Self)
    }

    /// A cell with the given parameters (see [`LSTMCell::from_tensors`]).
    pub fn from_tensors(
        options: CellOptions,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        CellBase::from_tensors(RnnMode::Gru, options, tensors).map(Self)
    }
}

impl RNNCell {
    /// A cell with PyTorch's initialisation bounds (see [`LSTMCell::new`]).
    pub fn new(options: CellOptions, nonlinearity: Nonlinearity) -> GraphResult<Self> {
        CellBase::new(nonlinearity.mode(), options).map(Self)
    }

    /// A cell with the given parameters (see [`LSTMCell::from_tensors`]).
    pub fn from_tensors(
        options: CellOptions,
        nonlinearity: Nonlinearity,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        CellBase::from_tensors(nonlinearity.mode(), options, tensors).map(Self)
    }
}
