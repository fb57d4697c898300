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
//! model), fused (`examples/equalize_setup`). The data-free rows read the batch-norm statistics
//! before fusing (`BnStatistics`) and follow the paper's order: equalize, absorb, correct. They
//! assume the statistics describe the data, which seeded ones do not: the second table is the
//! same float function with every batch norm re-parametrized so that its `β`, `γ` are its
//! output's mean and standard deviation on the calibration images. Calibration: 8 seeded batches
//! `[4, 3, 64, 64]`; test: 16 other seeded batches. qconfig: `default_qconfig()` (MinMax
//! activations, per-tensor symmetric qint8 weights); `default_per_channel_qconfig()` is the
//! upper reference. Each row is measured twice: the int8 model, and the float model with the
//! int8 weights dequantized (`with_quantized_weights`: weight quantization alone, which is what
//! equalization addresses; with seeded weights the 52 layers amplify activation rounding more than
//! a trained model does).

use std::collections::BTreeMap;
use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::equalize::{self, Agreement, BnStatistics};
use qgraph::nn::BatchNorm;
use qgraph::qconfig::{default_per_channel_qconfig, default_qconfig};
use qgraph::{Module, QConfigMapping, Value, debug, models, slot_mut};

#[allow(dead_code)] // the fused model, which the example builds from the unfused one
mod equalize_setup;
use equalize_setup::{Result, images, quantize, skewed_mobilenet_v2_unfused};

