//! Dynamic quantized LSTM, GRU and cells against PyTorch 2.15's `quantize_dynamic`
//! (`tools/golden/gen_dynamic_rnn.py`): weights and inputs from qtest's `random_f32s` stream (the
//! generator's docstring), qint8 per tensor and per channel and float16 weights; printouts,
//! outputs, save / load and the argument errors.
//!
//! Everything but the float tanh is PyTorch's bits: every output equals, bit for bit, what ATen
//! computes with the f64-rounded tanh in place of MKL's (the generator's `reference`, itself
//! checked to reproduce PyTorch with `torch.tanh`), and the ReLU cell, which has no tanh, equals
//! PyTorch's output. PyTorch's MKL tanh differs from ours on about 1% of the gate values here, by
//! 1 ulp (NUMERICS §12, §14), so against PyTorch's own outputs a few elements differ in their last
//! bits: a single cell step by at most 1 ulp of the output
//! scale (measured: at most 0.25 ulp, 95.2% to 100% of the elements bit-equal per case), a stack
//! over 50 steps and 2 layers by at most 4 ulps (measured: at most 1 ulp, 45.5% to 100% equal; no
//! step's per-call activation range moved, which would show as a jump of a quantization step,
//! about 1e-3, the order of `cross_engine_max_abs`).

use ndarray::{ArrayD, IxDyn};
use qgraph::io::{self, Loaders};
use qgraph::nn::{CellOptions, GRU, GRUCell, LSTM, LSTMCell, Nonlinearity, RNNCell, RnnOptions};
use qgraph::qconfig::{
    QConfig, default_dynamic_qconfig, float16_dynamic_qconfig, per_channel_dynamic_qconfig,
};
use qgraph::quantized::{
    DynamicQuantizedGRU, DynamicQuantizedLSTM, DynamicQuantizedLSTMCell, DynamicQuantizedRNNCell,
};
use qgraph::workflow::{DynamicDType, DynamicQConfigSpec, QConfigMapping, quantize_dynamic};
use qgraph::{GraphError, Module, Sequential, Value};
use qtest::{Fixture, assert_bits_eq, name, random_f32s};
use serde_json::Value as Json;

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "dynamic_rnn")
}

