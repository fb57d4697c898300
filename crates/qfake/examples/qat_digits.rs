//! Quantization-aware training of the digits model: post-training quantization at 8-bit and
//! 4-bit weights, then PyTorch's QAT recipe from the float checkpoint at both widths, with
//! PyTorch's own figures for the same recipe beside ours.
//!
//! ```sh
//! cargo run --release -p qfake --example qat_digits
//! ```

mod qat;

use std::io::Write;
use std::time::Instant;

use qat::{Bits, Recipe, Setup, Training, digits::Result};

fn bar(label: &str, done: usize, total: usize, loss: f32) {
    let width = 24;
    let filled = done * width / total.max(1);
    eprint!("\r{label} [{}{}] {done}/{total} loss {loss:.5}", "#".repeat(filled), " ".repeat(width - filled));
    let _ = std::io::stderr().flush();
}

fn main() -> Result<()> {
    // One thread, as PyTorch's figures were measured.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| run().map_err(|e| e.to_string()))?;
    Ok(())
}

fn run() -> Result<()> {
    qgraph::set_pytorch_threads(1);
    let setup = Setup::load()?;
    let recipe = Recipe::load()?;
    let float = setup.correct(setup.float_model.as_ref())?;
    let ptq8 = setup.correct(setup.ptq(Bits::Eight)?.as_ref())?;
    let ptq4 = setup.correct(setup.ptq(Bits::Four)?.as_ref())?;
    let mut rows = Vec::new();
    let mut epoch_seconds = Vec::new();
    for (bits, name) in [(Bits::Eight, "qat8"), (Bits::Four, "qat4")] {
        let mut run = Training::new(&setup, &recipe, bits)?;
        for epoch in 0..recipe.epoch_orders.len() {
            let label = format!("{name} epoch {}/{}", epoch + 1, recipe.epoch_orders.len());
            let start = Instant::now();
            run.epoch(&setup, &recipe, epoch, |done, total, loss| bar(&label, done, total, loss))?;
            if bits == Bits::Eight {
                epoch_seconds.push(start.elapsed().as_secs_f64());
            }
        }
        eprintln!();
        rows.push((name, run.qat_correct(&setup)?, setup.correct(run.converted()?.as_ref())?));
    }
    let n = setup.test_labels.len();
    let pct = |c: usize| format!("{:6.2}% {c}/{n}", 100.0 * c as f64 / n as f64);
    println!(
        "\nDigitsNet on {n} held-out 8x8 digits: post-training quantization vs quantization-aware training"
    );
    println!("{:<34}{:>18}{:>22}", "", "ours", format!("PyTorch {}", recipe.torch));
    println!("{:<34}{:>18}{:>22}", "float", pct(float), pct(recipe.accuracy_of("float")));
    println!("{:<34}{:>18}{:>22}", "PTQ, 8-bit weights", pct(ptq8), pct(recipe.accuracy_of("ptq8")));
    println!("{:<34}{:>18}{:>22}", "PTQ, 4-bit weights (-8..7)", pct(ptq4), pct(recipe.accuracy_of("ptq4")));
    for (name, model, converted) in rows {
        let bits = if name == "qat8" { "8" } else { "4" };
        println!(
            "{:<34}{:>18}{:>22}",
            format!("QAT, {bits}-bit, fake-quantized"),
            pct(model),
            pct(recipe.accuracy_of(&format!("{name}_model")))
        );
        println!(
            "{:<34}{:>18}{:>22}",
            format!("QAT, {bits}-bit, converted int8"),
            pct(converted),
            pct(recipe.accuracy_of(&format!("{name}_converted")))
        );
    }
    epoch_seconds.sort_by(f64::total_cmp);
    let median = epoch_seconds[epoch_seconds.len() / 2];
    println!(
        "{:<34}{:>18}{:>22}",
        "one QAT epoch, 1 thread (median)",
        format!("{:.3} s", median),
        format!("{:.3} s", recipe.pytorch_epoch_seconds)
    );
    println!("(PyTorch's figures: tools/golden/gen_qat_digits.py on {})", recipe.cpu);
    Ok(())
}
