//! One step of a recurrent cell: the gate projections ([`GateProjection`], f32 in
//! [`FloatProjection`]) and the pointwise math of ATen's CPU cells (`RNN.cpp`: `LSTMCell`,
//! `GRUCell`, `SimpleCell`), in ATen's order of operations.

use std::fmt;
use std::sync::OnceLock;

use ndarray::{Array2, ArrayD, ArrayView2};
use qkernels::Isa;
use qkernels::float::{Activation, Matrix, activation};

use super::options::RnnMode;
use crate::{GraphError, GraphResult, memory};

/// A linear map `x W^T + b` from `in_features` to `out_features`, the way a recurrent layer
/// projects its input (`linear_ih`), its hidden state (`linear_hh`) and, for LSTM with
/// `proj_size`, its output (`matmul_hr`, no bias). The recurrence is generic over it, so an
/// int8 or fp16 projection runs the same stack and cells.
pub trait GateProjection: fmt::Debug + Send + Sync {
    /// Input features.
    fn in_features(&self) -> usize;

    /// Output features.
    fn out_features(&self) -> usize;

    /// `out = x W^T + b` for `rows` rows: `x` is `rows x in_features`, `out` is
    /// `rows x out_features`, both row-major (the caller's buffers, reused across steps).
    fn project_into(&self, x: &[f32], rows: usize, out: &mut [f32]) -> GraphResult<()>;

    /// [`project_into`](Self::project_into) on a matrix, into a new one.
    fn project(&self, x: ArrayView2<'_, f32>) -> GraphResult<Array2<f32>> {
        let (rows, cols) = x.dim();
        if cols != self.in_features() {
            return Err(GraphError::ShapeMismatch {
                context: "GateProjection",
                what: "input features",
                got: cols,
                expected: self.in_features(),
            });
        }
        let x = x.as_standard_layout();
        let mut out = memory::zeroed("GateProjection", &[rows, self.out_features()])?;
        self.project_into(x.as_slice().expect("standard layout"), rows, &mut out)?;
        Ok(Array2::from_shape_vec((rows, self.out_features()), out).expect("rows x out_features"))
    }
}

/// The f32 projection: `weight` `[out, in]` and an optional `bias` `[out]`, on
/// [`qkernels::float::sgemm`] as `nn::Linear` (each output one FMA chain from its bias, so the
/// bits do not depend on the weight's layout). The GEMM reads `W^T` kept row-major, made on first
/// use: a step of the recurrence projects few rows, and packing a transposed weight for each one
/// would cost as much as the product.
#[derive(Debug, Clone)]
pub struct FloatProjection {
    pub(crate) weight: ArrayD<f32>,
    pub(crate) bias: Option<ArrayD<f32>>,
    /// `weight` transposed, `[in, out]` row-major; reset whenever the weight may change.
    weight_t: OnceLock<Vec<f32>>,
}

impl PartialEq for FloatProjection {
    fn eq(&self, other: &Self) -> bool {
        self.weight == other.weight && self.bias == other.bias
    }
}

impl FloatProjection {
    /// A projection from a 2-D `weight` and a bias with one entry per weight row.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn, array};
    /// use qgraph::nn::{FloatProjection, GateProjection};
    /// let p = FloatProjection::new(ArrayD::ones(IxDyn(&[2, 3])), Some(ArrayD::zeros(IxDyn(&[2]))))?;
    /// assert_eq!(p.project(array![[1.0, 2.0, 3.0]].view())?, array![[6.0, 6.0]]);
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    pub fn new(weight: ArrayD<f32>, bias: Option<ArrayD<f32>>) -> GraphResult<Self> {
        if weight.ndim() != 2 {
            return Err(GraphError::ShapeMismatch {
                context: "FloatProjection",
                what: "weight rank",
                got: weight.ndim(),
                expected: 2,
            });
        }
        if let Some(b) = &bias
            && b.shape() != [weight.shape()[0]]
        {
            return Err(GraphError::Mismatch {
                context: "FloatProjection",
                reason: format!(
                    "bias has shape {:?}, expected [{}]; give one bias per weight row",
                    b.shape(),
                    weight.shape()[0]
                ),
            });
        }
        let weight = weight.as_standard_layout().into_owned();
        let bias = bias.map(|b| b.as_standard_layout().into_owned());
        Ok(Self { weight, bias, weight_t: OnceLock::new() })
    }

