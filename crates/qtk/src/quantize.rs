//! `qtk quantize`: the eager post-training workflow on a model file: load (or import), fuse
//! (`fuse_auto`), prepare with the chosen qconfig, calibrate, convert, save; or
//! `quantize_dynamic`. Then the per-layer [`report`].

use qgraph::fuse::fuse_auto;
use qgraph::mappings::Mappings;
use qgraph::qconfig::{QConfig, get_default_qconfig};
use qgraph::workflow::{DynamicDType, DynamicQConfigSpec, quantize_dynamic};
use qgraph::{Module, QConfigMapping, Value, calibrate, convert_with, eval, prepare_with};

use crate::calib::Calib;
use crate::cli::QuantizeArgs;
use crate::error::{CliError, Result};
use crate::model::{self, InputInfo};
use crate::progress::{Progress, note};
use crate::report;

/// The qconfig `--qconfig` and `--per-tensor` name.
pub fn qconfig(args: &QuantizeArgs) -> Result<QConfig> {
    let mut qconfig = get_default_qconfig(args.qconfig.name())?;
    if args.per_tensor {
        qconfig.weight = qgraph::qobserve::defaults::default_weight_observer();
    }
    Ok(qconfig)
}

/// Runs the command.
pub fn main(args: &QuantizeArgs, quiet: bool) -> Result<()> {
    let loaded = model::load(&args.model)?;
    if loaded.inputs.len() > 1 {
        return Err(CliError::Input(format!(
            "{}: the model has {} inputs; qtk quantize feeds models with one input",
            args.model.display(),
            loaded.inputs.len()
        )));
    }
    let mut float = loaded.model;
    eval(&mut float);
    let calib = args.calib.as_deref().map(|path| Calib::open(path, &args.data)).transpose()?;
    let mut inputs = loaded.inputs;

    let (reference, quantized) = if args.dynamic {
        let mut quantized = float.clone();
        let swapped = quantize_dynamic(&mut quantized, DynamicQConfigSpec::Default, DynamicDType::QInt8)?;
        if swapped == 0 {
            return Err(CliError::Input(format!(
                "{}: no Linear, LSTM, GRU or recurrent cell to quantize dynamically; use static \
                 quantization (--calib) for this model",
                args.model.display()
            )));
        }
        note(quiet, &format!("quantize_dynamic (qint8): {swapped} modules swapped"));
        (float, quantized)
    } else {
        let calib =
            calib.as_ref().ok_or_else(|| CliError::Usage("--calib is required without --dynamic".into()))?;
        let mappings = qonnx::mappings();
        check_convertible(float.as_ref(), &mappings, &args.model)?;
        let mut fused = float;
        let groups = fuse_auto(&mut fused)?;
        note(quiet, &format!("fused {} module groups", groups.len()));
        let mut prepared = fused.clone();
        let mut mapping = QConfigMapping::global(qconfig(args)?);
        for path in &args.float_modules {
            if fused.get(path).is_err() {
                return Err(CliError::Usage(format!(
                    "--float {path}: {} has no module at that path; `qtk inspect` lists them",
                    args.model.display()
                )));
            }
            mapping = mapping.set_name(path, None);
        }
        let observers = prepare_with(&mut prepared, &mapping, &mappings)?;
        note(
            quiet,
            &format!(
                "prepared with the {} qconfig{} ({observers} observers); calibrating on {}",
                args.qconfig.name(),
                if args.per_tensor { ", per-tensor weights" } else { "" },
                calib.describe()
            ),
        );
        let progress = Progress::new("calibrating", calib.count(None), quiet);
        for (done, batch) in calib.batches(None).enumerate() {
            let batch = batch?;
            if inputs.is_empty() {
                // Record the calibration shape, with any batch size.
                let shape = batch.shape().iter().enumerate().map(|(i, &d)| (i > 0).then_some(d)).collect();
                inputs.push(InputInfo { name: "input".into(), shape });
            }
            calibrate(prepared.as_ref(), [batch], |_, _| {})?;
            progress.update(done + 1);
        }
        convert_with(&mut prepared, &mappings)?;
        if args.then_dynamic {
            let swapped = quantize_dynamic(&mut prepared, DynamicQConfigSpec::Default, DynamicDType::QInt8)?;
            note(quiet, &format!("then quantize_dynamic (qint8): {swapped} modules swapped"));
        }
        (fused, prepared)
    };

    // The comparison runs the quantized model, so a model that cannot run is not saved.
    let text =
        report_text(reference.as_ref(), quantized.as_ref(), calib.as_ref(), args.report_samples, quiet)?;
    write_suite_report(args, reference.as_ref(), quantized.as_ref(), calib.as_ref())?;
    let bytes = model::save(quantized.as_ref(), &args.output, &inputs)?;
    note(quiet, &format!("saved {} ({bytes} bytes)", args.output.display()));
    print!("{text}");
    Ok(())
}

/// An error naming the file when no module of `model` is one static quantization converts (a
/// model that is already quantized, or holds no float layer with a quantized form).
fn check_convertible(model: &dyn Module, mappings: &Mappings, path: &std::path::Path) -> Result<()> {
    let modules = model.named_modules();
    if modules.iter().any(|(_, m)| mappings.is_observed(*m)) {
        return Ok(());
    }
    let quantized: Vec<&str> =
        modules.iter().map(|(_, m)| m.type_name()).filter(|t| t.contains("Quantize")).collect();
    let hint = match quantized.first() {
        Some(t) => format!("it is already quantized (it holds {t}); quantize its float original"),
        None => "it holds no float module with a quantized form (Conv, Linear, QuantStub, ...)".to_string(),
    };
    Err(CliError::Input(format!("{}: nothing to quantize statically: {hint}", path.display())))
}

/// The report on `calib` (the first `samples` of it), or the list of the modules swapped when
/// there is no data to compare on.
fn report_text(
    reference: &dyn Module,
    quantized: &dyn Module,
    calib: Option<&Calib>,
    samples: Option<usize>,
    quiet: bool,
) -> Result<String> {
    let Some(calib) = calib else {
        let mut text = "quantized modules (no --calib, so no SQNR):\n".to_string();
        for path in report::quantized_paths(reference, quantized) {
            text += &format!("{path}  {}\n", quantized.get(&path)?.type_name());
        }
        return Ok(text);
    };
    let progress = Progress::new("comparing", calib.count(samples), quiet);
    let report = report::compare(reference, quantized, calib.batches(samples), |done| progress.update(done))?;
    Ok(report::render(&report))
}

/// Writes `qgraph::ns::report` as JSON and / or SVG where `--report-json` / `--report-svg` ask,
/// on the report samples of `calib`.
fn write_suite_report(
    args: &QuantizeArgs,
    reference: &dyn Module,
    quantized: &dyn Module,
    calib: Option<&Calib>,
) -> Result<()> {
    if args.report_json.is_none() && args.report_svg.is_none() {
        return Ok(());
    }
    let calib =
        calib.ok_or_else(|| CliError::Usage("--report-json / --report-svg need --calib data".into()))?;
    let inputs: Vec<Value> =
        calib.batches(args.report_samples).map(|b| b.map(Value::from)).collect::<Result<_>>()?;
    let report = qgraph::ns::report(reference, quantized, &inputs, None)?;
    if let Some(path) = &args.report_json {
        std::fs::write(path, report.to_json()?).map_err(|e| CliError::io(path, e))?;
    }
    if let Some(path) = &args.report_svg {
        std::fs::write(path, report.to_svg()).map_err(|e| CliError::io(path, e))?;
    }
    Ok(())
}
