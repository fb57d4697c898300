//! The quantization report: per quantized module, the SQNR of its output against the float
//! model's output of the same module on the same data (recorded with qgraph's output loggers),
//! then the model output's SQNR and, for a classifier, top-1 agreement.
//!
//! SQNR is PyTorch's `compute_sqnr` (`torch.ao.ns.fx.utils`): `20 log10(‖x‖ / ‖x − y‖)` with `x`
//! the float output and `y` the dequantized one, summed over all compared samples. Each module
//! runs on its own model's inputs, so the numbers include the error of the layers before it
//! (PyTorch's `compare_model_outputs`).

use std::collections::HashSet;

use ndarray::{ArrayD, Axis};
use qgraph::debug::log_outputs;
use qgraph::ns::SqnrSum;
use qgraph::{Module, Value};

use crate::error::{CliError, Result};

/// One compared module.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Its path.
    pub path: String,
    /// Its type in the quantized model.
    pub type_name: String,
    /// Its signal and noise, once it has run.
    sum: Option<SqnrSum>,
}

impl Layer {
    /// The SQNR in dB (NaN for a module that never ran).
    pub fn sqnr(&self) -> f64 {
        self.sum.map_or(f64::NAN, |sum| sum.db())
    }
}

/// The comparison of a float model and its quantized form.
#[derive(Debug, Clone)]
pub struct Report {
    /// The quantized modules, in execution order.
    pub layers: Vec<Layer>,
    output: SqnrSum,
    /// Samples compared.
    pub samples: usize,
    /// `(agreeing, compared)` rows, when the output is a classifier's `[N, classes]`.
    pub top1: Option<(usize, usize)>,
}

impl Report {
    /// The model output's SQNR in dB.
    pub fn output_sqnr(&self) -> f64 {
        self.output.db()
    }
}

/// The paths of the modules `convert` replaced (their type differs between the float and the
/// quantized model), outermost only.
pub fn quantized_paths(float: &dyn Module, quant: &dyn Module) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for (path, module) in quant.named_modules() {
        if path.is_empty() || paths.iter().any(|p| path.starts_with(&format!("{p}."))) {
            continue;
        }
        if float.get(&path).is_ok_and(|f| f.type_name() != module.type_name()) {
            paths.push(path);
        }
    }
    paths
}

/// Runs `batches` through both models with loggers on the [quantized paths](quantized_paths)
/// and accumulates the comparison.
pub fn compare(
    float: &dyn Module,
    quant: &dyn Module,
    batches: impl Iterator<Item = Result<ArrayD<f32>>>,
    mut on_batch: impl FnMut(usize),
) -> Result<Report> {
    let paths = quantized_paths(float, quant);
    let chosen: HashSet<String> = paths.iter().cloned().collect();
    let (mut float, mut quant) = (float.clone_module(), quant.clone_module());
    let float_log = log_outputs(&mut float, |p, _| chosen.contains(p))?;
    let quant_log = log_outputs(&mut quant, |p, _| chosen.contains(p))?;
    let mut layers: Vec<Layer> = paths
        .iter()
        .map(|p| {
            let type_name = quant.get(p).map(|m| m.type_name().to_string()).unwrap_or_default();
            Layer { path: p.clone(), type_name, sum: None }
        })
        .collect();
    let mut report = Report { layers: Vec::new(), output: SqnrSum::default(), samples: 0, top1: None };
    // The order in which the modules first ran.
    let mut order: Vec<String> = Vec::new();
    for (done, batch) in batches.enumerate() {
        let batch = batch?;
        report.samples += batch.shape().first().copied().unwrap_or(1);
        let x = Value::from(batch);
        let float_out = float.forward(x.clone())?;
        let quant_out = quant.forward(x)?;
        let quant_outputs = quant_log.take();
        for (path, f) in float_log.take() {
            if !order.contains(&path) {
                order.push(path.clone());
            }
            let Some((_, q)) = quant_outputs.iter().find(|(p, _)| *p == path) else { continue };
            let layer = layers.iter_mut().find(|l| l.path == path).expect("a logged path was chosen");
            accumulate(layer.sum.get_or_insert_default(), &f, q, &path)?;
        }
        accumulate(&mut report.output, &float_out, &quant_out, "the model output")?;
        if let (Ok(f), Ok(q)) = (float_out.to_float(), quant_out.to_float())
            && f.ndim() == 2
            && f.shape()[1] > 1
        {
            let (agree, total) = report.top1.unwrap_or((0, 0));
            let same = argmax_rows(&f).iter().zip(argmax_rows(&q)).filter(|(a, b)| **a == *b).count();
            report.top1 = Some((agree + same, total + f.shape()[0]));
        }
        on_batch(done + 1);
    }
    // Modules that never ran (an unused branch) have nothing to report.
    layers.retain(|l| l.sum.is_some());
    layers.sort_by_key(|l| order.iter().position(|p| *p == l.path));
    report.layers = layers;
    Ok(report)
}

