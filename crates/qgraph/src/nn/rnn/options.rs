//! The constructor arguments of the recurrent modules and cells, their checks, and PyTorch's
//! parameter names.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::nn::check_sizes;
use crate::{GraphResult, invalid};

/// Which recurrence a module or cell runs (PyTorch's `RNNBase.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RnnMode {
    /// `LSTM` / `LSTMCell`: gates `i, f, g, o`, a cell state and an optional projection.
    Lstm,
    /// `GRU` / `GRUCell`: gates `r, z, n`.
    Gru,
    /// `RNN` / `RNNCell` with `nonlinearity='tanh'`.
    RnnTanh,
    /// `RNN` / `RNNCell` with `nonlinearity='relu'`.
    RnnRelu,
}

impl RnnMode {
    /// Gates per hidden unit: 4 (LSTM), 3 (GRU) or 1 (RNN).
    pub fn gates(self) -> usize {
        match self {
            RnnMode::Lstm => 4,
            RnnMode::Gru => 3,
            RnnMode::RnnTanh | RnnMode::RnnRelu => 1,
        }
    }

    /// PyTorch's class name of the multi-layer module: `LSTM`, `GRU` or `RNN`.
    pub fn module_name(self) -> &'static str {
        match self {
            RnnMode::Lstm => "LSTM",
            RnnMode::Gru => "GRU",
            RnnMode::RnnTanh | RnnMode::RnnRelu => "RNN",
        }
    }

    /// PyTorch's class name of the cell: `LSTMCell`, `GRUCell` or `RNNCell`.
    pub fn cell_name(self) -> &'static str {
        match self {
            RnnMode::Lstm => "LSTMCell",
            RnnMode::Gru => "GRUCell",
            RnnMode::RnnTanh | RnnMode::RnnRelu => "RNNCell",
        }
    }
}

/// The nonlinearity of `RNN` and `RNNCell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Nonlinearity {
    /// `tanh` (PyTorch's default).
    #[default]
    Tanh,
    /// `relu`.
    Relu,
}

impl Nonlinearity {
    /// The mode of an `RNN` with this nonlinearity.
    pub fn mode(self) -> RnnMode {
        match self {
            Nonlinearity::Tanh => RnnMode::RnnTanh,
            Nonlinearity::Relu => RnnMode::RnnRelu,
        }
    }
}

/// The constructor arguments of `LSTM`, `GRU` and `RNN` (PyTorch's names and defaults).
///
/// ```
/// use qgraph::nn::RnnOptions;
/// let o = RnnOptions { num_layers: 2, bidirectional: true, ..RnnOptions::new(10, 20) };
/// assert_eq!((o.input_size, o.hidden_size, o.bias, o.proj_size), (10, 20, true, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RnnOptions {
    /// Features of the input (its last dimension).
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Stacked layers (each after the first takes the previous layer's output).
    pub num_layers: usize,
    /// True if every layer has `bias_ih` and `bias_hh`.
    pub bias: bool,
    /// True if inputs and outputs are `(N, L, H)` instead of `(L, N, H)`.
    pub batch_first: bool,
    /// Dropout probability between layers in training mode (qgraph runs it only as 0 or in eval).
    pub dropout: f64,
    /// True for a forward and a reverse direction per layer, concatenated.
    pub bidirectional: bool,
    /// LSTM only: if non-zero, `h` is projected to this size by `weight_hr`.
    pub proj_size: usize,
}

