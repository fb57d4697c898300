//! The per-layer report of a quantized model against its float model, as `qtk quantize` and
//! `qtk report` print and write it: `qgraph::ns::report` (weight SQNR, output SQNR free-running
//! and teacher-forced, range use, observer; then the model output's SQNR and top-1 agreement),
//! on the first samples of the calibration data.

use std::path::Path;

use qgraph::fuse::fuse_auto;
use qgraph::ns::Report;
use qgraph::{Module, Value};

use crate::calib::Calib;
use crate::cli::ReportArgs;
use crate::error::{CliError, Result};
use crate::model;
use crate::progress::note;
use crate::quantize;

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

/// The first `samples` samples of `calib` (all without a limit), batch by batch, as values.
pub fn inputs(calib: &Calib, samples: Option<usize>) -> Result<Vec<Value>> {
    calib.batches(samples).map(|b| b.map(Value::from)).collect()
}

/// A report and what it was computed on.
pub struct Compared {
    /// The numeric suite's report.
    pub report: Report,
    /// Samples compared.
    pub samples: usize,
}

impl Compared {
    /// The report as printed: a header naming the samples, the table, the worst layer and the
    /// model output.
    pub fn render(&self) -> String {
        let batches = self.report.inputs;
        let plural = if batches == 1 { "" } else { "es" };
        format!(
            "per-layer SQNR against the float model, on {} samples ({batches} batch{plural})\n{}\n",
            self.samples, self.report
        )
    }

    /// Writes the report as JSON and / or SVG.
    pub fn write(&self, json: Option<&Path>, svg: Option<&Path>) -> Result<()> {
        if let Some(path) = json {
            std::fs::write(path, self.report.to_json()?).map_err(|e| CliError::io(path, e))?;
        }
        if let Some(path) = svg {
            std::fs::write(path, self.report.to_svg()).map_err(|e| CliError::io(path, e))?;
        }
        Ok(())
    }
}

/// `qgraph::ns::report` of `quantized` against `reference` (the float model as convert saw it)
/// on the first `samples` of `calib`, with the observers of `prepared` if given.
pub fn compare(
    reference: &dyn Module,
    quantized: &dyn Module,
    prepared: Option<&dyn Module>,
    calib: &Calib,
    samples: Option<usize>,
    quiet: bool,
) -> Result<Compared> {
    let inputs = inputs(calib, samples)?;
    let count: usize =
        inputs.iter().map(|x| x.shape().ok().and_then(|s| s.first().copied()).unwrap_or(1)).sum();
    note(quiet, &format!("comparing with the float model on {count} samples"));
    let report = qgraph::ns::report(reference, quantized, &inputs, prepared)?;
    Ok(Compared { report, samples: count })
}

/// Runs `qtk report`.
pub fn main(args: &ReportArgs, quiet: bool) -> Result<()> {
    let (float, mut inputs) = quantize::load_float(&args.model)?;
    let calib = Calib::open(&args.calib, &args.data)?;
    let (reference, prepared, quantized) = match &args.quantized {
        Some(path) => {
            let quantized = model::load(path)?.model;
            let mut fused = float;
            fuse_auto(&mut fused)?;
            (fused, None, quantized)
        }
        None => {
            let plan = quantize::plan(&args.model, float, &args.quant, &calib, args.samples, quiet)?;
            print!("{}", plan.choice_text);
            let (prepared, quantized) = quantize::calibrate_convert(&plan, &calib, &mut inputs, quiet)?;
            (plan.fused, Some(prepared), quantized)
        }
    };
    let compared =
        compare(reference.as_ref(), quantized.as_ref(), prepared.as_deref(), &calib, args.samples, quiet)?;
    compared.write(args.json.as_deref(), args.svg.as_deref())?;
    print!("{}", compared.render());
    Ok(())
}