fn main() -> Result<()> {
    let start = Instant::now();
    let calibration = images(8, 1, 4, 64)?;
    let test: Vec<Value> = images(16, 1000, 4, 64)?.into_iter().map(Value::from).collect();

    println!("## Seeded batch-norm statistics\n");
    let unfused = skewed_mobilenet_v2_unfused()?;
    table(unfused, &calibration, &test)?;

    // The data-free steps assume that each batch norm's statistics describe the data, as in a
    // trained model; the seeded ones do not. The same float model with batch norms that do:
    println!("\n## The same float model, batch norms re-parametrized to describe the calibration images\n");
    let mut unfused = skewed_mobilenet_v2_unfused()?;
    describe_data(&mut unfused, &calibration)?;
    table(unfused, &calibration, &test)?;
    println!("\n({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Re-parametrizes every batch norm of `model` (unfused, in evaluation mode) so that its
/// statistics describe its input on `images`, as a trained model's do, without changing the
/// function: with `μ'`, `var'` the measured per-channel mean and (population) variance of the
/// input, `σ = sqrt(var + eps)`, the batch norm `γ (y − μ) / σ + β` becomes
/// `γ' (y − μ') / σ' + β'` with `γ' = γ σ' / σ` and `β' = β + γ (μ' − μ) / σ`, so that `β'` and
/// `γ'` are the mean and standard deviation of its output on `images`.
fn describe_data(model: &mut Box<dyn Module>, images: &[ArrayD<f32>]) -> Result<()> {
    let wanted: Vec<String> =
        models::fuse_groups(model.as_ref())?.into_iter().map(|g| g[1].clone()).collect();
    let log = debug::log_inputs(model, |p, _| wanted.iter().any(|w| w == p))?;
    let run = images.iter().try_for_each(|x| model.forward(Value::from(x.clone())).map(drop));
    debug::remove_loggers(model)?;
    run?;
    let mut moments: BTreeMap<String, (Vec<f64>, Vec<f64>, usize)> = BTreeMap::new();
    for (path, value) in log.take() {
        let x = value.into_float("batch norm input")?;
        let channels = x.shape()[1];
        let (sum, sq, n) =
            moments.entry(path).or_insert_with(|| (vec![0.0; channels], vec![0.0; channels], 0));
        for (c, lane) in x.axis_iter(Axis(1)).enumerate() {
            sum[c] += lane.iter().map(|&v| f64::from(v)).sum::<f64>();
            sq[c] += lane.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
        }
        *n += x.len() / channels;
    }
    for (path, (sum, sq, n)) in moments {
        let norm = (**slot_mut(model, &path)?).downcast_mut::<BatchNorm>().ok_or("a batch norm")?;
        let eps = norm.options().eps;
        let (mut mean, mut var, mut gamma, mut beta) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for c in 0..sum.len() {
            let m = sum[c] / n as f64;
            let v = (sq[c] / n as f64 - m * m).max(0.0);
            let old_sigma = (f64::from(norm.running_var()[c]) + eps).sqrt();
            let old_mean = f64::from(norm.running_mean()[c]);
            let g = norm.weight().map_or(1.0, |w| f64::from(w[c]));
            let b = norm.bias().map_or(0.0, |b| f64::from(b[c]));
            mean.push(m as f32);
            var.push(v as f32);
            gamma.push((g * (v + eps).sqrt() / old_sigma) as f32);
            beta.push((b + g * (m - old_mean) / old_sigma) as f32);
        }
        let vector = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v);
        norm.set_params(vector(mean)?, vector(var)?, Some((vector(gamma)?, vector(beta)?)))?;
    }
    Ok(())
}

/// The table of rows for the model `unfused` (the batch norms still in place).
fn table(unfused: Box<dyn Module>, calibration: &[ArrayD<f32>], test: &[Value]) -> Result<()> {
    let calibration_values: Vec<Value> = calibration.iter().cloned().map(Value::from).collect();
    // The data-free steps read the batch-norm statistics before fusing folds them.
    let stats = BnStatistics::from_zoo_model(unfused.as_ref())?;
    let mut float = unfused;
    models::fuse_model(&mut float)?;
    let mut equalized = float.clone();
    let groups = equalize::find_equalizable_groups(equalized.as_ref());
    let sweeps = equalize::equalize(&mut equalized, &groups, equalize::DEFAULT_THRESHOLD)?;
    let layers: usize = groups.iter().map(Vec::len).sum();
    println!("CLE: {} groups, {layers} layers, {sweeps} sweeps to threshold 1e-4", groups.len());

    // The float function is kept: largest output difference relative to the largest output.
    let mut worst = 0.0f32;
    for x in test {
        let a = float.forward(x.clone())?.into_float("float")?;
        let b = equalized.forward(x.clone())?.into_float("equalized")?;
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        worst = worst.max(a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
    }
    println!("float outputs after CLE: max |difference| / max |output| = {worst:.2e}\n");

    let mut rows: Vec<(&str, Agreement, Agreement)> = Vec::new();
    let mut row = |name, used: &dyn Module, quantized: &dyn Module| -> Result<()> {
        let int8 = equalize::output_agreement(float.as_ref(), quantized, test)?;
        let weights = equalize::with_quantized_weights(used, quantized)?;
        let weight_only = equalize::output_agreement(float.as_ref(), weights.as_ref(), test)?;
        rows.push((name, int8, weight_only));
        Ok(())
    };
    let per_tensor = quantize(float.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor", float.as_ref(), per_tensor.as_ref())?;

    let mut corrected = float.clone();
    equalize::bias_correction(&mut corrected, per_tensor.as_ref(), &calibration_values)?;
    let q = quantize(corrected.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + bias correction", corrected.as_ref(), q.as_ref())?;

    let q_cle = quantize(equalized.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + CLE", equalized.as_ref(), q_cle.as_ref())?;

    let mut cle_bc = equalized.clone();
    equalize::bias_correction(&mut cle_bc, q_cle.as_ref(), &calibration_values)?;
    let q = quantize(cle_bc.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + CLE + bias correction", cle_bc.as_ref(), q.as_ref())?;

    let mut absorbed = float.clone();
    equalize::equalize_model(&mut absorbed, equalize::DEFAULT_THRESHOLD, Some(&calibration_values))?;
    let q = quantize(absorbed.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + CLE + high-bias absorption", absorbed.as_ref(), q.as_ref())?;

    // Data-free (no calibration data until the activations are calibrated for convert).
    let mapping = QConfigMapping::global(default_qconfig());
    let mut analytic = float.clone();
    let corrected = equalize::analytic_bias_correction(&mut analytic, &stats, &mapping)?;
    println!("analytic bias correction: {} layers with a known input mean", corrected.len());
    let q = quantize(analytic.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + analytic bias correction (data-free)", analytic.as_ref(), q.as_ref())?;

    let mut cle_analytic = equalized.clone();
    equalize::analytic_bias_correction(&mut cle_analytic, &stats, &mapping)?;
    let q = quantize(cle_analytic.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + CLE + analytic bias correction (data-free)", cle_analytic.as_ref(), q.as_ref())?;

    let mut bn_absorbed = equalized.clone();
    let mut absorbed_stats = stats.clone();
    let pairs = equalize::absorb_high_biases_from_bn(&mut bn_absorbed, &mut absorbed_stats)?;
    let moved = pairs.iter().flat_map(|(_, _, c)| c).filter(|&&c| c > 0.0).count();
    let channels: usize = pairs.iter().map(|(_, _, c)| c.len()).sum();
    println!("BN high-bias absorption: {} pairs, {moved} of {channels} channels with c > 0", pairs.len());
    let q = quantize(bn_absorbed.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + CLE + BN high-bias absorption (data-free)", bn_absorbed.as_ref(), q.as_ref())?;

    let mut dfq = bn_absorbed.clone();
    equalize::analytic_bias_correction(&mut dfq, &absorbed_stats, &mapping)?;
    let q = quantize(dfq.as_ref(), default_qconfig(), calibration)?;
    row("per-tensor + CLE + BN absorption + analytic correction (data-free)", dfq.as_ref(), q.as_ref())?;

    let q = quantize(float.as_ref(), default_per_channel_qconfig(), calibration)?;
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
    Ok(())
}
