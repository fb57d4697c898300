//! A text recognizer quantized as PyTorch users do it: a static int8 CNN front end feeding a
//! dynamic int8 BiLSTM and Linear head.
//!
//! ```text
//! cargo run --release -p qgraph --example crnn
//! ```
//!
//! Builds the float CRNN (`qgraph::models::crnn`) with the deterministic weights of
//! `tools/golden/gen_crnn.py`, fuses its five conv-bn-relu blocks, gives `quant`, `cnn` and
//! `dequant` the x86 default qconfig, prepares, calibrates on four lines, converts, then runs
//! `quantize_dynamic({LSTM, Linear}, qint8)` through the default dynamic table. It prints the
//! converted model, its agreement with PyTorch (the fixture `tests/fixtures/crnn.safetensors`:
//! features equal, logits difference and SQNR, argmax agreement over the 32 steps) and the
//! latency of the float and int8 models at one and two threads next to PyTorch's.

use std::time::Instant;

use ndarray::{ArrayD, Axis};
use qgraph::models::{self, crnn_line as line};
use qgraph::nn::{Permute, Squeeze};
use qgraph::{GraphResult, Module, QuantTensor, Value, eval, load_state_dict};
use qtest::{Fixture, f64_of};

const CLASSES: usize = 100;
const WARM_UP: usize = 5;
const RUNS: usize = 30;

fn run(model: &dyn Module, x: &ArrayD<f32>) -> GraphResult<ArrayD<f32>> {
    model.forward(Value::from(x.clone()))?.into_float_lossy()
}

/// Median milliseconds of `work` in a pool of `threads` threads.
fn median_ms(threads: usize, work: impl Fn() -> GraphResult<Value> + Send + Sync) -> GraphResult<f64> {
    let pool = qtest::thread_pool(threads);
    pool.install(|| {
        for _ in 0..WARM_UP {
            work()?;
        }
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let start = Instant::now();
            work()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[RUNS / 2])
    })
}

/// Median milliseconds of `model` on `x` in a pool of `threads` threads.
fn model_ms(model: &dyn Module, x: &ArrayD<f32>, threads: usize) -> GraphResult<f64> {
    median_ms(threads, || model.forward(Value::from(x.clone())))
}

/// 20 log10(|reference| / |reference - noisy|).
fn sqnr_db(reference: &ArrayD<f32>, noisy: &ArrayD<f32>) -> f64 {
    let signal = reference.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let noise =
        reference.iter().zip(noisy).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>();
    20.0 * (signal / noise.sqrt()).log10()
}

/// The argmax class of every step of `[T, N, classes]` logits.
fn argmaxes(x: &ArrayD<f32>) -> Vec<usize> {
    x.lanes(Axis(2))
        .into_iter()
        .map(|l| {
            l.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
        })
        .collect()
}

fn agreement(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let (a, b) = (argmaxes(a), argmaxes(b));
    a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// The LSTM's input from the CNN's features, as the model's graph makes it: dequantize,
/// squeeze the unit height, `[N, C, W]` -> `[W, N, C]`.
fn rnn_input(features: &QuantTensor) -> GraphResult<Value> {
    let seq = Value::Quant(features.clone()).to_float()?;
    let seq = Squeeze::new(2).forward(Value::Float(seq))?;
    Permute::new(&[2, 0, 1])?.forward(seq)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "this CPU".to_string())
}