impl RnnOptions {
    /// PyTorch's defaults: one layer, biases, sequence first, no dropout, one direction, no
    /// projection.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
            proj_size: 0,
        }
    }

    /// 2 if bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// The size of `h` (and of each direction's output): `proj_size` if set, else `hidden_size`.
    pub fn real_hidden_size(&self) -> usize {
        if self.proj_size > 0 { self.proj_size } else { self.hidden_size }
    }

    /// The input features of layer `layer`.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 { self.input_size } else { self.real_hidden_size() * self.num_directions() }
    }

    /// PyTorch's constructor checks (`RNNBase.__init__`), for a module of `mode`.
    pub(crate) fn check(&self, mode: RnnMode) -> GraphResult<()> {
        let name = mode.module_name();
        if !(0.0..=1.0).contains(&self.dropout) {
            return Err(invalid(
                name,
                "dropout",
                self.dropout,
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed",
            ));
        }
        check_positive(name, "input_size", self.input_size)?;
        check_positive(name, "hidden_size", self.hidden_size)?;
        check_positive(name, "num_layers", self.num_layers)?;
        check_sizes(name, "proj_size", &[self.proj_size], 0)?;
        if self.proj_size > 0 && mode != RnnMode::Lstm {
            return Err(invalid(
                name,
                "proj_size",
                self.proj_size,
                "proj_size argument is only supported for LSTM, not RNN or GRU; use proj_size 0",
            ));
        }
        if self.proj_size >= self.hidden_size && self.proj_size > 0 {
            return Err(invalid(
                name,
                "proj_size",
                self.proj_size,
                format!("proj_size has to be smaller than hidden_size ({})", self.hidden_size),
            ));
        }
        // Gate rows and layer inputs must stay addressable.
        check_sizes(name, "gates * hidden_size", &[mode.gates() * self.hidden_size], 1)?;
        check_sizes(name, "layer input size", &[self.layer_input_size(1)], 1)?;
        Ok(())
    }

    /// The parameter names of layer `layer`, direction `direction`, in PyTorch's order
    /// (`_flat_weights_names`): `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`,
    /// `weight_hr_l0`, with `_reverse` for the second direction; `None` for absent ones.
    pub(crate) fn param_names(&self, layer: usize, direction: usize) -> [Option<&'static str>; 5] {
        let suffix = if direction == 1 { "_reverse" } else { "" };
        let name = |base: &str| intern(format!("{base}_l{layer}{suffix}"));
        [
            Some(name("weight_ih")),
            Some(name("weight_hh")),
            self.bias.then(|| name("bias_ih")),
            self.bias.then(|| name("bias_hh")),
            (self.proj_size > 0).then(|| name("weight_hr")),
        ]
    }

    /// The shapes of [`param_names`](Self::param_names) for `mode`.
    pub(crate) fn param_shapes(&self, mode: RnnMode, layer: usize) -> [Vec<usize>; 5] {
        let (g, h) = (mode.gates() * self.hidden_size, self.hidden_size);
        [
            vec![g, self.layer_input_size(layer)],
            vec![g, self.real_hidden_size()],
            vec![g],
            vec![g],
            vec![self.proj_size, h],
        ]
    }

    /// PyTorch's `extra_repr`.
    pub(crate) fn extra_repr(&self) -> String {
        let mut s = format!("{}, {}", self.input_size, self.hidden_size);
        if self.proj_size != 0 {
            s += &format!(", proj_size={}", self.proj_size);
        }
        if self.num_layers != 1 {
            s += &format!(", num_layers={}", self.num_layers);
        }
        if !self.bias {
            s += ", bias=False";
        }
        if self.batch_first {
            s += ", batch_first=True";
        }
        if self.dropout != 0.0 {
            s += &format!(", dropout={}", py_float(self.dropout));
        }
        if self.bidirectional {
            s += ", bidirectional=True";
        }
        s
    }
}

/// The constructor arguments of `LSTMCell`, `GRUCell` and `RNNCell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellOptions {
    /// Features of the input.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// True if the cell has `bias_ih` and `bias_hh`.
    pub bias: bool,
}

impl CellOptions {
    /// PyTorch's constructor checks, for a cell of `mode`.
    pub(crate) fn check(&self, mode: RnnMode) -> GraphResult<()> {
        let name = mode.cell_name();
        check_positive(name, "input_size", self.input_size)?;
        check_positive(name, "hidden_size", self.hidden_size)?;
        check_sizes(name, "gates * hidden_size", &[mode.gates() * self.hidden_size], 1)
    }

    /// The parameter shapes `[weight_ih, weight_hh, bias_ih, bias_hh]` for `mode`.
    pub(crate) fn param_shapes(&self, mode: RnnMode) -> [Vec<usize>; 4] {
        let g = mode.gates() * self.hidden_size;
        [vec![g, self.input_size], vec![g, self.hidden_size], vec![g], vec![g]]
    }
}

/// The parameter names of a cell, in PyTorch's order.
pub(crate) const CELL_PARAM_NAMES: [&str; 4] = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"];

fn check_positive(context: &'static str, what: &'static str, value: usize) -> GraphResult<()> {
    if value == 0 {
        return Err(invalid(context, what, value, format!("{what} must be greater than zero")));
    }
    check_sizes(context, what, &[value], 1)
}

/// Python's `repr` of a float: `0.5`, `1.0`.
fn py_float(x: f64) -> String {
    if x.fract() == 0.0 { format!("{x:.1}") } else { format!("{x}") }
}

/// A `'static` copy of `name`, made once per distinct name (parameter names of any depth of
/// stacking, as `Module::params` wants them).
fn intern(name: String) -> &'static str {
    static NAMES: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}
