//! Cross-layer equalization and bias correction (`qgraph::equalize`) on a zoo MobileNetV2 with a
//! per-tensor weight qconfig: output SQNR against the float model and top-1 agreement on seeded
//! test images, before and after.
//!
//! ```text
//! cargo run --release -p qgraph --example equalize
//! ```
//!
//! The model: `mobilenet_v2(10)` with `deterministic_state_dict` weights and batch-norm gammas
//! spread per channel over 2^-3 .. 2^3 (so that folded channel ranges differ as in a trained
//! model), fused (`examples/equalize_setup`). Calibration: 8 seeded batches
//! `[4, 3, 64, 64]`; test: 16 other seeded batches. qconfig: `default_qconfig()` (MinMax
//! activations, per-tensor symmetric qint8 weights); `default_per_channel_qconfig()` is the
//! upper reference. Each row is measured twice: the int8 model, and the float model with the
//! int8 weights dequantized (`with_quantized_weights`: weight quantization alone, which is what
//! equalization addresses; with seeded weights the 52 layers amplify activation rounding more than
//! a trained model does).

use std::time::Instant;

use qgraph::equalize::{self, Agreement};
use qgraph::qconfig::{default_per_channel_qconfig, default_qconfig};
use qgraph::{Module, Value};

mod equalize_setup;
use equalize_setup::{Result, images, quantize, skewed_mobilenet_v2};

fn main() -> Result<()> {
    let start = Instant::now();
    let calibration = images(8, 1, 4, 64)?;
    let test: Vec<Value> = images(16, 1000, 4, 64)?.into_iter().map(Value::from).collect();
    let calibration_values: Vec<Value> = calibration.iter().cloned().map(Value::from).collect();

    let float = skewed_mobilenet_v2()?;
    let mut equalized = float.clone();
    let groups = equalize::find_equalizable_groups(equalized.as_ref());
    let sweeps = equalize::equalize(&mut equalized, &groups, equalize::DEFAULT_THRESHOLD)?;
    let layers: usize = groups.iter().map(Vec::len).sum();
    println!("CLE: {} groups, {layers} layers, {sweeps} sweeps to threshold 1e-4", groups.len());

    // The float function is kept: largest output difference relative to the largest output.
    let mut worst = 0.0f32;
    for x in &test {
        let a = float.forward(x.clone())?.into_float("float")?;
        let b = equalized.forward(x.clone())?.into_float("equalized")?;
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        worst = worst.max(a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
    }
    println!("float outputs after CLE: max |difference| / max |output| = {worst:.2e}\n");

    let mut rows: Vec<(&str, Agreement, Agreement)> = Vec::new();
    let mut row = |name, used: &dyn Module, quantized: &dyn Module| -> Result<()> {
        let int8 = equalize::output_agreement(float.as_ref(), quantized, &test)?;
        let weights = equalize::with_quantized_weights(used, quantized)?;
        let weight_only = equalize::output_agreement(float.as_ref(), weights.as_ref(), &test)?;
        rows.push((name, int8, weight_only));
        Ok(())
    };
    let per_tensor = quantize(float.as_ref(), default_qconfig(), &calibration)?;
    row("per-tensor", float.as_ref(), per_tensor.as_ref())?;

    let mut corrected = float.clone();
    equalize::bias_correction(&mut corrected, per_tensor.as_ref(), &calibration_values)?;
    let q = quantize(corrected.as_ref(), default_qconfig(), &calibration)?;
    row("per-tensor + bias correction", corrected.as_ref(), q.as_ref())?;

    let q_cle = quantize(equalized.as_ref(), default_qconfig(), &calibration)?;
    row("per-tensor + CLE", equalized.as_ref(), q_cle.as_ref())?;

    let mut cle_bc = equalized.clone();
    equalize::bias_correction(&mut cle_bc, q_cle.as_ref(), &calibration_values)?;
    let q = quantize(cle_bc.as_ref(), default_qconfig(), &calibration)?;
    row("per-tensor + CLE + bias correction", cle_bc.as_ref(), q.as_ref())?;

    let mut absorbed = float.clone();
    equalize::equalize_model(&mut absorbed, equalize::DEFAULT_THRESHOLD, Some(&calibration_values))?;
    let q = quantize(absorbed.as_ref(), default_qconfig(), &calibration)?;
    row("per-tensor + CLE + high-bias absorption", absorbed.as_ref(), q.as_ref())?;

    let q = quantize(float.as_ref(), default_per_channel_qconfig(), &calibration)?;
    row("per-channel (reference)", float.as_ref(), q.as_ref())?;

    println!("MobileNetV2 (10 classes), 64x64, {} test images; against the float model", test.len() * 4);
    println!("| weights | int8 SQNR (dB) | int8 top-1 | weight-only SQNR (dB) | weight-only top-1 |");
    println!("|---|---:|---:|---:|---:|");
    for (name, a, w) in rows {
        println!(
            "| {name} | {:.2} | {:.1}% | {:.2} | {:.1}% |",
            a.sqnr_db,
            100.0 * a.top1,
            w.sqnr_db,
            100.0 * w.top1
        );
    }
    println!("\n({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}
