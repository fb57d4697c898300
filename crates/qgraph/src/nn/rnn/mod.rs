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
use serde::de::DeserializeOwned;
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

/// What a recurrent module or cell saves as its configuration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Saved<O> {
    mode: RnnMode,
    options: O,
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

/// What [`LSTM`] & co. share with [`LSTMCell`] & co.: how they are built, saved, printed and run.
trait Recurrent: Sized {
    /// `RnnOptions` or `CellOptions`.
    type Options: Copy + Serialize + DeserializeOwned;

    /// PyTorch's class name for `mode`.
    fn class_name(mode: RnnMode) -> &'static str;

    /// Checks the options and takes the parameters from `source`, in `state_dict` order.
    fn build(mode: RnnMode, options: Self::Options, source: Source<'_>, training: bool) -> GraphResult<Self>;

    fn hidden_size(options: &Self::Options) -> usize;

    fn mode(&self) -> RnnMode;

    fn options(&self) -> &Self::Options;

    /// The parameters with their `state_dict` names, immutable and mutable.
    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)>;
    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)>;

    fn forward(&self, input: Value) -> GraphResult<Value>;

    fn extra_repr(&self) -> String;

    /// PyTorch's initialisation, in training mode.
    fn init(mode: RnnMode, options: Self::Options) -> GraphResult<Self> {
        let bound = super::init::default_bound(Self::hidden_size(&options));
        Self::build(mode, options, Source::Init(bound), true)
    }

    /// From tensors under their `state_dict` names: all of them, with their shapes, nothing else.
    fn from_tensors(
        mode: RnnMode,
        options: Self::Options,
        tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> GraphResult<Self> {
        let context = Self::class_name(mode);
        let mut map: BTreeMap<String, ArrayD<f32>> = tensors.into_iter().collect();
        let mut get = |name: &str, shape: &[usize]| {
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
        };
        let built = Self::build(mode, options, Source::Given(&mut get), true)?;
        match map.keys().next() {
            Some(name) => Err(GraphError::Mismatch {
                context,
                reason: format!("unexpected parameter `{name}`; the module's keys are its state_dict names"),
            }),
            None => Ok(built),
        }
    }

    /// From a saved record (in eval mode), whose mode must be one of `modes`.
    fn from_record(record: Record<'_>, modes: &[RnnMode]) -> GraphResult<Self> {
        let saved: Saved<Self::Options> = record.config()?;
        if !modes.contains(&saved.mode) {
            return Err(record.tensors.mismatch(format!(
                "configuration mode {:?} is not a {}; the file is inconsistent, re-save it",
                saved.mode,
                Self::class_name(modes[0])
            )));
        }
        let mut get = |name: &str, shape: &[usize]| record.tensors.shaped::<f32>(name, shape);
        Self::build(saved.mode, saved.options, Source::Given(&mut get), false)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(Saved { mode: self.mode(), options: *self.options() }).expect("plain data")
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

impl Recurrent for RnnBase {
    type Options = RnnOptions;

    fn class_name(mode: RnnMode) -> &'static str {
        mode.module_name()
    }

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

    fn hidden_size(options: &RnnOptions) -> usize {
        options.hidden_size
    }

    fn mode(&self) -> RnnMode {
        self.mode
    }

    fn options(&self) -> &RnnOptions {
        &self.options
    }

    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        let mut out = Vec::new();
        for (c, n) in self.cells.iter().zip(&self.names) {
            let hr = c.hr.as_ref().map(|p| &p.weight);
            let tensors =
                [Some(&c.ih.weight), Some(&c.hh.weight), c.ih.bias.as_ref(), c.hh.bias.as_ref(), hr];
            out.extend(n.iter().zip(tensors).filter_map(|(n, t)| Some(((*n)?, t?))));
        }
        out
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
        let mut out = Vec::new();
        for (c, n) in self.cells.iter_mut().zip(&self.names) {
            let ((w_ih, b_ih), (w_hh, b_hh)) = (c.ih.params_mut(), c.hh.params_mut());
            let hr = c.hr.as_mut().map(|p| p.params_mut().0);
            let tensors = [Some(w_ih), Some(w_hh), b_ih, b_hh, hr];
            out.extend(n.iter().zip(tensors).filter_map(|(n, t)| Some(((*n)?, t?))));
        }
        out
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        forward_rnn(self.mode, &self.options, &self.cells, self.training, input)
    }

    fn extra_repr(&self) -> String {
        self.options.extra_repr()
    }
}

/// The single step shared by [`LSTMCell`], [`GRUCell`] and [`RNNCell`].
#[derive(Debug, Clone)]
struct CellBase {
    mode: RnnMode,
    options: CellOptions,
    params: CellParams<FloatProjection>,
    training: bool,
}

impl Recurrent for CellBase {
    type Options = CellOptions;

    fn class_name(mode: RnnMode) -> &'static str {
        mode.cell_name()
    }

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

    fn hidden_size(options: &CellOptions) -> usize {
        options.hidden_size
    }

    fn mode(&self) -> RnnMode {
        self.mode
    }

    fn options(&self) -> &CellOptions {
        &self.options
    }

    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        let p = &self.params;
        let tensors = [Some(&p.ih.weight), Some(&p.hh.weight), p.ih.bias.as_ref(), p.hh.bias.as_ref()];
        CELL_PARAM_NAMES.into_iter().zip(tensors).filter_map(|(n, t)| Some((n, t?))).collect()
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
        let p = &mut self.params;
        let ((w_ih, b_ih), (w_hh, b_hh)) = (p.ih.params_mut(), p.hh.params_mut());
        let tensors = [Some(w_ih), Some(w_hh), b_ih, b_hh];
        CELL_PARAM_NAMES.into_iter().zip(tensors).filter_map(|(n, t)| Some((n, t?))).collect()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        forward_cell(self.mode, &self.options, &self.params, input)
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
}