fn main() -> GraphResult<()> {
    let start = Instant::now();
    let mut float = models::crnn(CLASSES)?;
    eval(&mut float);
    let state = models::deterministic_state_dict(float.as_ref())?;
    load_state_dict(&mut float, state)?;

    let mut model = float.clone();
    let swapped = models::quantize_crnn(&mut model, (500..504).map(line))?;
    println!("{model}");
    println!(
        "quantize_dynamic swapped {swapped} module(s); built in {:.2} s\n",
        start.elapsed().as_secs_f64()
    );

    let fx = Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "crnn");
    let case = &fx.cases[0];
    let x = line(999);
    let ours_float = run(float.as_ref(), &x)?;
    let ours_int8 = run(model.as_ref(), &x)?;
    let torch_float = fx.tensor::<f32>("crnn", "float");
    let torch_int8 = fx.tensor::<f32>("crnn", "quantized");

    let q = model.get("quant")?.forward(Value::from(x.clone()))?;
    let features = model.get("cnn")?.forward(q)?.into_quant("crnn example")?;
    let torch_features = fx.tensor::<u8>("crnn", "features");
    let equal = features.int_repr().iter().zip(&torch_features).filter(|(a, b)| a == b).count();
    let max_diff =
        |a: &ArrayD<f32>, b: &ArrayD<f32>| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);

    println!(
        "Agreement with PyTorch 2.15 (fixture from {}):",
        fx.cpu.as_deref().unwrap_or("an unrecorded CPU")
    );
    println!(
        "  CNN features (int8): {:.2}% equal ({equal} of {}), scale {:.6e} vs {:.6e}",
        100.0 * equal as f64 / torch_features.len() as f64,
        torch_features.len(),
        features.qparams().scale,
        fx.tensor::<f64>("crnn", "features.scale")[[0]],
    );
    println!("  float logits: max diff {:.2e}", max_diff(&ours_float, &torch_float));
    println!(
        "  int8 logits vs PyTorch's int8: max diff {:.2e}, SQNR {:.2} dB, argmax agreement {:.4}",
        max_diff(&ours_int8, &torch_int8),
        sqnr_db(&torch_int8, &ours_int8),
        agreement(&ours_int8, &torch_int8),
    );
    println!(
        "  int8 vs float: ours SQNR {:.2} dB, argmax agreement {:.4}; PyTorch's {:.2} dB, {:.4}",
        sqnr_db(&ours_float, &ours_int8),
        agreement(&ours_float, &ours_int8),
        f64_of(&case["sqnr_db"]),
        f64_of(&case["agreement"]),
    );

    println!("\nLatency, batch 1, one 32x128 line (median of {RUNS} runs after {WARM_UP}), {}:", cpu_name());
    println!("  {:<8} {:>12} {:>12} {:>8}", "threads", "float ms", "int8 ms", "speedup");
    for threads in [1, 2] {
        let f = model_ms(float.as_ref(), &x, threads)?;
        let q = model_ms(model.as_ref(), &x, threads)?;
        println!("  {threads:<8} {f:>12.3} {q:>12.3} {:>7.2}x", f / q);
    }
    let (tf, tq) = (f64_of(&case["torch_float_ms"]), f64_of(&case["torch_int8_ms"]));
    println!(
        "  PyTorch, 1 thread, on {}: float {tf:.3} ms, int8 {tq:.3} ms ({:.2}x)",
        fx.cpu.as_deref().unwrap_or("an unrecorded CPU"),
        tf / tq
    );
    // Where the int8 time goes: the static CNN (from the float line), the dynamic LSTM (from
    // the dequantized features read as a sequence) and the dynamic Linear head.
    let (cnn, rnn, fc) = (model.get("cnn")?, model.get("rnn")?, model.get("fc")?);
    let quant = model.get("quant")?;
    let seq = rnn_input(&features)?;
    let lstm_out = rnn.forward(seq.clone())?.into_tuple("crnn example")?.remove(0);
    println!("  int8 stages, ms (1 thread / 2 threads):");
    for (stage, work) in [
        (
            "quant + cnn (static)",
            &(|| cnn.forward(quant.forward(Value::from(x.clone()))?))
                as &(dyn Fn() -> GraphResult<Value> + Sync),
        ),
        ("rnn (dynamic LSTM)", &|| rnn.forward(seq.clone())),
        ("fc (dynamic Linear)", &|| fc.forward(lstm_out.clone())),
    ] {
        println!("    {stage:<22} {:>8.3} / {:.3}", median_ms(1, work)?, median_ms(2, work)?);
    }
    println!("\ntotal {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
