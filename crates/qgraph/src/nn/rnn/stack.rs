//! Layers × directions over a sequence (ATen `RNN.cpp`: `FullLayer`, `FullBidirectionalLayer`,
//! `apply_layer_stack`), and the checks and value plumbing of the modules' and cells' `forward`.
//! Generic over the [`GateProjection`], so the quantized forms run this same code.

use ndarray::{ArrayD, Axis, IxDyn};

use super::cell::{CellParams, GateProjection, StepScratch, step};
use super::options::{CellOptions, RnnMode, RnnOptions};
use crate::{GraphError, GraphResult, Value, invalid, memory};

/// Output, final `h` and final `c` (LSTM only; empty otherwise) of a stack.
struct StackOutput {
    output: Vec<f32>,
    h_n: Vec<f32>,
    c_n: Vec<f32>,
}

/// One layer's input, shared by its directions: the values `[seq, batch, features]` and their
/// shape.
struct LayerInput<'a> {
    x: &'a [f32],
    seq: usize,
    batch: usize,
}

/// One direction of one layer: projects the whole layer input (`igates`, the caller's buffer),
/// then steps over time from `h` / `c` (from the last step when `reverse`), writing each step's
/// `h` to `out` `[seq, batch, hr]`.
#[allow(clippy::too_many_arguments)]
fn run_direction<P: GateProjection>(
    mode: RnnMode,
    p: &CellParams<P>,
    input: &LayerInput<'_>,
    reverse: bool,
    (h, c): (&mut [f32], &mut [f32]),
    igates: &mut [f32],
    out: &mut [f32],
    scratch: &mut StepScratch,
) -> GraphResult<()> {
    let (seq, batch) = (input.seq, input.batch);
    let (g, hr) = (igates.len() / (seq * batch).max(1), h.len() / batch.max(1));
    p.ih.project_into(input.x, seq * batch, igates)?;
    for i in 0..seq {
        let t = if reverse { seq - 1 - i } else { i };
        step(mode, p, &igates[t * batch * g..(t + 1) * batch * g], h, c, batch, scratch)?;
        out[t * batch * hr..(t + 1) * batch * hr].copy_from_slice(h);
    }
    Ok(())
}

/// Runs `num_layers × directions` cells over `x` `[seq, batch, input_size]` from the states
/// `h0` `[layers * dirs, batch, real hidden]` and `c0` `[layers * dirs, batch, hidden]`.
///
/// As on ATen's CPU path, each layer and direction projects the whole layer input in one call
/// (`pre_compute_input`), then steps over time (the reverse direction from the last step); the
/// directions' outputs are concatenated on the feature axis and feed the next layer. The two
/// directions of a layer are independent: with more than one rayon thread they run at once
/// (same arithmetic, so the same bits).
fn run_stack<P: GateProjection>(
    mode: RnnMode,
    o: &RnnOptions,
    params: &[CellParams<P>],
    x: &[f32],
    (seq, batch): (usize, usize),
    h0: Vec<f32>,
    c0: Vec<f32>,
) -> GraphResult<StackOutput> {
    let name = mode.module_name();
    let (dirs, hr, hidden) = (o.num_directions(), o.real_hidden_size(), o.hidden_size);
    let g = mode.gates() * hidden;
    let lstm = mode == RnnMode::Lstm;
    let (mut h_n, mut c_n) = (h0, c0);
    let mut scratch: Vec<StepScratch> = (0..dirs).map(|_| StepScratch::default()).collect();
    let mut igates = memory::zeroed(name, &[dirs, seq, batch, g])?;
    let mut dir_out = memory::zeroed(name, &[dirs, seq, batch, hr])?;
    let mut layer_out = Vec::new();
    for layer in 0..o.num_layers {
        let input = LayerInput { x: if layer == 0 { x } else { &layer_out }, seq, batch };
        let layer_h = &mut h_n[layer * dirs * batch * hr..(layer + 1) * dirs * batch * hr];
        let layer_c: &mut [f32] = if lstm {
            &mut c_n[layer * dirs * batch * hidden..(layer + 1) * dirs * batch * hidden]
        } else {
            &mut []
        };
        let mut jobs = layer_h
            .chunks_exact_mut((batch * hr).max(1))
            .zip(layer_c.chunks_mut((batch * hidden).max(1)).map(Some).chain(std::iter::repeat_with(|| None)))
            .zip(igates.chunks_exact_mut((seq * batch * g).max(1)))
            .zip(dir_out.chunks_exact_mut((seq * batch * hr).max(1)))
            .zip(scratch.iter_mut())
            .enumerate()
            .map(|(d, ((((h, c), ig), out), sc))| {
                let p = &params[layer * dirs + d];
                let input = &input;
                move || run_direction(mode, p, input, d == 1, (h, c.unwrap_or_default()), ig, out, sc)
            });
        match (jobs.next(), jobs.next()) {
            (Some(forward), Some(backward)) if rayon::current_num_threads() > 1 => {
                let (f, b) = rayon::join(forward, backward);
                f?;
                b?;
            }
            (Some(forward), backward) => {
                forward()?;
                backward.map_or(Ok(()), |b| b())?;
            }
            (None, _) => {}
        }
        let mut out = memory::zeroed(name, &[seq, batch, dirs * hr])?;
        for (d, part) in dir_out.chunks_exact((seq * batch * hr).max(1)).enumerate() {
            for (row, src) in out.chunks_exact_mut(dirs * hr).zip(part.chunks_exact(hr)) {
                row[d * hr..(d + 1) * hr].copy_from_slice(src);
            }
        }
        layer_out = out;
    }
    Ok(StackOutput { output: layer_out, h_n, c_n })
}