    /// The weight and bias for writing (as `Module::params_mut` hands them out); the transposed
    /// copy is made again on next use.
    pub(crate) fn params_mut(&mut self) -> (&mut ArrayD<f32>, Option<&mut ArrayD<f32>>) {
        self.weight_t = OnceLock::new();
        (&mut self.weight, self.bias.as_mut())
    }

    /// The weight `[out_features, in_features]`.
    pub fn weight(&self) -> &ArrayD<f32> {
        &self.weight
    }

    /// The bias `[out_features]`, if any.
    pub fn bias(&self) -> Option<&ArrayD<f32>> {
        self.bias.as_ref()
    }
}

impl GateProjection for FloatProjection {
    fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    fn project_into(&self, x: &[f32], rows: usize, out: &mut [f32]) -> GraphResult<()> {
        let (n, k) = (self.out_features(), self.in_features());
        check_len("input length", x.len(), rows * k)?;
        check_len("output length", out.len(), rows * n)?;
        let w_t = self.weight_t.get_or_init(|| self.weight.t().iter().copied().collect());
        if let Some(b) = &self.bias {
            let b = b.as_slice().expect("standard layout");
            out.chunks_mut(n.max(1)).for_each(|row| row.copy_from_slice(b));
        }
        qkernels::float::sgemm(
            rows,
            n,
            k,
            Matrix::row_major(x, k),
            Matrix::row_major(w_t, n),
            out,
            n,
            self.bias.is_some(),
            Isa::active(),
        )?;
        Ok(())
    }
}

fn check_len(what: &'static str, got: usize, expected: usize) -> GraphResult<()> {
    if got != expected {
        return Err(GraphError::ShapeMismatch { context: "GateProjection", what, got, expected });
    }
    Ok(())
}

/// The projections of one cell (one layer and direction): `ih` (input to gates), `hh` (hidden
/// state to gates) and, for an LSTM with `proj_size`, `hr` (output to projected `h`).
#[derive(Debug, Clone, PartialEq)]
pub struct CellParams<P> {
    /// `weight_ih` / `bias_ih`.
    pub ih: P,
    /// `weight_hh` / `bias_hh`.
    pub hh: P,
    /// `weight_hr` (no bias), LSTM with projections only.
    pub hr: Option<P>,
}

/// Buffers one step needs, kept across steps so that a sequence allocates them once.
#[derive(Debug, Default)]
pub(crate) struct StepScratch {
    hgates: Vec<f32>,
    act: Vec<f32>,
    tmp: Vec<f32>,
    hy: Vec<f32>,
}

fn resized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// Applies `act` to the `batch` runs `[r * width + offset, + hidden)` of `src` into `dst`: one
/// gate of a `[batch, width]` gate matrix, the runs ATen's in-place activation of an
/// `unsafe_chunk` view walks.
fn activate_gate(
    act: Activation,
    src: &[f32],
    dst: &mut [f32],
    (batch, width, offset, hidden): (usize, usize, usize, usize),
) -> GraphResult<()> {
    for r in 0..batch {
        let a = r * width + offset;
        activation(act, &src[a..a + hidden], &mut dst[a..a + hidden], Isa::active())?;
    }
    Ok(())
}