/// The generator's `det_tensor`: `random_f32s(numel, seed) * scale`, row-major in `shape`.
fn det(shape: &[usize], seed: u64, scale: f32) -> ArrayD<f32> {
    let n = shape.iter().product();
    let v = random_f32s(n, seed).into_iter().map(|x| x * scale).collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

fn u(case: &Json, k: &str) -> usize {
    case[k].as_u64().unwrap() as usize
}

fn b(case: &Json, k: &str) -> bool {
    case[k].as_bool().unwrap()
}

fn kind(case: &Json) -> &str {
    case["kind"].as_str().unwrap()
}

fn is_cell(case: &Json) -> bool {
    kind(case).ends_with("Cell")
}

fn qconfig(case: &Json) -> (QConfig, DynamicDType) {
    match case["qconfig"].as_str().unwrap() {
        "qint8" => (default_dynamic_qconfig(), DynamicDType::QInt8),
        "qint8_per_channel" => (per_channel_dynamic_qconfig(), DynamicDType::QInt8),
        "float16" => (float16_dynamic_qconfig(), DynamicDType::Float16),
        other => panic!("unknown qconfig {other}"),
    }
}

/// The float module of a case, its parameters set from the stream in state_dict order.
fn float_module(case: &Json) -> Box<dyn Module> {
    let (h, i) = (u(case, "hidden_size"), u(case, "input_size"));
    let cell = CellOptions { input_size: i, hidden_size: h, bias: b(case, "bias") };
    let rnn = || RnnOptions {
        num_layers: u(case, "num_layers"),
        bias: b(case, "bias"),
        batch_first: b(case, "batch_first"),
        bidirectional: b(case, "bidirectional"),
        ..RnnOptions::new(i, h)
    };
    let mut m: Box<dyn Module> = match kind(case) {
        "LSTM" => Box::new(LSTM::new(rnn()).unwrap()),
        "GRU" => Box::new(GRU::new(rnn()).unwrap()),
        "LSTMCell" => Box::new(LSTMCell::new(cell).unwrap()),
        "GRUCell" => Box::new(GRUCell::new(cell).unwrap()),
        "RNNCell" => {
            let nl = if case["nonlinearity"] == "relu" { Nonlinearity::Relu } else { Nonlinearity::Tanh };
            Box::new(RNNCell::new(cell, nl).unwrap())
        }
        other => panic!("unknown kind {other}"),
    };
    let seed = case["seed"].as_u64().unwrap();
    let bound = (h as f64).powf(-0.5) as f32;
    for (k, (_, p)) in m.params_mut().into_iter().enumerate() {
        *p = det(p.shape(), seed + 17 * k as u64, bound);
    }
    m
}

/// The case's input value: the input alone or with its initial state.
fn input(case: &Json) -> Value {
    let seed = case["seed"].as_u64().unwrap() + 1000;
    let (h, i, batch) = (u(case, "hidden_size"), u(case, "input_size"), u(case, "batch"));
    let lstm = kind(case).starts_with("LSTM");
    let (x_shape, s_shape) = if is_cell(case) {
        (vec![batch, i], vec![batch, h])
    } else {
        let t = u(case, "seq_len");
        let layers = u(case, "num_layers") * if b(case, "bidirectional") { 2 } else { 1 };
        let x = if b(case, "batch_first") { vec![batch, t, i] } else { vec![t, batch, i] };
        (x, vec![layers, batch, h])
    };
    let x = Value::Float(det(&x_shape, seed, 2.0));
    if !b(case, "initial_state") {
        return x;
    }
    let hx = Value::Float(det(&s_shape, seed + 1, 0.8));
    let state = if lstm { Value::Tuple(vec![hx, Value::Float(det(&s_shape, seed + 2, 0.8))]) } else { hx };
    Value::Tuple(vec![x, state])
}

/// The output tensors (a tree of tuples, flattened in order) under the fixture's field names.
fn outputs(kind: &str, y: Value) -> Vec<(&'static str, ArrayD<f32>)> {
    fn flatten(v: Value, out: &mut Vec<ArrayD<f32>>) {
        match v {
            Value::Tuple(items) => items.into_iter().for_each(|i| flatten(i, out)),
            other => out.push(other.into_float("test").unwrap()),
        }
    }
    let fields: &[&'static str] = match kind {
        "LSTM" => &["output", "h", "c"],
        "GRU" => &["output", "h"],
        "LSTMCell" => &["h", "c"],
        _ => &["h"],
    };
    let mut tensors = Vec::new();
    flatten(y, &mut tensors);
    assert_eq!(tensors.len(), fields.len(), "{kind}: outputs");
    fields.iter().copied().zip(tensors).collect()
}

/// The case's float module, `quantize_dynamic`-ed inside a `Sequential` with the case's qconfig.
fn quantized(case: &Json) -> Box<dyn Module> {
    let (qc, dtype) = qconfig(case);
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![float_module(case)]));
    let spec = DynamicQConfigSpec::Mapping(QConfigMapping::default().set_type(kind(case), Some(qc)));
    assert_eq!(quantize_dynamic(&mut model, spec, dtype).unwrap(), 1, "{}: one module swapped", name(case));
    model
}