/// A float tensor from `value` for `module`'s `what`.
fn float(value: Value, module: &'static str) -> GraphResult<ArrayD<f32>> {
    value.into_float(module)
}

/// Splits a module's input into `(input, hx)`: a tensor, or a tuple `(input, hx)`.
fn split_input(
    input: Value,
    module: &'static str,
    hx_form: &str,
) -> GraphResult<(ArrayD<f32>, Option<Value>)> {
    match input {
        Value::Tuple(items) if items.len() == 2 => {
            let mut items = items.into_iter();
            let x = float(items.next().expect("two items"), module)?;
            Ok((x, items.next()))
        }
        Value::Tuple(_) => Err(input.unsupported(
            module,
            &format!("an input tensor or a tuple (input, {hx_form})"),
            "pass the input alone or a pair of the input and the initial state",
        )),
        other => Ok((float(other, module)?, None)),
    }
}

/// The LSTM state `(h, c)` from a tuple value.
fn split_pair(hx: Value, module: &'static str) -> GraphResult<(ArrayD<f32>, ArrayD<f32>)> {
    match hx {
        Value::Tuple(items) if items.len() == 2 => {
            let mut items = items.into_iter();
            let h = float(items.next().expect("two items"), module)?;
            Ok((h, float(items.next().expect("two items"), module)?))
        }
        other => Err(other.unsupported(module, "a tuple (h, c)", "pass the LSTM state as a pair of tensors")),
    }
}

fn mismatch(module: &'static str, reason: String) -> GraphError {
    GraphError::Mismatch { context: module, reason }
}

fn rank_error(module: &'static str, what: &'static str, got: usize, expected: &str) -> GraphError {
    invalid(module, what, got, format!("Expected {what} to be {expected}, got {got}D instead"))
}

fn hidden_size_error(module: &'static str, which: &str, expected: &[usize], got: &[usize]) -> GraphError {
    let e: Vec<String> = expected.iter().map(ToString::to_string).collect();
    GraphError::Mismatch {
        context: module,
        reason: format!(
            "Expected {which} size ({}), got {got:?}; pass states of that shape or none",
            e.join(", ")
        ),
    }
}

