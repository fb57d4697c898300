//! `qtk quantize`: the eager post-training workflow on a model file: load (or import), fuse
//! (`fuse_auto`), prepare with the chosen qconfig (and calibrators), calibrate, convert, save; or
//! `quantize_dynamic`; or the accuracy-driven float fallback (`--target`). Then the per-layer
//! [`report`].

use std::path::Path;

use qgraph::calibrator_choice::{Calibrator, choose_calibrators};
use qgraph::fallback::{self, Target};
use qgraph::fuse::fuse_auto;
use qgraph::mappings::Mappings;
use qgraph::qconfig::{QConfig, get_default_qconfig};
use qgraph::workflow::{DynamicDType, DynamicQConfigSpec, quantize_dynamic};
use qgraph::{Module, QConfigMapping, Value, calibrate, convert_with, eval, prepare_with};

use crate::calib::Calib;
use crate::cli::{CalibratorArg, QuantizeArgs, StaticArgs, TargetArg};
use crate::error::{CliError, Result};
use crate::model::{self, InputInfo};
use crate::progress::{Progress, note};
use crate::report;

/// The qconfig `--qconfig` and `--per-tensor` name.
pub fn qconfig(args: &StaticArgs) -> Result<QConfig> {
    let mut qconfig = get_default_qconfig(args.qconfig.name())?;
    if args.per_tensor {
        qconfig.weight = qgraph::qobserve::defaults::default_weight_observer();
    }
    Ok(qconfig)
}

/// The calibrator a fixed `--calibrator` names (none for `default` and `auto`).
fn fixed_calibrator(arg: CalibratorArg) -> Option<Calibrator> {
    match arg {
        CalibratorArg::Default | CalibratorArg::Auto => None,
        CalibratorArg::Minmax => Some(Calibrator::MinMax),
        CalibratorArg::MovingAverage => Some(Calibrator::MovingAverageMinMax),
        CalibratorArg::Histogram => Some(Calibrator::Histogram),
        CalibratorArg::Percentile => Some(Calibrator::Percentile(99.99)),
        CalibratorArg::Entropy => Some(Calibrator::Entropy),
        CalibratorArg::Mse => Some(Calibrator::Mse),
    }
}

/// Loads the float model at `path` (one input), in eval mode, with the inputs its file records.
pub fn load_float(path: &Path) -> Result<(Box<dyn Module>, Vec<InputInfo>)> {
    let loaded = model::load(path)?;
    if loaded.inputs.len() > 1 {
        return Err(CliError::Input(format!(
            "{}: the model has {} inputs; qtk feeds models with one input",
            path.display(),
            loaded.inputs.len()
        )));
    }
    let mut float = loaded.model;
    eval(&mut float);
    Ok((float, loaded.inputs))
}

/// A float model ready to be prepared: fused, with its qconfig mapping (float layers and
/// calibrators applied) and the mapping table.
pub struct Plan {
    /// The float model after `fuse_auto`.
    pub fused: Box<dyn Module>,
    /// The qconfigs it is prepared with.
    pub mapping: QConfigMapping,
    /// The mapping table (qgraph's and the ONNX importer's modules).
    pub mappings: Mappings,
    /// The calibrator choice table of `--calibrator auto`, or nothing.
    pub choice_text: String,
    /// The qconfig in words, for notes: `the x86 qconfig, per-tensor weights`.
    pub describe: String,
}

/// Fuses `float` and builds its qconfig mapping from `args`; with `--calibrator auto`, chooses
/// each observer point's calibrator on `calib` (measured on its first `samples`).
pub fn plan(
    model_path: &Path,
    float: Box<dyn Module>,
    args: &StaticArgs,
    calib: &Calib,
    samples: Option<usize>,
    quiet: bool,
) -> Result<Plan> {
    let mappings = qonnx::mappings();
    check_convertible(float.as_ref(), &mappings, model_path)?;
    let mut fused = float;
    let groups = fuse_auto(&mut fused)?;
    note(quiet, &format!("fused {} module groups", groups.len()));
    let mut qconfig = qconfig(args)?;
    if let Some(calibrator) = fixed_calibrator(args.calibrator) {
        let range = Calibrator::replaceable(&qconfig.activation).ok_or_else(|| {
            CliError::Usage(format!(
                "--calibrator {}: the {} qconfig's activation observer is not a per-tensor range observer",
                calibrator.name(),
                args.qconfig.name()
            ))
        })?;
        qconfig.activation = calibrator.spec(range);
    }
    let mut mapping = QConfigMapping::global(qconfig);
    for path in &args.float_modules {
        if fused.get(path).is_err() {
            return Err(CliError::Usage(format!(
                "--float {path}: {} has no module at that path; `qtk inspect` lists them",
                model_path.display()
            )));
        }
        mapping = mapping.set_name(path, None);
    }
    let mut choice_text = String::new();
    if args.calibrator == CalibratorArg::Auto {
        note(quiet, &format!("choosing each layer's calibrator on {}", calib.describe()));
        let calibration = report::inputs(calib, None)?;
        let measured = report::inputs(calib, samples)?;
        let choice = choose_calibrators(
            fused.as_ref(),
            &mapping,
            &mappings,
            &Calibrator::ALL,
            &calibration,
            &measured,
        )?;
        choice_text = format!("{choice}\n");
        mapping = choice.mapping;
    }
    let describe = format!(
        "the {} qconfig{}{}",
        args.qconfig.name(),
        if args.per_tensor { ", per-tensor weights" } else { "" },
        match args.calibrator {
            CalibratorArg::Default => String::new(),
            CalibratorArg::Auto => ", calibrators chosen per layer".to_string(),
            other =>
                format!(", {} activations", fixed_calibrator(other).map(Calibrator::name).unwrap_or_default()),
        }
    );
    Ok(Plan { fused, mapping, mappings, choice_text, describe })
}