/// Adds the tensors of `float` and `quant` (tuples leaf by leaf) to `sum`.
fn accumulate(sum: &mut SqnrSum, float: &Value, quant: &Value, what: &str) -> Result<()> {
    let (f, q) = (leaves(float)?, leaves(quant)?);
    if f.len() != q.len() || f.iter().zip(&q).any(|(a, b)| a.shape() != b.shape()) {
        return Err(CliError::Input(format!(
            "{what}: the float model gives {} but the quantized one {}; they cannot be compared",
            float.describe(),
            quant.describe()
        )));
    }
    for (a, b) in f.iter().zip(&q) {
        sum.add(a, b)?;
    }
    Ok(())
}

/// The float (or dequantized) tensors of a value, tuples flattened in order; int64 tensors are
/// not compared.
fn leaves(value: &Value) -> Result<Vec<ArrayD<f32>>> {
    match value {
        Value::Tuple(values) => Ok(values.iter().map(leaves).collect::<Result<Vec<_>>>()?.concat()),
        Value::Int(_) => Ok(Vec::new()),
        other => Ok(vec![other.to_float()?]),
    }
}

/// The index of each row's largest value (the first on ties).
pub fn argmax_rows(x: &ArrayD<f32>) -> Vec<usize> {
    x.axis_iter(Axis(0))
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[[best]] { i } else { best }))
        .collect()
}

/// A number of dB as printed.
fn db(x: f64) -> String {
    if x.is_infinite() { "inf".to_string() } else { format!("{x:.2}") }
}

/// The report as printed: one line per module, then the output and top-1 agreement.
pub fn render(report: &Report) -> String {
    let width = report.layers.iter().map(|l| l.path.len()).max().unwrap_or(0).max("model output".len());
    let type_width = report.layers.iter().map(|l| l.type_name.len()).max().unwrap_or(0).max(4);
    let mut out =
        format!("SQNR of each quantized module against the float model, on {} samples\n", report.samples);
    out += &format!("{:<width$}  {:<type_width$}  {:>8}\n", "module", "type", "SQNR dB");
    for layer in &report.layers {
        out +=
            &format!("{:<width$}  {:<type_width$}  {:>8}\n", layer.path, layer.type_name, db(layer.sqnr()));
    }
    out += &format!("{:<width$}  {:<type_width$}  {:>8}\n", "model output", "", db(report.output_sqnr()));
    if let Some((agree, total)) = report.top1 {
        let percent = 100.0 * agree as f64 / total.max(1) as f64;
        out += &format!("top-1 agreement: {agree}/{total} ({percent:.2}%)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties() {
        let x =
            ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 3]), vec![1.0f32, 3.0, 3.0, 5.0, 0.0, 4.0]).unwrap();
        assert_eq!(argmax_rows(&x), [1, 0]);
    }
}
