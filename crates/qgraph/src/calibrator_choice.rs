//! Per-layer calibrator choice by measured SQNR: for each activation observer point of a model,
//! calibrate with each candidate calibrator (PyTorch's MinMax, MovingAverageMinMax and Histogram
//! observers, and qobserve's percentile, entropy and MSE calibrators), measure how well each
//! one's range quantizes the float activation there, and keep the best per point.
//!
//! The measure is teacher-forced and isolates the range choice: the float model's output at the
//! point (what its observer saw during calibration) is quantized with the parameters the
//! candidate chose, at the output dtype's full range (as a quantized layer's output is rounded
//! and clamped), and compared with the float output: `20 log10(‖x‖ / ‖x − fq(x)‖)`. A point's
//! choice then does not depend on the others', and one calibration per candidate is enough.
//!
//! The best range at every point is not always the best model: clipping changes what the
//! following layers see, and the errors of different points add up differently. So the
//! per-point mix is also checked as a whole: the model output's SQNR against float on the same
//! inputs, for the mix and for each candidate used at every point, and the mapping returned is
//! the best of these ([`Kept`]).
//!
//! ```no_run
//! use qgraph::calibrator_choice::{Calibrator, choose_calibrators};
//! # fn demo(fused: &dyn qgraph::Module, mapping: &qgraph::QConfigMapping,
//! #         calibration: &[qgraph::Value]) -> qgraph::GraphResult<()> {
//! let mappings = qgraph::mappings::Mappings::default();
//! let choice = choose_calibrators(fused, mapping, &mappings, &Calibrator::ALL, calibration, calibration)?;
//! println!("{choice}");
//! // `choice.mapping` gives each point its chosen activation observer: prepare with it.
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;

use qcore::fake_quant::fake_quantize_per_tensor;
use qobserve::{ObserverSpec, UniformArgs};
use serde::{Deserialize, Serialize};

use crate::mappings::Mappings;
use crate::ns::{OutputSum, SqnrSum};
use crate::qconfig::QConfig;
use crate::workflow::Observed;
use crate::{
    GraphError, GraphResult, Module, PerTensor, QConfigMapping, Value, calibrate, convert_with, debug,
    prepare_with,
};

/// A candidate activation calibrator. Each keeps the argument of the qconfig's own activation
/// observer (dtype, quant range, `reduce_range`, eps) where it replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Calibrator {
    /// PyTorch's `MinMaxObserver`.
    MinMax,
    /// PyTorch's `MovingAverageMinMaxObserver` (averaging constant 0.01).
    MovingAverageMinMax,
    /// PyTorch's `HistogramObserver` (2048 bins, upsample rate 16).
    Histogram,
    /// The percentile calibrator keeping this percentage of the values (2048 bins).
    Percentile(f64),
    /// The entropy (KL divergence) calibrator (2048 bins).
    Entropy,
    /// The MSE calibrator (2048 bins).
    Mse,
}

impl Calibrator {
    /// Every calibrator, the percentile one at 99.99 %.
    pub const ALL: [Calibrator; 6] = [
        Calibrator::MinMax,
        Calibrator::MovingAverageMinMax,
        Calibrator::Histogram,
        Calibrator::Percentile(99.99),
        Calibrator::Entropy,
        Calibrator::Mse,
    ];

    /// The observer description with range arguments `args`.
    pub fn spec(self, args: UniformArgs) -> ObserverSpec {
        let bins = qobserve::DEFAULT_BINS;
        match self {
            Calibrator::MinMax => ObserverSpec::MinMax { args },
            Calibrator::MovingAverageMinMax => ObserverSpec::MovingAverageMinMax {
                averaging_constant: qobserve::DEFAULT_AVERAGING_CONSTANT,
                args,
            },
            Calibrator::Histogram => {
                ObserverSpec::Histogram { bins, upsample_rate: qobserve::DEFAULT_UPSAMPLE_RATE, args }
            }
            Calibrator::Percentile(percentile) => ObserverSpec::Percentile { percentile, bins, args },
            Calibrator::Entropy => ObserverSpec::Entropy { bins, args },
            Calibrator::Mse => ObserverSpec::Mse { bins, args },
        }
    }

    /// A short name for tables: `MinMax`, `Percentile(99.99)`, ...
    pub fn name(self) -> String {
        match self {
            Calibrator::Percentile(p) => format!("Percentile({p})"),
            other => format!("{other:?}"),
        }
    }

