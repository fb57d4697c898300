//! Models quantized in PyTorch 2.15 and exported with `tools/export_quantized.py` (fixtures from
//! `tools/golden/gen_export_quantized.py`): a narrow torchvision quantizable ResNet with
//! BasicBlocks, narrow quantizable MobileNetV2 and MobileNetV3 (Hardswish, squeeze-excitation with
//! a quantized mul and Hardsigmoid), a model of every other mapped module and op, a Conv3d model,
//! and `quantize_dynamic` models (a bidirectional LSTM with a linear head, a GRU with a float16
//! head, cells, embeddings). Each file loads with `qgraph::io::load` and prints exactly as PyTorch
//! printed the converted model. The static models:
//! - fed PyTorch's output of each module's predecessors (teacher forcing), give every module's
//!   int8 output equal to PyTorch's `int_repr` bit for bit, with PyTorch's scale and zero point;
//! - running freely, meet the zoo agreement bar (`agreement.rs`) on all layers together, are at
//!   least as close to PyTorch's "fbgemm" outputs as PyTorch's own "x86" engine is (the
//!   generator's `x86_equal_fraction`, `x86_final_max_abs`), and give PyTorch's top-1.
//!
//! The dynamic models: the LSTM's output is within `dynamic_rnn.rs`'s tolerance for stacks (MKL's
//! tanh, NUMERICS §12), and so are the head fed PyTorch's LSTM output, the GRU model and the cells;
//! the weight-only quint8 / quint4x2 embeddings are bit for bit.
//!
//! The static fixtures are PyTorch's "fbgemm" engine, whose arithmetic qgraph reproduces; under
//! "x86" on a CPU with AVX512-VNNI PyTorch runs symmetric-weight convolutions on oneDNN, which
//! rounds differently (docs/NUMERICS.md section 17). The exported weights are the same under both.
//!
//! `full_resnet18_from_pytorch_matches_layer_by_layer` does the same for the full torchvision
//! ResNet-18 that `gen_export_quantized.py --full` writes to `target/pytorch_int8/` (not
//! committed); without that file it prints why it does nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::ArrayD;
use qgraph::{Module, PerTensor, QuantTensor, Value, debug, io};
use qtest::Fixture;

mod common;
use common::{differences, mask_scales, params};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pytorch_int8");

/// The zoo agreement bar on the free-running model: all compared layers together.
const FREE_TOTAL_EQUAL: f64 = 0.85;
/// `dynamic_rnn.rs`'s bound for recurrent stacks, in ulps of the output's magnitude (at least 1).
const STACK_ULPS: f32 = 4.0;