/// Records the shape of the first calibration batch as the model's input (any batch size) when
/// the file recorded none.
fn record_input(inputs: &mut Vec<InputInfo>, batch: &ndarray::ArrayD<f32>) {
    if inputs.is_empty() {
        let shape = batch.shape().iter().enumerate().map(|(i, &d)| (i > 0).then_some(d)).collect();
        inputs.push(InputInfo { name: "input".into(), shape });
    }
}

/// Prepares `plan`'s model, calibrates it on `calib` and converts it: the calibrated model and
/// the quantized one.
pub fn calibrate_convert(
    plan: &Plan,
    calib: &Calib,
    inputs: &mut Vec<InputInfo>,
    quiet: bool,
) -> Result<(Box<dyn Module>, Box<dyn Module>)> {
    let mut prepared = plan.fused.clone();
    let observers = prepare_with(&mut prepared, &plan.mapping, &plan.mappings)?;
    note(
        quiet,
        &format!(
            "prepared with {} ({observers} observers); calibrating on {}",
            plan.describe,
            calib.describe()
        ),
    );
    let progress = Progress::new("calibrating", calib.count(None), quiet);
    for (done, batch) in calib.batches(None).enumerate() {
        let batch = batch?;
        record_input(inputs, &batch);
        calibrate(prepared.as_ref(), [batch], |_, _| {})?;
        progress.update(done + 1);
    }
    let mut quantized = prepared.clone();
    convert_with(&mut quantized, &plan.mappings)?;
    Ok((prepared, quantized))
}

/// The fallback target of `--target`.
fn target(arg: TargetArg) -> Target {
    match arg {
        TargetArg::Sqnr(db) => Target::OutputSqnr(db),
        TargetArg::Agreement(percent) => {
            Target::MetricWithin { points: 100.0 - percent, higher_is_better: true }
        }
    }
}

/// `--target`: the float fallback search on the calibration data, evaluated on the report
/// samples; the trade-off table and the chosen model.
fn search(
    plan: &Plan,
    arg: TargetArg,
    calib: &Calib,
    samples: Option<usize>,
    inputs: &mut Vec<InputInfo>,
    quiet: bool,
) -> Result<(String, Box<dyn Module>)> {
    let calibration = report::inputs(calib, None)?;
    if let Some(Value::Float(first)) = calibration.first() {
        record_input(inputs, first);
    }
    let measured = report::inputs(calib, samples)?;
    note(
        quiet,
        &format!("searching for the fewest float layers with {} on {}", plan.describe, calib.describe()),
    );
    let fused = plan.fused.as_ref();
    let found = match arg {
        TargetArg::Sqnr(_) => fallback::search_with(
            fused,
            &plan.mapping,
            &plan.mappings,
            &calibration,
            fallback::output_sqnr(fused, &measured)?,
            target(arg),
        ),
        TargetArg::Agreement(_) => fallback::search_with(
            fused,
            &plan.mapping,
            &plan.mappings,
            &calibration,
            fallback::output_agreement(fused, &measured)?,
            target(arg),
        ),
    }?;
    Ok((format!("{found}\n"), found.model))
}

/// Runs the command.
pub fn main(args: &QuantizeArgs, quiet: bool) -> Result<()> {
    let (float, mut inputs) = load_float(&args.model)?;
    let calib = args.calib.as_deref().map(|path| Calib::open(path, &args.data)).transpose()?;

    let mut text = String::new();
    let (reference, prepared, quantized) = if args.dynamic {
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
        (float, None, quantized)
    } else {
        let calib =
            calib.as_ref().ok_or_else(|| CliError::Usage("--calib is required without --dynamic".into()))?;
        let plan = plan(&args.model, float, &args.quant, calib, args.report_samples, quiet)?;
        text += &plan.choice_text;
        let (prepared, mut quantized) = match args.target {
            Some(arg) => {
                let (table, model) = search(&plan, arg, calib, args.report_samples, &mut inputs, quiet)?;
                text += &table;
                (None, model)
            }
            None => {
                let (prepared, quantized) = calibrate_convert(&plan, calib, &mut inputs, quiet)?;
                (Some(prepared), quantized)
            }
        };
        if args.then_dynamic {
            let swapped = quantize_dynamic(&mut quantized, DynamicQConfigSpec::Default, DynamicDType::QInt8)?;
            note(quiet, &format!("then quantize_dynamic (qint8): {swapped} modules swapped"));
        }
        (plan.fused, prepared, quantized)
    };

    // The comparison runs the quantized model, so a model that cannot run is not saved.
    match &calib {
        Some(calib) => {
            let compared = report::compare(
                reference.as_ref(),
                quantized.as_ref(),
                prepared.as_deref(),
                calib,
                args.report_samples,
                quiet,
            )?;
            compared.write(args.report_json.as_deref(), args.report_svg.as_deref())?;
            text += &compared.render();
        }
        None => {
            text += "quantized modules (no --calib, so no SQNR):\n";
            for path in report::quantized_paths(reference.as_ref(), quantized.as_ref()) {
                text += &format!("{path}  {}\n", quantized.get(&path)?.type_name());
            }
        }
    }
    let bytes = model::save(quantized.as_ref(), &args.output, &inputs)?;
    note(quiet, &format!("saved {} ({bytes} bytes)", args.output.display()));
    print!("{text}");
    Ok(())
}

/// An error naming the file when no module of `model` is one static quantization converts (a
/// model that is already quantized, or holds no float layer with a quantized form).
fn check_convertible(model: &dyn Module, mappings: &Mappings, path: &Path) -> Result<()> {
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
