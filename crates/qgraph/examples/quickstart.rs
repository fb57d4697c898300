//! Quickstart: a handwritten-digit classifier quantized to int8 the way PyTorch's eager mode does
//! it, on real data, with no setup.
//!
//! ```text
//! cargo run --release -p qgraph --example quickstart
//! ```
//!
//! Loads `DigitsNet`'s float weights (trained by `tools/train_digits.py` on scikit-learn's 8x8
//! digits, committed in `crates/qgraph/assets/digits/`), fuses Conv+BN+ReLU, prepares with
//! `get_default_qconfig("x86")`, calibrates on the 1437 training images, converts, prints the
//! quantized model, and compares float and int8 on the 360 test images: accuracy (next to
//! PyTorch's, recorded by the training script), agreement, latency and size.

use std::io::Write;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, Axis};
use qgraph::{Module, Value, io};

mod digits;
use digits::Demo;

/// Draws `calibrating [#####.....] 12/23` on stderr, in place.
fn progress_bar(done: usize, total: Option<usize>) {
    const WIDTH: usize = 24;
    let total = total.unwrap_or(done).max(1);
    let filled = done.min(total) * WIDTH / total;
    let mut err = std::io::stderr().lock();
    let _ =
        write!(err, "\rcalibrating [{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(WIDTH - filled));
    if done >= total {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

/// Median time of `model` on one image (batch 1), over the test images after a warm-up.
fn latency(model: &dyn Module, images: &ArrayD<f32>) -> qgraph::GraphResult<Duration> {
    let inputs: Vec<Value> = images.axis_chunks_iter(Axis(0), 1).map(|x| Value::from(x.to_owned())).collect();
    for x in inputs.iter().take(50) {
        model.forward(x.clone())?;
    }
    let mut times = Vec::with_capacity(inputs.len());
    for x in &inputs {
        let x = x.clone();
        let start = Instant::now();
        model.forward(x)?;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn percent(correct: usize, total: usize) -> String {
    format!("{:.2}%", 100.0 * correct as f64 / total as f64)
}

fn main() -> digits::Result<()> {
    let start = Instant::now();
    let demo = Demo::run(progress_bar)?;
    println!("{}\n", demo.int8_model);

    let n = demo.test_labels.len();
    let (float_ms, int8_ms) = (
        latency(demo.float_model.as_ref(), &demo.test_images)?,
        latency(demo.int8_model.as_ref(), &demo.test_images)?,
    );
    let (float_bytes, int8_bytes) =
        (io::to_bytes(demo.float_model.as_ref())?.len(), io::to_bytes(demo.int8_model.as_ref())?.len());
    let torch = &demo.record;
    let (torch_float, torch_int8) = (demo.images(torch.float_accuracy), demo.images(torch.int8_accuracy));

    println!("DigitsNet on {n} held-out 8x8 digits (scikit-learn), int8 recipe: x86 default qconfig");
    println!("{:<32}{:>16}{:>16}", "", "float", "int8");
    let row = |label: &str, a: String, b: String| println!("{label:<32}{a:>16}{b:>16}");
    row(
        "test accuracy (qgraph)",
        format!("{} {:>3}/{n}", percent(demo.float_correct(), n), demo.float_correct()),
        format!("{} {:>3}/{n}", percent(demo.int8_correct(), n), demo.int8_correct()),
    );
    row(
        &format!("test accuracy (PyTorch {})", torch.torch_version.split('+').next().unwrap_or("?")),
        format!("{} {torch_float:>3}/{n}", percent(torch_float, n)),
        format!("{} {torch_int8:>3}/{n}", percent(torch_int8, n)),
    );
    row(
        "top-1 agreement",
        String::new(),
        format!("{} {:>3}/{n}", percent(demo.agreeing(), n), demo.agreeing()),
    );
    row(
        "latency, batch 1 (median)",
        format!("{:.1} µs", float_ms.as_secs_f64() * 1e6),
        format!("{:.1} µs", int8_ms.as_secs_f64() * 1e6),
    );
    row(
        "model size (io::to_bytes)",
        format!("{:.1} KiB", float_bytes as f64 / 1024.0),
        format!("{:.1} KiB", int8_bytes as f64 / 1024.0),
    );
    println!("(done in {:.2} s)", start.elapsed().as_secs_f64());
    Ok(())
}