/// Defines a public recurrent module type over a [`Recurrent`] base.
macro_rules! recurrent_module {
    ($(#[$doc:meta])* $name:ident($base:ty, $options:ty), $modes:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name($base);

        impl $name {
            /// The options.
            pub fn options(&self) -> &$options {
                &self.0.options
            }

            /// The recurrence this module runs.
            pub fn mode(&self) -> RnnMode {
                self.0.mode
            }

            /// Rebuilds a saved module (in eval mode).
            pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
                <$base>::from_record(record, &$modes).map(Self)
            }
        }

        impl Module for $name {
            fn type_name(&self) -> &str {
                <$base>::class_name(self.0.mode)
            }

            fn forward(&self, input: Value) -> GraphResult<Value> {
                self.0.forward(input)
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
                self.0.config()
            }
        }
    };
}

recurrent_module!(
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
    LSTM(RnnBase, RnnOptions),
    [RnnMode::Lstm]
);

recurrent_module!(
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
    GRU(RnnBase, RnnOptions),
    [RnnMode::Gru]
);

recurrent_module!(
    /// `nn.RNN` (Elman, `tanh` or `relu`): inputs and outputs as [`GRU`].
    ///
    /// ```
    /// use qgraph::nn::{Nonlinearity, RNN, RnnOptions};
    /// use qgraph::Module;
    /// let rnn = RNN::new(RnnOptions::new(4, 8), Nonlinearity::Relu)?;
    /// assert_eq!((&rnn as &dyn Module).to_string(), "RNN(4, 8)");
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    RNN(RnnBase, RnnOptions),
    [RnnMode::RnnTanh, RnnMode::RnnRelu]
);

recurrent_module!(
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
    LSTMCell(CellBase, CellOptions),
    [RnnMode::Lstm]
);

recurrent_module!(
    /// `nn.GRUCell`: `input` alone or as `Tuple([input, hx])`; returns `h'`.
    GRUCell(CellBase, CellOptions),
    [RnnMode::Gru]
);

recurrent_module!(
    /// `nn.RNNCell` (`tanh` or `relu`): `input` alone or as `Tuple([input, hx])`; returns `h'`.
    RNNCell(CellBase, CellOptions),
    [RnnMode::RnnTanh, RnnMode::RnnRelu]
);

/// The constructors and parameter access of a multi-layer module or a cell of a fixed mode.
macro_rules! constructors {
    ($name:ident($options:ty), $mode:expr, $what:literal) => {
        impl $name {
            #[doc = concat!("A ", $what, " with PyTorch's initialisation bounds, drawn from the")]
            /// [`manual_seed`](super::manual_seed) stream; PyTorch's argument errors otherwise.
            pub fn new(options: $options) -> GraphResult<Self> {
                Recurrent::init($mode, options).map(Self)
            }

            #[doc = concat!("A ", $what, " with the given parameters under their `state_dict` names:")]
            /// every one must be given with its shape, and nothing else.
            pub fn from_tensors(
                options: $options,
                tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
            ) -> GraphResult<Self> {
                Recurrent::from_tensors($mode, options, tensors).map(Self)
            }
        }
    };
    ($name:ident($options:ty), $what:literal) => {
        impl $name {
            #[doc = concat!("A ", $what, " with PyTorch's initialisation bounds, drawn from the")]
            /// [`manual_seed`](super::manual_seed) stream; PyTorch's argument errors otherwise.
            pub fn new(options: $options, nonlinearity: Nonlinearity) -> GraphResult<Self> {
                Recurrent::init(nonlinearity.mode(), options).map(Self)
            }

            #[doc = concat!("A ", $what, " with the given parameters under their `state_dict` names:")]
            /// every one must be given with its shape, and nothing else.
            pub fn from_tensors(
                options: $options,
                nonlinearity: Nonlinearity,
                tensors: impl IntoIterator<Item = (String, ArrayD<f32>)>,
            ) -> GraphResult<Self> {
                Recurrent::from_tensors(nonlinearity.mode(), options, tensors).map(Self)
            }
        }
    };
}

constructors!(LSTM(RnnOptions), RnnMode::Lstm, "LSTM");
constructors!(GRU(RnnOptions), RnnMode::Gru, "GRU");
constructors!(RNN(RnnOptions), "RNN");
constructors!(LSTMCell(CellOptions), RnnMode::Lstm, "LSTM cell");
constructors!(GRUCell(CellOptions), RnnMode::Gru, "GRU cell");
constructors!(RNNCell(CellOptions), "RNN cell");

macro_rules! cells_accessor {
    ($($name:ident),+) => {
        $(impl $name {
            /// The projections of every layer and direction (layer-major, forward first).
            pub fn cells(&self) -> &[CellParams<FloatProjection>] {
                &self.0.cells
            }
        })+
    };
}

macro_rules! cell_accessor {
    ($($name:ident),+) => {
        $(impl $name {
            /// The projections `ih` and `hh`.
            pub fn cell(&self) -> &CellParams<FloatProjection> {
                &self.0.params
            }
        })+
    };
}

cells_accessor!(LSTM, GRU, RNN);
cell_accessor!(LSTMCell, GRUCell, RNNCell);