/// `forward` of `LSTM`, `GRU` and `RNN` with the cells' projections `params` (layer-major,
/// forward then reverse): checks as PyTorch, `batch_first` and unbatched inputs, zero initial
/// states when none are given, and the outputs `(output, h_n)` / `(output, (h_n, c_n))`.
pub(crate) fn forward_rnn<P: GateProjection>(
    mode: RnnMode,
    o: &RnnOptions,
    params: &[CellParams<P>],
    training: bool,
    input: Value,
) -> GraphResult<Value> {
    let name = mode.module_name();
    if training && o.dropout > 0.0 && o.num_layers > 1 {
        return Err(invalid(
            name,
            "training",
            true,
            "dropout between layers in training mode is not supported (inference only); call eval(&mut model) first",
        ));
    }
    let lstm = mode == RnnMode::Lstm;
    let (x, hx) = split_input(input, name, if lstm { "(h_0, c_0)" } else { "h_0" })?;
    if !matches!(x.ndim(), 2 | 3) {
        return Err(rank_error(name, "input", x.ndim(), "2D or 3D"));
    }
    let batched = x.ndim() == 3;
    let batch_dim = if o.batch_first { 0 } else { 1 };
    let x = if batched { x } else { x.insert_axis(Axis(batch_dim)) };
    // Sequence-major, as ATen transposes a batch_first input.
    let x = if o.batch_first { x.permuted_axes(IxDyn(&[1, 0, 2])) } else { x };
    let (seq, batch, features) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if features != o.input_size {
        return Err(GraphError::ShapeMismatch {
            context: name,
            what: "input.size(-1) (must be equal to input_size)",
            got: features,
            expected: o.input_size,
        });
    }
    let layers = o.num_layers * o.num_directions();
    let h_shape = [layers, batch, o.real_hidden_size()];
    let c_shape = [layers, batch, o.hidden_size];
    let (h0, c0) = match hx {
        None => {
            (memory::zeroed(name, &h_shape)?, if lstm { memory::zeroed(name, &c_shape)? } else { Vec::new() })
        }
        Some(hx) => {
            let (h, c) = if lstm {
                let (h, c) = split_pair(hx, name)?;
                (h, Some(c))
            } else {
                (float(hx, name)?, None)
            };
            let want = if batched { 3 } else { 2 };
            let ranks_ok = h.ndim() == want && c.as_ref().is_none_or(|c| c.ndim() == want);
            if !ranks_ok {
                let form = if batched { "batched 3-D" } else { "unbatched 2-D" };
                let reason = match &c {
                    Some(c) => format!(
                        "For {form} input, hx and cx should also be {want}-D but got ({}-D, {}-D) tensors",
                        h.ndim(),
                        c.ndim()
                    ),
                    None => {
                        format!("For {form} input, hx should also be {want}-D but got {}-D tensor", h.ndim())
                    }
                };
                return Err(mismatch(name, reason));
            }
            let unsqueeze = |t: ArrayD<f32>| if batched { t } else { t.insert_axis(Axis(1)) };
            let h = unsqueeze(h);
            if h.shape() != h_shape {
                return Err(hidden_size_error(name, "hidden", &h_shape, h.shape()));
            }
            let c = match c.map(unsqueeze) {
                Some(c) if c.shape() != c_shape => {
                    return Err(hidden_size_error(name, "hidden[1]", &c_shape, c.shape()));
                }
                Some(c) => c.as_standard_layout().iter().copied().collect(),
                None => Vec::new(),
            };
            (h.as_standard_layout().iter().copied().collect(), c)
        }
    };
    if seq == 0 {
        return Err(invalid(
            name,
            "sequence length",
            0,
            "Expected sequence length to be larger than 0 in RNN",
        ));
    }
    let x = x.as_standard_layout();
    let r = run_stack(mode, o, params, x.as_slice().expect("standard layout"), (seq, batch), h0, c0)?;
    let out_f = o.num_directions() * o.real_hidden_size();
    let mut output =
        ArrayD::from_shape_vec(IxDyn(&[seq, batch, out_f]), r.output).expect("seq x batch x features");
    if o.batch_first {
        output = output.permuted_axes(IxDyn(&[1, 0, 2])).as_standard_layout().into_owned();
    }
    let state = |data: Vec<f32>, shape: [usize; 3]| {
        let t = ArrayD::from_shape_vec(IxDyn(&shape), data).expect("state shape");
        Value::Float(if batched { t } else { t.remove_axis(Axis(1)) })
    };
    if !batched {
        output = output.remove_axis(Axis(batch_dim));
    }
    let h_n = state(r.h_n, h_shape);
    let hidden = if lstm { Value::Tuple(vec![h_n, state(r.c_n, c_shape)]) } else { h_n };
    Ok(Value::Tuple(vec![Value::Float(output), hidden]))
}

