//! Float recurrent modules against PyTorch 2.15 (`tools/golden/gen_rnn.py`): outputs, the
//! pointwise cell math, printouts, state_dict keys, save / load and every argument error.

use ndarray::{ArrayD, IxDyn};
use qgraph::nn::{
    CellOptions, GRU, GRUCell, LSTM, LSTMCell, Nonlinearity, RNN, RNNCell, RnnOptions, gru_pointwise,
    lstm_cell_state, lstm_gates, lstm_hidden, manual_seed,
};
use qgraph::{GraphError, Module, Value, io};
use qtest::{Fixture, assert_bits_eq, i64_of, name};
use serde_json::Value as Json;

fn load() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "rnn")
}

/// Outputs may differ from PyTorch's by this many units in the last place of the case's largest
/// output magnitude (at least 1.0, the bound of the LSTM / GRU / tanh outputs). PyTorch's
/// projections run MKL's SGEMM, ours one FMA chain per output (NUMERICS §9.1), so the gates differ
/// in their last bits and the recurrence carries that over up to 50 steps and 2 layers. Measured
/// over all 19 cases (Intel Xeon, AVX-512): at most 1.3 ulp of the scale
/// (`rnn_relu_h7_bidir_2layers_state`, 4.8e-7 on outputs up to 3), typically 0.2 to 1 ulp; the
/// bound is three times the largest.
const MAX_ULPS_OF_SCALE: f32 = 4.0;

/// Max |a - b| over two arrays of the same shape.
fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The allowed difference for outputs whose magnitude is at most `scale` (at least 1).
fn tolerance(expected: &ArrayD<f32>) -> f32 {
    let scale = expected.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    MAX_ULPS_OF_SCALE * scale * f32::EPSILON
}

fn f(v: ArrayD<f32>) -> Value {
    Value::Float(v)
}

/// The case's parameters (int8 * 2^-shift), under PyTorch's names.
fn weights(fx: &Fixture, case: &Json) -> Vec<(String, ArrayD<f32>)> {
    let n = name(case);
    let scale = (-i64_of(&case["shift"]) as f32).exp2();
    keys(case)
        .into_iter()
        .map(|k| {
            let q = fx.tensor::<i8>(n, &format!("p.{k}"));
            (k, q.mapv(|v| f32::from(v) * scale))
        })
        .collect()
}