/// Max |a - b| and the fraction of bit-equal elements.
fn compare(got: &ArrayD<f32>, want: &ArrayD<f32>) -> (f32, f64) {
    assert_eq!(got.shape(), want.shape());
    let max = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let eq = got.iter().zip(want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    (max, eq as f64 / got.len().max(1) as f64)
}

/// PyTorch's output `want` of `field` with the generator's `tanh64` corrections: what ATen computes
/// with the f64-rounded tanh in place of MKL's.
fn with_tanh64(fx: &Fixture, case: &str, field: &str, want: &ArrayD<f32>) -> ArrayD<f32> {
    let mut out = want.clone();
    if fx.has(case, &format!("{field}.tanh64_index")) {
        let index = fx.ints(case, &format!("{field}.tanh64_index"));
        let value: ArrayD<f32> = fx.tensor(case, &format!("{field}.tanh64_value"));
        let flat = out.as_slice_mut().unwrap();
        for (&i, &v) in index.iter().zip(&value) {
            flat[i as usize] = v;
        }
    }
    out
}

/// The allowed max |difference| for outputs of magnitude up to `scale` (at least 1), in ulps.
const CELL_ULPS: f32 = 1.0;
const STACK_ULPS: f32 = 4.0;

#[test]
fn outputs_and_printouts_match_pytorch() {
    let fx = fixture();
    assert_eq!(fx.cases.len(), 57);
    let loaders = Loaders::default();
    let (one_thread, two_threads) = (qtest::thread_pool(1), qtest::thread_pool(2));
    let mut unequal = Vec::new();
    for case in &fx.cases {
        let c = name(case);
        let model = quantized(case);
        let module = model.children()[0].1;
        assert_eq!(module.to_string(), case["repr"].as_str().unwrap(), "{c}: printout");
        // Two threads: a bidirectional layer runs its directions at once.
        let got = outputs(kind(case), two_threads.install(|| model.forward(input(case))).unwrap());
        for (field, y) in &got {
            let want: ArrayD<f32> = fx.tensor(c, field);
            let (max, eq) = compare(y, &want);
            println!("{c} {field}: max abs diff {max:e}, bit-equal fraction {eq:.6}");
            if case["nonlinearity"] == "relu" {
                // No tanh: the quantized projections alone, bit for bit.
                assert_bits_eq(c, field, y, &want);
            }
            // With PyTorch's MKL tanh replaced by the f64-rounded one, bit for bit.
            assert_bits_eq(c, &format!("{field} (ATen with tanh64)"), y, &with_tanh64(&fx, c, field, &want));
            let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
            let ulps = if is_cell(case) { CELL_ULPS } else { STACK_ULPS };
            assert!(max <= ulps * scale * f32::EPSILON, "{c}/{field}: max abs diff {max:e} over {ulps} ulps");
            if let Some(cross) = case["cross_engine_max_abs"].as_f64() {
                assert!(f64::from(max) * 100.0 <= cross, "{c}/{field}: {max:e} not far below {cross:e}");
            }
            if eq < 1.0 {
                unequal.push(format!("{c}/{field}"));
            }
        }
        // A second call (warm scratch, one thread: the directions one after the other) and a
        // saved and loaded copy give the same bits.
        let again = outputs(kind(case), one_thread.install(|| model.forward(input(case))).unwrap());
        let bytes = io::to_bytes(model.as_ref()).unwrap();
        let loaded = io::from_bytes_with(&bytes, &loaders).unwrap();
        assert_eq!(
            loaded.children()[0].1.to_string(),
            case["repr"].as_str().unwrap(),
            "{c}: loaded printout"
        );
        let reloaded = outputs(kind(case), loaded.forward(input(case)).unwrap());
        for (((f, a), (_, b)), (_, r)) in got.iter().zip(&again).zip(&reloaded) {
            assert_bits_eq(c, &format!("{f} (second call)"), b, a);
            assert_bits_eq(c, &format!("{f} (loaded)"), r, a);
        }
    }
    println!("not bit-equal (tanh): {} of the fields: {unequal:?}", unequal.len());
}

fn err_text(e: GraphError) -> String {
    e.to_string()
}

#[test]
fn from_float_errors_as_pytorch() {
    let q = default_dynamic_qconfig();
    let lstm = LSTM::new(RnnOptions { bias: false, ..RnnOptions::new(3, 4) }).unwrap();
    let e = err_text(DynamicQuantizedLSTM::from_float(&lstm, &q).unwrap_err());
    assert!(e.contains("mod.bias must be True"), "{e}");
    let cell = LSTMCell::new(CellOptions { input_size: 3, hidden_size: 4, bias: false }).unwrap();
    let e = err_text(DynamicQuantizedLSTMCell::from_float(&cell, &q).unwrap_err());
    assert!(e.contains("mod.bias must be True"), "{e}");
    let proj = LSTM::new(RnnOptions { proj_size: 2, ..RnnOptions::new(3, 4) }).unwrap();
    let e = err_text(DynamicQuantizedLSTM::from_float(&proj, &q).unwrap_err());
    assert!(e.contains("projections is not supported"), "{e}");
    let quint8 = qgraph::qconfig::float_qparams_weight_only_qconfig();
    let gru = GRU::new(RnnOptions::new(3, 4)).unwrap();
    let e = err_text(DynamicQuantizedGRU::from_float(&gru, &quint8).unwrap_err());
    assert!(e.contains("Unsupported dtype for dynamic RNN quantization"), "{e}");
}

#[test]
fn forward_errors_on_wrong_ranks_sizes_and_states() {
    let q = default_dynamic_qconfig();
    let lstm = DynamicQuantizedLSTM::from_float(&LSTM::new(RnnOptions::new(3, 4)).unwrap(), &q).unwrap();
    let run = |m: &dyn Module, v: Value| err_text(m.forward(v).unwrap_err());
    let x = |shape: &[usize]| Value::Float(ArrayD::zeros(IxDyn(shape)));
    // Unbatched input: PyTorch's dynamic modules need 3 dimensions.
    assert!(run(&lstm, x(&[5, 3])).contains("input must have 3 dimensions, got 2"));
    assert!(run(&lstm, x(&[5, 2, 4])).contains("input_size"));
    let bad_state = Value::Tuple(vec![x(&[5, 2, 3]), Value::Tuple(vec![x(&[1, 3, 4]), x(&[1, 2, 4])])]);
    assert!(run(&lstm, bad_state).contains("Expected hidden size"));
    let bad_c = Value::Tuple(vec![x(&[5, 2, 3]), Value::Tuple(vec![x(&[1, 2, 4]), x(&[1, 2, 5])])]);
    assert!(run(&lstm, bad_c).contains("hidden[1]"));
    assert!(run(&lstm, x(&[0, 2, 3])).contains("sequence length"));
    let cell_opts = CellOptions { input_size: 3, hidden_size: 4, bias: true };
    let cell = DynamicQuantizedRNNCell::from_float(&RNNCell::new(cell_opts, Nonlinearity::Tanh).unwrap(), &q)
        .unwrap();
    assert!(run(&cell, x(&[3])).contains("input must have 2 dimensions, got 1"));
    assert!(run(&cell, x(&[2, 5])).contains("input has inconsistent input_size: got 5 expected 3"));
    let hx_batch = Value::Tuple(vec![x(&[2, 3]), x(&[3, 4])]);
    assert!(run(&cell, hx_batch).contains("Input batch size 2 doesn't match hidden batch size 3"));
    let hx_size = Value::Tuple(vec![x(&[2, 3]), x(&[2, 5])]);
    assert!(run(&cell, hx_size).contains("hidden has inconsistent hidden_size: got 5, expected 4"));
    // And a valid call runs.
    assert_eq!(cell.forward(x(&[2, 3])).unwrap().shape().unwrap(), &[2, 4]);
}

/// Counts the allocations of the current thread (the other tests run on other threads).
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a thread-local `Cell` that allocates
// nothing.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn projections_allocate_nothing_once_warm() {
    use qgraph::nn::GateProjection;
    for qc in [default_dynamic_qconfig(), per_channel_dynamic_qconfig(), float16_dynamic_qconfig()] {
        let cell = LSTMCell::new(CellOptions { input_size: 5, hidden_size: 7, bias: true }).unwrap();
        let q = DynamicQuantizedLSTMCell::from_float(&cell, &qc).unwrap();
        let hh = &q.cells()[0].hh;
        let h: Vec<f32> = random_f32s(3 * 7, 9);
        let mut out = vec![0.0f32; 3 * 28];
        hh.project_into(&h, 3, &mut out).unwrap(); // warm: sizes the scratch
        let before = ALLOCATIONS.with(std::cell::Cell::get);
        for _ in 0..10 {
            hh.project_into(&h, 3, &mut out).unwrap();
        }
        assert_eq!(ALLOCATIONS.with(std::cell::Cell::get) - before, 0, "a warm step allocated");
        // The counter does count this thread's allocations.
        let boxed = std::hint::black_box(Box::new(1u64));
        assert_eq!(ALLOCATIONS.with(std::cell::Cell::get) - before, 1, "{boxed}");
    }
}