/// LSTM gate activations: `gates` `[batch, 4 * hidden]` (the summed projections, in PyTorch's
/// order `i, f, g, o`) into `act`: `sigmoid(i)`, `sigmoid(f)`, `tanh(g)`, `sigmoid(o)`, each
/// gate row by row as ATen's `chunked_gates[k].sigmoid_()` / `tanh_()`.
pub fn lstm_gates(gates: &[f32], batch: usize, hidden: usize, act: &mut [f32]) -> GraphResult<()> {
    check_cell_len("LSTM gates", gates.len(), batch * 4 * hidden)?;
    check_cell_len("LSTM activated gates", act.len(), batch * 4 * hidden)?;
    let acts = [Activation::Sigmoid, Activation::Sigmoid, Activation::Tanh, Activation::Sigmoid];
    for (k, a) in acts.into_iter().enumerate() {
        activate_gate(a, gates, act, (batch, 4 * hidden, k * hidden, hidden))?;
    }
    Ok(())
}

/// LSTM cell state: `c = (f * c) + (i * g)` in place, from the activated gates `act`
/// `[batch, 4 * hidden]` (ATen: `(forgetgate * cx).add_(ingate * cellgate)`).
pub fn lstm_cell_state(act: &[f32], batch: usize, hidden: usize, c: &mut [f32]) -> GraphResult<()> {
    check_cell_len("LSTM activated gates", act.len(), batch * 4 * hidden)?;
    check_cell_len("LSTM cell state", c.len(), batch * hidden)?;
    for (row, c) in act.chunks_exact(4 * hidden).zip(c.chunks_exact_mut(hidden)) {
        let (i, rest) = row.split_at(hidden);
        let (f, g) = (&rest[..hidden], &rest[hidden..2 * hidden]);
        for j in 0..hidden {
            c[j] = f[j] * c[j] + i[j] * g[j];
        }
    }
    Ok(())
}

/// LSTM output: `h = o * tanh_c` from the activated gates `act` and `tanh(c)` (ATen:
/// `outgate * cy.tanh()`).
pub fn lstm_hidden(
    act: &[f32],
    tanh_c: &[f32],
    batch: usize,
    hidden: usize,
    h: &mut [f32],
) -> GraphResult<()> {
    check_cell_len("LSTM activated gates", act.len(), batch * 4 * hidden)?;
    check_cell_len("LSTM tanh(c)", tanh_c.len(), batch * hidden)?;
    check_cell_len("LSTM hidden state", h.len(), batch * hidden)?;
    for ((row, t), h) in
        act.chunks_exact(4 * hidden).zip(tanh_c.chunks_exact(hidden)).zip(h.chunks_exact_mut(hidden))
    {
        let o = &row[3 * hidden..];
        for j in 0..hidden {
            h[j] = o[j] * t[j];
        }
    }
    Ok(())
}