/// `forward` of `LSTMCell`, `GRUCell` and `RNNCell`: `input` `[batch, input_size]` or
/// `[input_size]`, optionally with its state; returns `h'` or `(h', c')` as PyTorch.
pub(crate) fn forward_cell<P: GateProjection>(
    mode: RnnMode,
    o: &CellOptions,
    params: &CellParams<P>,
    input: Value,
) -> GraphResult<Value> {
    let name = mode.cell_name();
    let lstm = mode == RnnMode::Lstm;
    let (x, hx) = split_input(input, name, if lstm { "(h, c)" } else { "hx" })?;
    if !matches!(x.ndim(), 1 | 2) {
        return Err(rank_error(name, "input", x.ndim(), "1D or 2D"));
    }
    let batched = x.ndim() == 2;
    let x = if batched { x } else { x.insert_axis(Axis(0)) };
    let batch = x.shape()[0];
    if x.shape()[1] != o.input_size {
        return Err(mismatch(
            name,
            format!("input has inconsistent input_size: got {} expected {}", x.shape()[1], o.input_size),
        ));
    }
    let states: Vec<ArrayD<f32>> = match hx {
        None => vec![ArrayD::zeros(IxDyn(&[batch, o.hidden_size])); if lstm { 2 } else { 1 }],
        Some(hx) => {
            let given = if lstm {
                let (h, c) = split_pair(hx, name)?;
                vec![h, c]
            } else {
                vec![float(hx, name)?]
            };
            let mut states = Vec::with_capacity(given.len());
            for (i, s) in given.into_iter().enumerate() {
                let label = if lstm { ["hx[0]", "hx[1]"][i] } else { "hidden" };
                if s.ndim() != x.ndim() - usize::from(!batched) {
                    return Err(invalid(
                        name,
                        "hidden rank",
                        s.ndim(),
                        format!(
                            "Expected {label} to be {}D like the input, got {}D instead",
                            x.ndim() - usize::from(!batched),
                            s.ndim()
                        ),
                    ));
                }
                let s = if batched { s } else { s.insert_axis(Axis(0)) };
                let suffix = if lstm { i.to_string() } else { String::new() };
                if s.shape()[0] != batch {
                    return Err(mismatch(
                        name,
                        format!(
                            "Input batch size {batch} doesn't match hidden{suffix} batch size {}",
                            s.shape()[0]
                        ),
                    ));
                }
                if s.shape()[1] != o.hidden_size {
                    return Err(mismatch(
                        name,
                        format!(
                            "hidden{suffix} has inconsistent hidden_size: got {}, expected {}",
                            s.shape()[1],
                            o.hidden_size
                        ),
                    ));
                }
                states.push(s);
            }
            states
        }
    };
    let x = x.as_standard_layout();
    let mut igates = memory::zeroed(name, &[batch, mode.gates() * o.hidden_size])?;
    params.ih.project_into(x.as_slice().expect("standard layout"), batch, &mut igates)?;
    let mut h: Vec<f32> = states[0].as_standard_layout().iter().copied().collect();
    let mut c: Vec<f32> =
        states.get(1).map(|c| c.as_standard_layout().iter().copied().collect()).unwrap_or_default();
    step(mode, params, &igates, &mut h, &mut c, batch, &mut StepScratch::default())?;
    let shape: &[usize] = if batched { &[batch, o.hidden_size] } else { &[o.hidden_size] };
    let tensor = |v: Vec<f32>| Value::Float(ArrayD::from_shape_vec(IxDyn(shape), v).expect("state shape"));
    Ok(if lstm { Value::Tuple(vec![tensor(h), tensor(c)]) } else { tensor(h) })
}