    /// The per-tensor range arguments of `spec` if a calibrator can take its place (a range
    /// observer or calibrator; not fixed parameters, placeholders or per-channel observers).
    pub fn replaceable(spec: &ObserverSpec) -> Option<UniformArgs> {
        match spec {
            ObserverSpec::MinMax { args }
            | ObserverSpec::MovingAverageMinMax { args, .. }
            | ObserverSpec::Histogram { args, .. }
            | ObserverSpec::Percentile { args, .. }
            | ObserverSpec::Entropy { args, .. }
            | ObserverSpec::Mse { args, .. }
                if !args.qscheme.is_per_channel() && !args.is_dynamic =>
            {
                Some(*args)
            }
            _ => None,
        }
    }
}

/// One observer point: the SQNR each candidate gave and the one chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The observed module's path.
    pub path: String,
    /// The SQNR (dB) of the float output quantized with each candidate's parameters, in the
    /// order of [`CalibratorChoice::candidates`]; `None` where the point never ran on the inputs.
    pub sqnr: Vec<Option<f64>>,
    /// The index of the chosen candidate (the highest SQNR, the first of equals).
    pub chosen: usize,
}

/// What [`choose_calibrators`] found. Prints as a table (one row per point, one column per
/// candidate, the chosen one marked `*`).
#[derive(Debug, Clone)]
pub struct CalibratorChoice {
    /// The candidates compared.
    pub candidates: Vec<Calibrator>,
    /// The observer points, in module order.
    pub points: Vec<Point>,
    /// The model output's SQNR (dB) against float on the inputs with each candidate at every
    /// point, in candidate order.
    pub uniform_sqnr: Vec<f64>,
    /// The model output's SQNR (dB) with each point's best candidate ([`Point::chosen`]).
    pub per_point_sqnr: f64,
    /// What [`CalibratorChoice::mapping`] holds: the one with the best model output SQNR.
    pub kept: Kept,
    /// The given mapping with each point's qconfig carrying the activation observer of
    /// [`CalibratorChoice::kept`].
    pub mapping: QConfigMapping,
}

/// Which assignment of calibrators [`choose_calibrators`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kept {
    /// Each point's best candidate.
    PerPoint,
    /// One candidate (its index) at every point: its model output beat the per-point mix.
    Uniform(usize),
}

impl CalibratorChoice {
    /// The candidate [`CalibratorChoice::mapping`] gives the point at `index`.
    pub fn kept_at(&self, index: usize) -> Calibrator {
        match self.kept {
            Kept::PerPoint => self.candidates[self.points[index].chosen],
            Kept::Uniform(c) => self.candidates[c],
        }
    }

    /// How many points chose each candidate, in candidate order.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.candidates.len()];
        for point in &self.points {
            counts[point.chosen] += 1;
        }
        counts
    }
}

impl fmt::Display for CalibratorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut header = vec!["point".to_string()];
        header.extend(self.candidates.iter().map(|c| c.name()));
        let rows: Vec<Vec<String>> = self
            .points
            .iter()
            .map(|p| {
                let mut row = vec![p.path.clone()];
                row.extend(p.sqnr.iter().enumerate().map(|(i, s)| {
                    let text = crate::ns::db_text(*s);
                    if i == p.chosen { format!("*{text}") } else { text }
                }));
                row
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, row: &[String]| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, &w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
                .collect();
            writeln!(f, "{}", cells.join("  ").trim_end())
        };
        writeln!(f, "activation SQNR (dB) at each observer point by calibrator (* chosen)")?;
        line(f, &header)?;
        for row in &rows {
            line(f, row)?;
        }
        let chosen: Vec<String> = self
            .candidates
            .iter()
            .zip(self.counts())
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| format!("{} {n}", c.name()))
            .collect();
        writeln!(f, "chosen: {} of {} points", chosen.join(", "), self.points.len())?;
        let uniform: Vec<String> = self
            .candidates
            .iter()
            .zip(&self.uniform_sqnr)
            .map(|(c, db)| format!("{} {}", c.name(), crate::ns::db_text(Some(*db))))
            .collect();
        writeln!(
            f,
            "model output SQNR dB: per point {}; one calibrator everywhere: {}",
            crate::ns::db_text(Some(self.per_point_sqnr)),
            uniform.join(", ")
        )?;
        match self.kept {
            Kept::PerPoint => write!(f, "kept: the per-point choice"),
            Kept::Uniform(c) => {
                write!(f, "kept: {} everywhere (a better model output)", self.candidates[c].name())
            }
        }
    }
}