fn keys(case: &Json) -> Vec<String> {
    case["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect()
}

fn rnn_options(case: &Json) -> RnnOptions {
    let u = |k: &str| case[k].as_u64().unwrap() as usize;
    let b = |k: &str| case[k].as_bool().unwrap();
    RnnOptions {
        num_layers: u("num_layers"),
        bias: b("bias"),
        batch_first: b("batch_first"),
        bidirectional: b("bidirectional"),
        proj_size: u("proj_size"),
        ..RnnOptions::new(u("input_size"), u("hidden_size"))
    }
}

fn nonlinearity(case: &Json) -> Nonlinearity {
    if case["nonlinearity"] == "relu" { Nonlinearity::Relu } else { Nonlinearity::Tanh }
}

/// The module a case describes, built from its tensors.
fn build(fx: &Fixture, case: &Json) -> Box<dyn Module> {
    let w = weights(fx, case);
    let cell = || CellOptions {
        input_size: case["input_size"].as_u64().unwrap() as usize,
        hidden_size: case["hidden_size"].as_u64().unwrap() as usize,
        bias: case["bias"].as_bool().unwrap(),
    };
    let mut m: Box<dyn Module> = match case["kind"].as_str().unwrap() {
        "LSTM" => Box::new(LSTM::from_tensors(rnn_options(case), w).unwrap()),
        "GRU" => Box::new(GRU::from_tensors(rnn_options(case), w).unwrap()),
        "RNN" => Box::new(RNN::from_tensors(rnn_options(case), nonlinearity(case), w).unwrap()),
        "LSTMCell" => Box::new(LSTMCell::from_tensors(cell(), w).unwrap()),
        "GRUCell" => Box::new(GRUCell::from_tensors(cell(), w).unwrap()),
        "RNNCell" => Box::new(RNNCell::from_tensors(cell(), nonlinearity(case), w).unwrap()),
        other => panic!("unknown kind {other}"),
    };
    qgraph::eval(&mut m);
    m
}

/// The case's input value: the input alone or with its initial state.
fn input(fx: &Fixture, case: &Json) -> Value {
    let n = name(case);
    let x = f(fx.tensor(n, "x"));
    if !fx.has(n, "h0") {
        return x;
    }
    let h0 = f(fx.tensor(n, "h0"));
    let state = if fx.has(n, "c0") { Value::Tuple(vec![h0, f(fx.tensor(n, "c0"))]) } else { h0 };
    Value::Tuple(vec![x, state])
}

/// The tensors of an output value in the fixture's field names.
fn outputs(kind: &str, y: Value) -> Vec<(&'static str, ArrayD<f32>)> {
    let float = |v: Value| v.into_float("test").unwrap();
    let pair = |v: Value| {
        let mut t = v.into_tuple("test").unwrap().into_iter();
        (t.next().unwrap(), t.next().unwrap())
    };
    match kind {
        "LSTM" => {
            let (out, hc) = pair(y);
            let (h, c) = pair(hc);
            vec![("out", float(out)), ("h_n", float(h)), ("c_n", float(c))]
        }
        "GRU" | "RNN" => {
            let (out, h) = pair(y);
            vec![("out", float(out)), ("h_n", float(h))]
        }
        "LSTMCell" => {
            let (h, c) = pair(y);
            vec![("h_n", float(h)), ("c_n", float(c))]
        }
        _ => vec![("h_n", float(y))],
    }
}

fn module_cases(fx: &Fixture) -> impl Iterator<Item = &Json> {
    fx.cases.iter().filter(|c| c.get("kind").is_some())
}

#[test]
fn outputs_match_pytorch_within_tolerance() {
    let fx = load();
    let mut worst = (0.0f32, String::new());
    let mut count = 0;
    for case in module_cases(&fx) {
        let n = name(case);
        let m = build(&fx, case);
        for (field, got) in outputs(case["kind"].as_str().unwrap(), m.forward(input(&fx, case)).unwrap()) {
            let want = fx.tensor::<f32>(n, field);
            assert_eq!(got.shape(), want.shape(), "{n}: {field} shape");
            let d = max_abs_diff(&got, &want);
            assert!(d <= tolerance(&want), "{n}: {field} differs by {d:e} (bound {:e})", tolerance(&want));
            if d > worst.0 {
                worst = (d, format!("{n}/{field}"));
            }
        }
        count += 1;
    }
    assert_eq!(count, 19);
    eprintln!("largest difference from PyTorch: {:e} at {}", worst.0, worst.1);
}

/// PyTorch's two CPU paths disagree too: oneDNN (its default for float LSTM) against ATen's own
/// layers, on one bidirectional two-layer LSTM. Ours is as close to either.
#[test]
fn onednn_and_aten_paths_differ_by_rounding_only() {
    let fx = load();
    let case = fx.cases.iter().find(|c| name(c) == "lstm_h33_bidir_2layers_bf_state").unwrap();
    let aten = fx.tensor::<f32>(name(case), "out");
    let onednn = fx.tensor::<f32>("lstm_onednn", "out");
    let between = max_abs_diff(&aten, &onednn);
    let ours = outputs("LSTM", build(&fx, case).forward(input(&fx, case)).unwrap()).remove(0).1;
    let to_onednn = max_abs_diff(&ours, &onednn);
    eprintln!("oneDNN vs ATen: {between:e}; qgraph vs oneDNN: {to_onednn:e}");
    assert!(between > 0.0, "the paths are expected to round differently");
    assert!(between <= tolerance(&aten) && to_onednn <= tolerance(&onednn));
}

/// `c = f * c + i * g` and `h = o * tanh(c)` are plain f32 arithmetic: given PyTorch's activated
/// gates and `tanh(c)`, they equal PyTorch's bit for bit. The activations themselves come from
/// `qkernels::float::activation`; they are held to 2 ulp here and become exact when that
/// kernel is PyTorch's.
#[test]
fn lstm_pointwise_matches_pytorch() {
    let fx = load();
    let n = "lstm_pointwise";
    let (b, h) = (3, 33);
    let t = |k: &str| fx.tensor::<f32>(n, k);
    let act = t("act");
    let mut c = t("cx");
    lstm_cell_state(act.as_slice().unwrap(), b, h, c.as_slice_mut().unwrap()).unwrap();
    assert_bits_eq(n, "cy", &c, &t("cy"));
    let mut hy = ArrayD::zeros(IxDyn(&[b, h]));
    lstm_hidden(act.as_slice().unwrap(), t("tanh_cy").as_slice().unwrap(), b, h, hy.as_slice_mut().unwrap())
        .unwrap();
    assert_bits_eq(n, "hy", &hy, &t("hy"));

    let mut ours = ArrayD::zeros(IxDyn(&[b, 4 * h]));
    lstm_gates(t("gates").as_slice().unwrap(), b, h, ours.as_slice_mut().unwrap()).unwrap();
    let d = max_abs_diff(&ours, &act);
    eprintln!("LSTM activated gates vs PyTorch: {d:e}");
    assert!(d <= 2.0 * f32::EPSILON, "activated gates differ by {d:e}");
}

/// The GRU step from given projections (the activations within 2 ulp, as above).
#[test]
fn gru_pointwise_matches_pytorch() {
    let fx = load();
    let n = "gru_pointwise";
    let (b, h) = (3, 33);
    let t = |k: &str| fx.tensor::<f32>(n, k);
    let mut hgates = t("hgates");
    let mut hy = ArrayD::zeros(IxDyn(&[b, h]));
    let mut tmp = Vec::new();
    gru_pointwise(
        t("igates").as_slice().unwrap(),
        hgates.as_slice_mut().unwrap(),
        t("hx").as_slice().unwrap(),
        (b, h),
        &mut tmp,
        hy.as_slice_mut().unwrap(),
    )
    .unwrap();
    let d = max_abs_diff(&hy, &t("hy"));
    eprintln!("GRU step vs PyTorch: {d:e}");
    assert!(d <= 4.0 * f32::EPSILON, "GRU step differs by {d:e}");
}

#[test]
fn printouts_and_keys_match_pytorch() {
    let fx = load();
    for case in module_cases(&fx) {
        let m = build(&fx, case);
        assert_eq!(m.to_string(), case["repr"].as_str().unwrap(), "{}", name(case));
        let ours: Vec<String> = m.params().into_iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(ours, keys(case), "{}", name(case));
    }
    let printouts = fx.cases.iter().find(|c| name(c) == "printouts").unwrap();
    for p in printouts["modules"].as_array().unwrap() {
        let u = |k: &str| p[k].as_u64().map(|v| v as usize);
        let b = |k: &str, d: bool| p[k].as_bool().unwrap_or(d);
        let (i, h) = (u("input_size").unwrap(), u("hidden_size").unwrap());
        let o = RnnOptions {
            num_layers: u("num_layers").unwrap_or(1),
            bias: b("bias", true),
            batch_first: b("batch_first", false),
            dropout: p["dropout"].as_f64().unwrap_or(0.0),
            bidirectional: b("bidirectional", false),
            proj_size: u("proj_size").unwrap_or(0),
            ..RnnOptions::new(i, h)
        };
        let c = CellOptions { input_size: i, hidden_size: h, bias: b("bias", true) };
        let nl = if p["nonlinearity"] == "relu" { Nonlinearity::Relu } else { Nonlinearity::Tanh };
        let m: Box<dyn Module> = match p["kind"].as_str().unwrap() {
            "LSTM" => Box::new(LSTM::new(o).unwrap()),
            "GRU" => Box::new(GRU::new(o).unwrap()),
            "RNN" => Box::new(RNN::new(o, nl).unwrap()),
            "LSTMCell" => Box::new(LSTMCell::new(c).unwrap()),
            "GRUCell" => Box::new(GRUCell::new(c).unwrap()),
            _ => Box::new(RNNCell::new(c, nl).unwrap()),
        };
        assert_eq!(m.to_string(), p["repr"].as_str().unwrap());
    }
}

/// Saved and loaded, every case's module prints, keys and computes the same, bit for bit.
#[test]
fn save_and_load_round_trip() {
    let fx = load();
    for case in module_cases(&fx) {
        let n = name(case);
        let m = build(&fx, case);
        let loaded = io::from_bytes(&io::to_bytes(m.as_ref()).unwrap()).unwrap();
        assert_eq!(loaded.type_name(), m.type_name(), "{n}");
        assert_eq!(loaded.to_string(), m.to_string(), "{n}");
        assert!(!loaded.training(), "{n}: loads in eval mode");
        for ((ka, a), (kb, b)) in m.params().into_iter().zip(loaded.params()) {
            assert_eq!(ka, kb, "{n}");
            assert_bits_eq(n, ka, a, b);
        }
        let kind = case["kind"].as_str().unwrap();
        let want = outputs(kind, m.forward(input(&fx, case)).unwrap());
        let got = outputs(kind, loaded.forward(input(&fx, case)).unwrap());
        for ((field, a), (_, b)) in got.iter().zip(&want) {
            assert_bits_eq(n, field, a, b);
        }
    }
}

/// A file whose `RNN` node carries a GRU configuration is refused, not misread.
#[test]
fn load_refuses_a_mode_of_another_class() {
    let gru = GRU::new(RnnOptions::new(2, 3)).unwrap();
    let mut bytes = io::to_bytes(&gru).unwrap();
    // Rename the saved type in the JSON header (same length, so the file stays well formed).
    let at: Vec<usize> = bytes.windows(3).enumerate().filter(|(_, w)| *w == b"GRU").map(|(i, _)| i).collect();
    assert!(!at.is_empty(), "saved type in the header");
    for i in at {
        bytes[i..i + 3].copy_from_slice(b"RNN");
    }
    let err = io::from_bytes(&bytes).unwrap_err().to_string();
    assert!(err.contains("is not a RNN"), "{err}");
}

#[test]
fn seeded_init_is_reproducible_and_bounded() {
    let o = RnnOptions { num_layers: 2, bidirectional: true, proj_size: 4, ..RnnOptions::new(5, 16) };
    manual_seed(3);
    let a = LSTM::new(o).unwrap();
    manual_seed(3);
    let b = LSTM::new(o).unwrap();
    let c = LSTM::new(o).unwrap();
    assert_eq!(a.params().len(), 20);
    let mut differs = false;
    for (((ka, x), (_, y)), (_, z)) in a.params().into_iter().zip(b.params()).zip(c.params()) {
        assert_eq!(x, y, "{ka}");
        assert!(x.iter().all(|v| v.abs() <= 0.25), "{ka}: bound 1/sqrt(16)");
        differs |= x != z;
    }
    assert!(differs);
    assert!(a.training(), "built in training mode, as PyTorch");
}

fn zeros(shape: &[usize]) -> Value {
    f(ArrayD::zeros(IxDyn(shape)))
}

fn err_of(m: &dyn Module, input: Value) -> String {
    let e = m.forward(input).unwrap_err();
    assert!(!matches!(e, GraphError::Kernel(_)), "{e}");
    e.to_string()
}

#[test]
fn argument_errors() {
    let bad = |o: RnnOptions| LSTM::new(o).unwrap_err().to_string();
    assert!(bad(RnnOptions::new(0, 4)).contains("input_size must be greater than zero"));
    assert!(bad(RnnOptions::new(4, 0)).contains("hidden_size must be greater than zero"));
    assert!(
        bad(RnnOptions { num_layers: 0, ..RnnOptions::new(4, 4) })
            .contains("num_layers must be greater than zero")
    );
    assert!(
        bad(RnnOptions { proj_size: 4, ..RnnOptions::new(4, 4) })
            .contains("proj_size has to be smaller than hidden_size")
    );
    assert!(
        bad(RnnOptions { dropout: 1.5, ..RnnOptions::new(4, 4) })
            .contains("dropout should be a number in range [0, 1]")
    );
    assert!(bad(RnnOptions { dropout: f64::NAN, ..RnnOptions::new(4, 4) }).contains("dropout"));
    let e = GRU::new(RnnOptions { proj_size: 2, ..RnnOptions::new(4, 4) }).unwrap_err().to_string();
    assert!(e.contains("only supported for LSTM"), "{e}");
    let e = RNNCell::new(CellOptions { input_size: 2, hidden_size: 0, bias: true }, Nonlinearity::Tanh)
        .unwrap_err();
    assert!(e.to_string().contains("hidden_size must be greater than zero"));
    let w = |names: &[(&str, &[usize])]| -> Vec<(String, ArrayD<f32>)> {
        names.iter().map(|(k, s)| (k.to_string(), ArrayD::zeros(IxDyn(s)))).collect()
    };
    let c = CellOptions { input_size: 2, hidden_size: 3, bias: false };
    let e = GRUCell::from_tensors(c, w(&[("weight_ih", &[9, 2])])).unwrap_err().to_string();
    assert!(e.contains("`weight_hh` is missing"), "{e}");
    let e = GRUCell::from_tensors(c, w(&[("weight_ih", &[9, 2]), ("weight_hh", &[9, 4])]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has shape [9, 4], expected [9, 3]"), "{e}");
    let e = GRUCell::from_tensors(c, w(&[("weight_ih", &[9, 2]), ("weight_hh", &[9, 3]), ("bias_ih", &[9])]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected parameter `bias_ih`"), "{e}");
}

#[test]
fn forward_errors() {
    let o = RnnOptions { num_layers: 2, ..RnnOptions::new(4, 5) };
    let lstm = LSTM::new(o).unwrap();
    let gru = GRU::new(RnnOptions::new(4, 5)).unwrap();
    let e = err_of(&lstm, zeros(&[2, 3, 4, 1]));
    assert!(e.contains("Expected input to be 2D or 3D, got 4D instead"), "{e}");
    let e = err_of(&lstm, zeros(&[2, 3, 6]));
    assert!(e.contains("input.size(-1)") && e.contains("is 6 but must be 4"), "{e}");
    let e = err_of(&lstm, zeros(&[0, 3, 4]));
    assert!(e.contains("Expected sequence length to be larger than 0"), "{e}");
    let state = |h: &[usize], c: &[usize]| Value::Tuple(vec![zeros(h), zeros(c)]);
    let e = err_of(&lstm, Value::Tuple(vec![zeros(&[2, 3, 4]), state(&[2, 3, 5], &[2, 5])]));
    assert!(e.contains("hx and cx should also be 3-D but got (3-D, 2-D) tensors"), "{e}");
    let e = err_of(&lstm, Value::Tuple(vec![zeros(&[2, 3, 4]), state(&[2, 1, 5], &[2, 3, 5])]));
    assert!(e.contains("Expected hidden size (2, 3, 5), got [2, 1, 5]"), "{e}");
    let e = err_of(&lstm, Value::Tuple(vec![zeros(&[2, 3, 4]), state(&[2, 3, 5], &[1, 3, 5])]));
    assert!(e.contains("Expected hidden[1] size (2, 3, 5), got [1, 3, 5]"), "{e}");
    let e = err_of(&lstm, Value::Tuple(vec![zeros(&[2, 3, 4]), zeros(&[2, 3, 5])]));
    assert!(e.contains("a tuple (h, c)"), "{e}");
    let e = err_of(&gru, Value::Tuple(vec![zeros(&[2, 4]), zeros(&[1, 1, 5])]));
    assert!(e.contains("For unbatched 2-D input, hx should also be 2-D but got 3-D tensor"), "{e}");
    let e = err_of(&gru, Value::Tuple(vec![zeros(&[2, 4]), zeros(&[2, 5]), zeros(&[1])]));
    assert!(e.contains("a tuple (input, h_0)"), "{e}");
    let proj = LSTM::new(RnnOptions { proj_size: 2, ..RnnOptions::new(4, 5) }).unwrap();
    let e = err_of(&proj, Value::Tuple(vec![zeros(&[2, 3, 4]), state(&[1, 3, 5], &[1, 3, 5])]));
    assert!(e.contains("Expected hidden size (1, 3, 2), got [1, 3, 5]"), "{e}");

    let cell = LSTMCell::new(CellOptions { input_size: 4, hidden_size: 5, bias: true }).unwrap();
    let e = err_of(&cell, zeros(&[1, 2, 4]));
    assert!(e.contains("Expected input to be 1D or 2D, got 3D instead"), "{e}");
    let e = err_of(&cell, zeros(&[2, 3]));
    assert!(e.contains("input has inconsistent input_size: got 3 expected 4"), "{e}");
    let e = err_of(&cell, Value::Tuple(vec![zeros(&[2, 4]), state(&[3, 5], &[2, 5])]));
    assert!(e.contains("Input batch size 2 doesn't match hidden0 batch size 3"), "{e}");
    let e = err_of(&cell, Value::Tuple(vec![zeros(&[2, 4]), state(&[2, 5], &[2, 6])]));
    assert!(e.contains("hidden1 has inconsistent hidden_size: got 6, expected 5"), "{e}");
    let e = err_of(&cell, Value::Tuple(vec![zeros(&[4]), state(&[1, 5], &[1, 5])]));
    assert!(e.contains("got 2D instead"), "{e}");
    let rc =
        RNNCell::new(CellOptions { input_size: 4, hidden_size: 5, bias: true }, Nonlinearity::Relu).unwrap();
    let e = err_of(&rc, Value::Tuple(vec![zeros(&[2, 4]), zeros(&[2, 7])]));
    assert!(e.contains("hidden has inconsistent hidden_size: got 7, expected 5"), "{e}");
    let q = Value::Quant(
        qgraph::QuantTensor::quantize(&ArrayD::zeros(IxDyn(&[2, 4])), qgraph::PerTensor::new(0.1, 0))
            .unwrap(),
    );
    let e = err_of(&rc, q);
    assert!(e.contains("quantized"), "{e}");
}

/// Dropout between layers runs only in training mode, which qgraph does not run; with one
/// layer or in eval mode the module runs.
#[test]
fn dropout_in_training_is_refused() {
    let mut m: Box<dyn Module> =
        Box::new(LSTM::new(RnnOptions { num_layers: 2, dropout: 0.5, ..RnnOptions::new(3, 4) }).unwrap());
    let e = err_of(m.as_ref(), zeros(&[2, 1, 3]));
    assert!(e.contains("call eval"), "{e}");
    qgraph::eval(&mut m);
    let out = m.forward(zeros(&[2, 1, 3])).unwrap().into_tuple("test").unwrap();
    assert_eq!(out[0].shape().unwrap(), &[2, 1, 4]);
    let one = LSTM::new(RnnOptions { dropout: 0.5, ..RnnOptions::new(3, 4) }).unwrap();
    assert!(one.forward(zeros(&[2, 1, 3])).is_ok());
}

/// A batch of zero sequences gives empty outputs of the right shapes.
#[test]
fn empty_batch() {
    let m = GRU::new(RnnOptions { bidirectional: true, ..RnnOptions::new(3, 4) }).unwrap();
    let out = m.forward(zeros(&[5, 0, 3])).unwrap().into_tuple("test").unwrap();
    assert_eq!(out[0].shape().unwrap(), &[5, 0, 8]);
    assert_eq!(out[1].shape().unwrap(), &[2, 0, 4]);
}

/// Set in the children of the tier test: the directory their outputs go to.
const TIER_DIR: &str = "QGRAPH_RNN_TIER_OUT";
const TIER_TEST: &str = "outputs_are_the_same_on_every_tier_and_thread_count";

/// A seeded two-layer bidirectional LSTM with projections and a GRU on random data, their
/// outputs as bytes.
fn tier_outputs() -> Vec<u8> {
    manual_seed(5);
    let o = RnnOptions { num_layers: 2, bidirectional: true, batch_first: true, ..RnnOptions::new(40, 48) };
    let lstm = LSTM::new(RnnOptions { proj_size: 24, ..o }).unwrap();
    let gru = GRU::new(o).unwrap();
    let x = ArrayD::from_shape_vec(IxDyn(&[5, 20, 40]), qtest::random_f32s(5 * 20 * 40, 9)).unwrap();
    let mut bytes = Vec::new();
    for m in [&lstm as &dyn Module, &gru] {
        for (_, t) in outputs(m.type_name(), m.forward(f(x.clone())).unwrap()) {
            bytes.extend(t.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    bytes
}

/// The recurrence's bits depend on no tier and no thread count (NUMERICS §9.1 and §13):
/// `QKERNELS_ISA` is read once per process, so the test re-runs its binary once per tier.
#[test]
fn outputs_are_the_same_on_every_tier_and_thread_count() {
    use qgraph::qkernels::Isa;
    if let Some(dir) = std::env::var_os(TIER_DIR) {
        for threads in [1, 2] {
            let file = std::path::Path::new(&dir).join(format!("{}-t{threads}", Isa::active()));
            std::fs::write(file, qtest::thread_pool(threads).install(tier_outputs)).unwrap();
        }
        return;
    }
    let dir = std::env::temp_dir().join(format!("qgraph-rnn-tiers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut runs = Vec::new();
    for isa in Isa::ALL.into_iter().filter(|isa| isa.is_supported()) {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([TIER_TEST, "--exact", "--test-threads=1"])
            .env("QKERNELS_ISA", isa.name())
            .env(TIER_DIR, &dir)
            .output()
            .unwrap();
        assert!(status.status.success(), "{isa}: {}", String::from_utf8_lossy(&status.stderr));
        for threads in [1, 2] {
            runs.push((
                format!("{isa}, {threads} thread(s)"),
                std::fs::read(dir.join(format!("{isa}-t{threads}"))).unwrap(),
            ));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let (first, reference) = &runs[0];
    assert!(!reference.is_empty());
    for (run, bytes) in &runs[1..] {
        assert!(bytes == reference, "{run} differs from {first}");
    }
}

/// Parameters changed through `params_mut` (as `load_state_dict` does) are what the next
/// forward uses, also after a forward has run.
#[test]
fn changed_parameters_take_effect() {
    manual_seed(2);
    let o = RnnOptions { proj_size: 2, ..RnnOptions::new(3, 4) };
    let mut m = LSTM::new(o).unwrap();
    let x = || f(ArrayD::from_shape_vec(IxDyn(&[2, 1, 3]), qtest::random_f32s(6, 4)).unwrap());
    let before = outputs("LSTM", m.forward(x()).unwrap());
    let halved: Vec<(String, ArrayD<f32>)> =
        m.params().into_iter().map(|(k, t)| (k.to_string(), t / 2.0)).collect();
    for (_, t) in m.params_mut() {
        t.mapv_inplace(|v| v / 2.0);
    }
    let after = outputs("LSTM", m.forward(x()).unwrap());
    let fresh = outputs("LSTM", LSTM::from_tensors(o, halved).unwrap().forward(x()).unwrap());
    assert_ne!(before[0].1, after[0].1);
    for ((field, a), (_, b)) in after.iter().zip(&fresh) {
        assert_bits_eq("halved", field, a, b);
    }
}