/// GRU pointwise step: from `igates` and `hgates` (`[batch, 3 * hidden]`, gates `r, z, n`, each
/// with its bias) and `hx`, the new hidden state `hy`, as ATen: `r = sigmoid(hh_r + ih_r)`,
/// `z = sigmoid(hh_z + ih_z)` row by row, `n = tanh(ih_n + hh_n * r)` over the contiguous
/// `[batch, hidden]` result, `hy = (hx - n) * z + n`. `hgates` is overwritten; `tmp` is scratch.
pub fn gru_pointwise(
    igates: &[f32],
    hgates: &mut [f32],
    hx: &[f32],
    (batch, hidden): (usize, usize),
    tmp: &mut Vec<f32>,
    hy: &mut [f32],
) -> GraphResult<()> {
    let (w, bh) = (3 * hidden, batch * hidden);
    check_cell_len("GRU input gates", igates.len(), batch * w)?;
    check_cell_len("GRU hidden gates", hgates.len(), batch * w)?;
    check_cell_len("GRU hidden state", hx.len(), bh)?;
    check_cell_len("GRU new hidden state", hy.len(), bh)?;
    // r and z: hh += ih, activated into the ih layout of tmp's first part.
    let buf = resized(tmp, batch * w + 2 * bh);
    let (act, rest) = buf.split_at_mut(batch * w);
    for (hg, ig) in hgates.chunks_exact_mut(w).zip(igates.chunks_exact(w)) {
        for j in 0..2 * hidden {
            hg[j] += ig[j];
        }
    }
    activate_gate(Activation::Sigmoid, hgates, act, (batch, w, 0, hidden))?;
    activate_gate(Activation::Sigmoid, hgates, act, (batch, w, hidden, hidden))?;
    let (n_pre, n) = rest.split_at_mut(bh);
    for (r, ((hg, ig), a)) in
        hgates.chunks_exact(w).zip(igates.chunks_exact(w)).zip(act.chunks_exact(w)).enumerate()
    {
        for j in 0..hidden {
            n_pre[r * hidden + j] = ig[2 * hidden + j] + hg[2 * hidden + j] * a[j];
        }
    }
    activation(Activation::Tanh, n_pre, n, Isa::active())?;
    for (((a, hy), hx), n) in act
        .chunks_exact(w)
        .zip(hy.chunks_exact_mut(hidden))
        .zip(hx.chunks_exact(hidden))
        .zip(n.chunks_exact(hidden))
    {
        for (j, &z) in a[hidden..2 * hidden].iter().enumerate() {
            hy[j] = (hx[j] - n[j]) * z + n[j];
        }
    }
    Ok(())
}

fn check_cell_len(what: &'static str, got: usize, expected: usize) -> GraphResult<()> {
    if got != expected {
        return Err(GraphError::ShapeMismatch { context: "rnn cell", what, got, expected });
    }
    Ok(())
}

/// One step of a cell of `mode` on `batch` rows: `igates` `[batch, gates * hidden]` is the
/// input's projection (bias included), `h` `[batch, real hidden]` and, for LSTM, `c`
/// `[batch, hidden]` are updated in place.
pub(crate) fn step<P: GateProjection>(
    mode: RnnMode,
    p: &CellParams<P>,
    igates: &[f32],
    h: &mut [f32],
    c: &mut [f32],
    batch: usize,
    s: &mut StepScratch,
) -> GraphResult<()> {
    let g = p.hh.out_features();
    let hidden = g / mode.gates();
    let hg = resized(&mut s.hgates, batch * g);
    p.hh.project_into(h, batch, hg)?;
    match mode {
        RnnMode::Lstm => {
            // gates = linear_hh(hx).add_(igates)
            hg.iter_mut().zip(igates).for_each(|(a, &b)| *a += b);
            let act = resized(&mut s.act, batch * g);
            lstm_gates(hg, batch, hidden, act)?;
            lstm_cell_state(act, batch, hidden, c)?;
            let tanh_c = resized(&mut s.tmp, batch * hidden);
            activation(Activation::Tanh, c, tanh_c, Isa::active())?;
            match &p.hr {
                Some(hr) => {
                    let hy = resized(&mut s.hy, batch * hidden);
                    lstm_hidden(act, tanh_c, batch, hidden, hy)?;
                    hr.project_into(hy, batch, h)
                }
                None => lstm_hidden(act, tanh_c, batch, hidden, h),
            }
        }
        RnnMode::Gru => {
            let hy = resized(&mut s.hy, batch * hidden);
            gru_pointwise(igates, hg, h, (batch, hidden), &mut s.tmp, hy)?;
            h.copy_from_slice(hy);
            Ok(())
        }
        RnnMode::RnnTanh | RnnMode::RnnRelu => {
            // nonlinearity(linear_hh(hx).add_(igates)) over the contiguous [batch, hidden].
            hg.iter_mut().zip(igates).for_each(|(a, &b)| *a += b);
            let act = if mode == RnnMode::RnnTanh { Activation::Tanh } else { Activation::Relu };
            activation(act, hg, h, Isa::active())?;
            Ok(())
        }
    }
}