/// An observer point of the prepared model: its path, qconfig and range arguments.
struct Site {
    path: String,
    qconfig: QConfig,
    args: UniformArgs,
}

/// `mapping` with the qconfig of every site carrying `pick(site)`'s activation observer.
fn with_activations(
    mapping: &QConfigMapping,
    sites: &[Site],
    pick: impl Fn(usize) -> Calibrator,
) -> QConfigMapping {
    sites.iter().enumerate().fold(mapping.clone(), |m, (i, site)| {
        let qconfig = QConfig { activation: pick(i).spec(site.args), weight: site.qconfig.weight.clone() };
        m.set_name(&site.path, Some(qconfig))
    })
}

/// `x` quantized with `q` at `dtype`'s full range and dequantized, compared with `x`.
fn add_fake_quant(
    sum: &mut SqnrSum,
    x: &ndarray::ArrayD<f32>,
    q: PerTensor,
    dtype: qcore::QDType,
) -> GraphResult<()> {
    let scale = q.scale as f32;
    let y = x.mapv(|v| fake_quantize_per_tensor(v, scale, q.zero_point, dtype.min(), dtype.max()).value);
    sum.add(x, &y)
}

/// `choose_calibrators(float_model, mapping, mappings, candidates, calibration, inputs)`: for each
/// activation observer point that `prepare_with(float_model, mapping, mappings)` places with a
/// range observer (QuantStubs, layers, FloatFunctional ops; not fixed-parameter outputs), the
/// candidate calibrator whose parameters, calibrated on `calibration`, quantize the float
/// model's output there on `inputs` with the highest SQNR (see the module docs).
///
/// `float_model` is the float model after fusion. The returned mapping gives each point its
/// qconfig with the kept activation observer (other arguments kept): each point's best, unless
/// one candidate at every point gives a better model output SQNR on `inputs` ([`Kept`]); prepare,
/// calibrate and convert with it. Errors: no candidates, no calibration or no inputs, and the
/// workflow's.
pub fn choose_calibrators(
    float_model: &dyn Module,
    mapping: &QConfigMapping,
    mappings: &Mappings,
    candidates: &[Calibrator],
    calibration: &[Value],
    inputs: &[Value],
) -> GraphResult<CalibratorChoice> {
    const STEP: &str = "choose_calibrators";
    if candidates.is_empty() {
        return Err(crate::invalid(STEP, "candidates", 0, "give at least one calibrator (Calibrator::ALL)"));
    }
    if calibration.is_empty() || inputs.is_empty() {
        return Err(crate::invalid(
            STEP,
            if calibration.is_empty() { "calibration" } else { "inputs" },
            0,
            "give at least one batch",
        ));
    }
    let mut base = float_model.clone_module();
    prepare_with(&mut base, mapping, mappings)?;
    let sites: Vec<Site> = base
        .named_modules()
        .into_iter()
        .filter_map(|(path, m)| {
            let qconfig = m.downcast_ref::<Observed>()?.qconfig().clone();
            let args = Calibrator::replaceable(&qconfig.activation)?;
            Some(Site { path, qconfig, args })
        })
        .collect();
    drop(base);

    // The model output against float on `inputs`, for a mapping.
    let reference: Vec<Value> =
        inputs.iter().map(|x| float_model.forward(x.clone())).collect::<GraphResult<_>>()?;
    let output_sqnr = |prepared: &dyn Module| -> GraphResult<f64> {
        let mut quantized = prepared.clone_module();
        convert_with(&mut quantized, mappings)?;
        let mut sum = OutputSum::default();
        for (x, float) in inputs.iter().zip(&reference) {
            sum.add(STEP, float, &quantized.forward(x.clone())?)?;
        }
        Ok(sum.finish().sqnr.unwrap_or(f64::NAN))
    };

    // The parameters each candidate chooses at each site (none where the site never ran), and
    // the model output with the candidate everywhere.
    let mut params: Vec<Vec<Option<PerTensor>>> = Vec::with_capacity(candidates.len());
    let mut uniform_sqnr = Vec::with_capacity(candidates.len());
    for &candidate in candidates {
        let mut prepared = float_model.clone_module();
        prepare_with(&mut prepared, &with_activations(mapping, &sites, |_| candidate), mappings)?;
        calibrate(prepared.as_ref(), calibration.iter().cloned(), |_, _| {})?;
        uniform_sqnr.push(output_sqnr(prepared.as_ref())?);
        let chosen = sites
            .iter()
            .map(|site| {
                let observed = prepared.get(&site.path)?.downcast_ref::<Observed>().ok_or_else(|| {
                    GraphError::Workflow {
                        step: STEP,
                        reason: format!("`{}` is not observed with {}", site.path, candidate.name()),
                    }
                })?;
                if observed.observer().is_some_and(|o| o.calls() == 0) {
                    return Ok(None);
                }
                observed.post_process().activation_qparams().map(Some).map_err(|e| e.within_path(&site.path))
            })
            .collect::<GraphResult<Vec<_>>>()?;
        params.push(chosen);
    }

    // A site that never ran (an unused branch) keeps its qconfig and has no row.
    let used: Vec<bool> = (0..sites.len()).map(|i| params.iter().all(|p| p[i].is_some())).collect();
    let (sites, params): (Vec<Site>, Vec<Vec<PerTensor>>) = {
        let kept = |row: &Vec<Option<PerTensor>>| -> Vec<PerTensor> {
            row.iter().zip(&used).filter(|(_, u)| **u).filter_map(|(p, _)| *p).collect()
        };
        let params = params.iter().map(kept).collect();
        (sites.into_iter().zip(&used).filter(|(_, u)| **u).map(|(s, _)| s).collect(), params)
    };

    // The float outputs at the sites, one input at a time.
    let index: HashMap<&str, usize> = sites.iter().enumerate().map(|(i, s)| (s.path.as_str(), i)).collect();
    let mut sums: Vec<Vec<Option<SqnrSum>>> = vec![vec![None; candidates.len()]; sites.len()];
    let mut float = float_model.clone_module();
    let log = debug::log_outputs(&mut float, |path, _| index.contains_key(path))?;
    let run = inputs.iter().try_for_each(|x| -> GraphResult<()> {
        float.forward(x.clone())?;
        for (path, value) in log.take() {
            let Some(&i) = index.get(path.as_str()) else { continue };
            let Ok(x) = value.to_float() else { continue };
            for (c, sum) in sums[i].iter_mut().enumerate() {
                add_fake_quant(sum.get_or_insert_default(), &x, params[c][i], sites[i].args.dtype)
                    .map_err(|e| e.within_path(&sites[i].path))?;
            }
        }
        Ok(())
    });
    debug::remove_loggers(&mut float)?;
    run?;

    let points: Vec<Point> = sites
        .iter()
        .zip(&sums)
        .map(|(site, sums)| {
            let sqnr: Vec<Option<f64>> = sums.iter().map(|s| s.map(|s| s.db())).collect();
            let chosen = sqnr.iter().enumerate().fold(0, |best, (i, s)| {
                if s.unwrap_or(f64::NAN) > sqnr[best].unwrap_or(f64::NEG_INFINITY) { i } else { best }
            });
            Point { path: site.path.clone(), sqnr, chosen }
        })
        .collect();
    let per_point = with_activations(mapping, &sites, |i| candidates[points[i].chosen]);
    let mut prepared = float_model.clone_module();
    prepare_with(&mut prepared, &per_point, mappings)?;
    calibrate(prepared.as_ref(), calibration.iter().cloned(), |_, _| {})?;
    let per_point_sqnr = output_sqnr(prepared.as_ref())?;
    // The best uniform candidate, if it beats the mix (the first of equals).
    let best = uniform_sqnr.iter().enumerate().filter(|(_, db)| !db.is_nan()).fold(
        None::<(usize, f64)>,
        |best, (i, &db)| match best {
            Some((_, b)) if b >= db => best,
            _ => Some((i, db)),
        },
    );
    let (kept, mapping) = match best {
        Some((c, db)) if db > per_point_sqnr || per_point_sqnr.is_nan() => {
            (Kept::Uniform(c), with_activations(mapping, &sites, |_| candidates[c]))
        }
        _ => (Kept::PerPoint, per_point),
    };
    Ok(CalibratorChoice {
        candidates: candidates.to_vec(),
        points,
        uniform_sqnr,
        per_point_sqnr,
        kept,
        mapping,
    })
}