/// A model file and its outputs fixture.
fn load(dir: &Path, name: &str) -> (Box<dyn Module>, Fixture) {
    let model = io::load(dir.join(format!("{name}.safetensors"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, Fixture::load(dir, &format!("{name}_outputs")))
}

fn order(fx: &Fixture) -> Vec<String> {
    let order = params(fx, "output")["order"].as_array().expect("order");
    order.iter().map(|p| p.as_str().expect("path").to_string()).collect()
}

/// PyTorch's quantized output at `path`, if it is one.
fn torch_quant(fx: &Fixture, path: &str) -> Option<QuantTensor> {
    if !fx.has("output", &format!("{path}.scale")) {
        return None;
    }
    let q = PerTensor::new(
        fx.tensor::<f64>("output", &format!("{path}.scale"))[[0]],
        fx.tensor::<i64>("output", &format!("{path}.zero_point"))[[0]],
    );
    Some(QuantTensor::from_int_repr(&fx.tensor::<u8>("output", path), q).expect("fixture value"))
}

/// The modules whose outputs are compared: leaves and QFunctionals.
fn leaf_or_functional(path: &str, m: &dyn Module) -> bool {
    (m.children().is_empty() && !path.ends_with("activation_post_process")) || m.type_name() == "QFunctional"
}

/// Per compared module: (path, elements, equal elements, largest difference).
type Layers = Vec<(String, usize, usize, i32)>;

/// Runs `model` on the fixture's input, logging (and, if `forced`, replacing downstream) every
/// quantized module's output by PyTorch's; compares each with PyTorch's (shape, scale and zero
/// point asserted equal, elements counted). Returns the comparison and the model's output.
fn run(name: &str, model: &mut Box<dyn Module>, fx: &Fixture, forced: bool) -> (Layers, ArrayD<f32>) {
    let order = order(fx);
    let torch: HashMap<String, Value> =
        order.iter().filter_map(|p| torch_quant(fx, p).map(|q| (p.clone(), Value::Quant(q)))).collect();
    let log = if forced {
        let force: debug::Forcing = Arc::new(move |path: &str| torch.get(path).cloned());
        debug::log_outputs_forced(model, leaf_or_functional, force)
    } else {
        debug::log_outputs(model, leaf_or_functional)
    }
    .expect("loggers");
    let x = fx.tensor::<f32>("input", "x");
    let out = model.forward(Value::from(x)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let outputs: BTreeMap<String, Value> = log.take().into_iter().collect();
    debug::remove_loggers(model).expect("remove loggers");
    let mut layers = Vec::new();
    for path in &order {
        let Some(want) = torch_quant(fx, path) else { continue };
        let Some(Value::Quant(got)) = outputs.get(path) else {
            panic!("{name}: no quantized output for {path}")
        };
        assert_eq!(got.shape(), want.shape(), "{name}: {path} shape");
        assert_eq!(got.qparams(), want.qparams(), "{name}: {path} scale and zero point");
        let (equal, worst) = differences(&got.int_repr(), &want.int_repr());
        layers.push((path.clone(), got.int_repr().len(), equal, worst));
    }
    (layers, out.into_float_lossy().expect("a tensor"))
}

fn argmax(x: &ArrayD<f32>) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
        .0
}

/// Loads `name` from `dir` and checks it against PyTorch: printout, every layer teacher-forced
/// bit for bit, the free-running model against the zoo bar; `min_layers` guards against a
/// fixture that compares nothing.
fn check_static(dir: &Path, name: &str, min_layers: usize) {
    let (mut model, fx) = load(dir, name);
    eprintln!("{name}: fixture made on {}", fx.cpu.as_deref().unwrap_or("an unrecorded CPU"));

    // The printout is PyTorch's, scales masked (ours print the f64 PyTorch keeps, its repr the same).
    let printed = params(&fx, "printed")["converted"].as_str().expect("printout");
    let (ours, theirs) = (mask_scales(&model.to_string()), mask_scales(printed));
    let differing: Vec<_> = ours.lines().zip(theirs.lines()).filter(|(a, b)| a != b).take(3).collect();
    assert!(differing.is_empty(), "{name}: printout lines differ: {differing:?}");
    assert_eq!(ours.lines().count(), theirs.lines().count(), "{name}: printout length");
    assert_eq!(model.to_string(), printed, "{name}: printout with scales");

    let (forced, _) = run(name, &mut model, &fx, true);
    assert!(forced.len() >= min_layers, "{name}: only {} layers compared", forced.len());
    let wrong: Vec<String> = forced
        .iter()
        .filter(|(_, n, eq, _)| eq != n)
        .map(|(p, n, eq, worst)| format!("{p}: {} of {n} differ, max {worst}", n - eq))
        .collect();
    assert!(wrong.is_empty(), "{name}: teacher-forced layers differ from PyTorch: {wrong:?}");
    eprintln!("{name}: {} layers teacher-forced, all bit-equal to PyTorch", forced.len());

    let (free, out) = run(name, &mut model, &fx, false);
    let (total, equal) = free.iter().fold((0, 0), |(t, e), (_, n, eq, _)| (t + n, e + eq));
    let fraction = equal as f64 / total as f64;
    let worst = free.iter().map(|l| l.3).max().unwrap_or(0);
    let final_torch = fx.tensor::<f32>("output", "final");
    let final_equal = out.iter().zip(&final_torch).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    eprintln!(
        "{name}: free-running: {:.4}% of {total} values equal over {} layers (max difference {worst}); final \
         output {final_equal} of {} bit-equal",
        fraction * 100.0,
        free.len(),
        out.len()
    );
    let final_max = out.iter().zip(&final_torch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let engines = &params(&fx, "output");
    let x86_fraction = engines["x86_equal_fraction"].as_f64().expect("x86_equal_fraction");
    let x86_final = engines["x86_final_max_abs"].as_f64().expect("x86_final_max_abs");
    eprintln!(
        "{name}: final output max |difference| {final_max:e}; PyTorch's own engines: x86 vs fbgemm {:.4}% \
         equal, final max |difference| {x86_final:e}",
        x86_fraction * 100.0
    );
    assert!(fraction >= FREE_TOTAL_EQUAL, "{name}: free-running, {fraction} equal");
    assert!(
        fraction >= x86_fraction,
        "{name}: free-running, {fraction} equal, below PyTorch's x86 vs fbgemm"
    );
    assert!(
        f64::from(final_max) <= x86_final,
        "{name}: final output off by {final_max}, beyond PyTorch's engines"
    );
    assert_eq!(argmax(&out), argmax(&final_torch), "{name}: top-1");
}

#[test]
fn resnet_from_pytorch_matches_layer_by_layer() {
    check_static(Path::new(DIR), "resnet", 20);
}

#[test]
fn mobilenet_v2_from_pytorch_matches_layer_by_layer() {
    check_static(Path::new(DIR), "mobilenet_v2", 50);
}

#[test]
fn mobilenet_v3_from_pytorch_matches_layer_by_layer() {
    check_static(Path::new(DIR), "mobilenet_v3", 100);
}

#[test]
fn every_mapped_module_and_op_from_pytorch_matches_layer_by_layer() {
    check_static(Path::new(DIR), "ops", 23);
}

#[test]
fn conv3d_and_batch_norm_3d_from_pytorch_match_layer_by_layer() {
    check_static(Path::new(DIR), "volume", 3);
}

/// Max |a - b| within the stack bound of `dynamic_rnn.rs`.
fn assert_within_stack_bound(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let max = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let equal = got.iter().zip(want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    eprintln!("lstm: {what}: max abs difference {max:e}, {equal} of {} bit-equal", got.len());
    assert!(
        max <= STACK_ULPS * scale * f32::EPSILON,
        "{what}: max abs difference {max:e} over {STACK_ULPS} ulps"
    );
}

#[test]
fn dynamic_lstm_from_pytorch_is_within_the_recurrent_tolerance() {
    let (model, fx) = load(Path::new(DIR), "lstm");
    let printed = params(&fx, "printed")["converted"].as_str().expect("printout");
    assert_eq!(model.to_string(), printed, "lstm: printout");
    let x = Value::from(fx.tensor::<f32>("input", "x"));
    let lstm = model.get("lstm").expect("lstm").forward(x.clone()).expect("lstm forward");
    let Value::Tuple(mut items) = lstm else { panic!("lstm: not a tuple") };
    let lstm_out = items.remove(0).into_float("test").expect("lstm output");
    assert_within_stack_bound("LSTM output", &lstm_out, &fx.tensor("output", "lstm"));
    // The head fed PyTorch's LSTM output.
    let head =
        model.get("fc").expect("fc").forward(Value::from(fx.tensor::<f32>("output", "lstm"))).expect("fc");
    assert_within_stack_bound(
        "head on PyTorch's LSTM output",
        &head.into_float("test").unwrap(),
        &fx.tensor("output", "fc"),
    );
    let out = model.forward(x).expect("forward").into_float("test").expect("a tensor");
    assert_within_stack_bound("model output", &out, &fx.tensor("output", "final"));
}

/// The model's outputs (a tuple flattened, in order) as floats.
fn float_outputs(y: Value) -> Vec<ArrayD<f32>> {
    match y {
        Value::Tuple(items) => items.into_iter().flat_map(float_outputs).collect(),
        other => vec![other.into_float("test").expect("a float output")],
    }
}

/// Loads a dynamically quantized model, checks its printout and runs it on the fixture's input:
/// each output within `ulps` (0: bit for bit) of PyTorch's.
fn check_dynamic(name: &str, input: Value, ulps: f32) {
    let (model, fx) = load(Path::new(DIR), name);
    let printed = params(&fx, "printed")["converted"].as_str().expect("printout");
    assert_eq!(model.to_string(), printed, "{name}: printout");
    let outputs = float_outputs(model.forward(input).unwrap_or_else(|e| panic!("{name}: {e}")));
    let fields: Vec<String> = if outputs.len() == 1 {
        vec!["final".to_string()]
    } else {
        (0..outputs.len()).map(|i| format!("final.{i}")).collect()
    };
    for (field, got) in fields.iter().zip(&outputs) {
        assert!(fx.has("output", field), "{name}: PyTorch gave no {field}");
        let want = fx.tensor::<f32>("output", field);
        assert_eq!(got.shape(), want.shape(), "{name}: {field} shape");
        let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let equal = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
        let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        eprintln!("{name}: {field}: max abs difference {max:e}, {equal} of {} bit-equal", got.len());
        assert!(max <= ulps * scale * f32::EPSILON, "{name}: {field} off by {max:e}, over {ulps} ulps");
    }
}

#[test]
fn dynamic_gru_with_a_float16_head_from_pytorch_is_within_the_recurrent_tolerance() {
    let fx = Fixture::load(DIR, "recurrent_outputs");
    check_dynamic("recurrent", Value::from(fx.tensor::<f32>("input", "x")), STACK_ULPS);
}

#[test]
fn dynamic_cells_and_linear_relu_from_pytorch_are_within_the_recurrent_tolerance() {
    let fx = Fixture::load(DIR, "cells_outputs");
    check_dynamic("cells", Value::from(fx.tensor::<f32>("input", "x")), STACK_ULPS);
}

#[test]
fn weight_only_embeddings_from_pytorch_are_bit_exact() {
    let fx = Fixture::load(DIR, "tables_outputs");
    check_dynamic("tables", Value::Int(fx.tensor::<i64>("input", "x")), 0.0);
}

/// `target/pytorch_int8`, where `gen_export_quantized.py --full` writes the full ResNet-18.
fn full_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pytorch_int8")
}

#[test]
fn full_resnet18_from_pytorch_matches_layer_by_layer() {
    let dir = full_dir();
    if !dir.join("resnet18_int8.safetensors").is_file() {
        eprintln!(
            "skipped: {} is missing; run `~/.torch-ref/bin/python tools/golden/gen_export_quantized.py --full`",
            dir.join("resnet18_int8.safetensors").display()
        );
        return;
    }
    check_static(&dir, "resnet18_int8", 30);
}
