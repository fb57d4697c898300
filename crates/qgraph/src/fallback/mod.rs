//! Accuracy-driven float fallback: which layers to leave in float so that a quantized model
//! meets an accuracy target, with as few float layers as the search can find, and the
//! trade-off curve (metric and latency by number of float layers).
//!
//! [`search`] quantizes everything once (prepare, calibrate, convert), ranks the layers by the
//! numeric suite's own SQNR ([`crate::ns::report`], most damaging first), then adds layers to
//! the float set greedily until the target is met, and finally drops chosen layers again
//! (pruning) and trades two of them for one other (swapping) while the target stays met. A
//! float layer is placed as PyTorch's eager mode asks for it: the layer gets
//! qconfig `None` and is surrounded by a `DeQuantStub` and a `QuantStub` ([`isolate`]). Since
//! calibration runs the whole model in float, the observers' statistics do not depend on which
//! layers end up float: the search calibrates once and builds every candidate model from the
//! one converted model, giving each float layer a `Quantize` with the parameters its own
//! observer chose (what the `QuantStub` would observe).
//!
//! ```no_run
//! use qgraph::fallback::{self, Target};
//! # fn demo(float: &dyn qgraph::Module, mapping: &qgraph::QConfigMapping,
//! #         calibration: &[qgraph::Value], test: &[qgraph::Value]) -> qgraph::GraphResult<()> {
//! // The output's SQNR against the float model's, on `test`, at least 30 dB.
//! let metric = fallback::output_sqnr(float, test)?;
//! let found = fallback::search(float, mapping, calibration, metric, Target::OutputSqnr(30.0))?;
//! println!("{found}");
//! # Ok(()) }
//! ```

mod island;
mod table;

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use ndarray::{ArrayD, Axis, Slice};
use serde::{Deserialize, Serialize};

pub use island::isolate;
use island::{Candidate, candidates, with_islands};
pub use table::{Row, Step};

use crate::mappings::Mappings;
use crate::{
    GraphError, GraphResult, Module, QConfigMapping, Value, calibrate, convert_with, ns, prepare_with,
};

/// Batch-1 forward passes timed per configuration (the median is reported).
const LATENCY_RUNS: usize = 5;

/// Calibration batches the numeric-suite report ranks the layers on.
const RANK_BATCHES: usize = 4;

/// What the quantized model must reach.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Target {
    /// The metric within `points` of the float model's (below it if higher is better, above it
    /// otherwise), e.g. top-1 accuracy in percent within 0.5 points.
    MetricWithin {
        /// How far from the float model's metric the quantized model may be.
        points: f64,
        /// Whether a higher metric is better (accuracy) or worse (loss).
        higher_is_better: bool,
    },
    /// The metric, an output SQNR in dB (as [`output_sqnr`] measures it), at least this.
    OutputSqnr(f64),
}

impl Target {
    /// Whether `metric` meets the target, given the float model's metric.
    pub fn is_met(&self, float_metric: f64, metric: f64) -> bool {
        // Metrics such as accuracies are sums of fractions: allow for their rounding.
        const SLACK: f64 = 1e-9;
        match *self {
            Target::MetricWithin { points, higher_is_better: true } => {
                metric >= float_metric - points - SLACK
            }
            Target::MetricWithin { points, higher_is_better: false } => {
                metric <= float_metric + points + SLACK
            }
            Target::OutputSqnr(db) => metric >= db - SLACK,
        }
    }

    /// The target in words, with the threshold it gives for the float model's metric.
    pub fn describe(&self, float_metric: f64) -> String {
        match *self {
            Target::MetricWithin { points, higher_is_better: true } => {
                format!("metric >= {:.4} (float {float_metric:.4} - {points})", float_metric - points)
            }
            Target::MetricWithin { points, higher_is_better: false } => {
                format!("metric <= {:.4} (float {float_metric:.4} + {points})", float_metric + points)
            }
            Target::OutputSqnr(db) => format!("output SQNR >= {db} dB"),
        }
    }
}

/// A candidate layer and how much error it adds on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    /// The layer's path.
    pub layer: String,
    /// Its own SQNR in dB ([`ns::Layer::rank_sqnr`]); `None` if the report could not compare
    /// it (ranked last) or if it is infinite.
    pub own_sqnr: Option<f64>,
}

/// What [`search`] found: the layers to leave float, the model with them float, and every
/// configuration it evaluated. Prints as a table; serializes (without the model) with serde.
#[derive(Debug, Serialize)]
pub struct Fallback {
    /// The target searched for.
    pub target: Target,
    /// The float model's metric.
    pub float_metric: f64,
    /// The float model's median batch-1 latency, in milliseconds.
    pub float_latency_ms: f64,
    /// The candidate layers, most damaging first.
    pub ranking: Vec<Ranked>,
    /// The chosen float layers, most damaging first.
    pub layers: Vec<String>,
    /// The metric of the model with the chosen layers float.
    pub metric: f64,
    /// Every configuration evaluated, in order: all quantized, the greedy pass (nested float
    /// sets growing by one layer), then the pruning and swapping passes.
    pub rows: Vec<Row>,
    /// The converted model with [`Fallback::layers`] float, each as `<path>.0` (DeQuantize),
    /// `<path>.1` (the float layer), `<path>.2` (Quantize).
    #[serde(skip)]
    pub model: Box<dyn Module>,
}

impl Fallback {
    /// The trade-off curve: the all-quantized row and the greedy pass's rows, k = 0, 1, 2, ...
    /// float layers. Their float sets are nested (each is the previous one plus the next most
    /// damaging layer), so the curve shows what each further float layer buys and costs; it
    /// ends at the first row that meets the target (or with every candidate float).
    pub fn curve(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| matches!(r.step, Step::Quantized | Step::Greedy | Step::AllFloat))
            .collect()
    }

    /// This result (without the model) as pretty JSON; non-finite metrics are `null`.
    pub fn to_json(&self) -> GraphResult<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| GraphError::Workflow { step: "fallback", reason: format!("to JSON: {e}") })
    }
}

impl fmt::Display for Fallback {
    /// The target, the float model's metric and latency, one row per evaluated configuration,
    /// and the choice.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target: {}", self.target.describe(self.float_metric))?;
        writeln!(f, "float model: metric {:.2}, latency {:.3} ms", self.float_metric, self.float_latency_ms)?;
        table::write_rows(f, &self.rows)?;
        write!(
            f,
            "chosen: {} float layer(s) of {} [{}], metric {:.2}",
            self.layers.len(),
            self.ranking.len(),
            self.layers.join(", "),
            self.metric
        )
    }
}

/// A metric for [`Target::OutputSqnr`]: the SQNR (dB) of a model's outputs on `inputs` against
/// `float_model`'s, all outputs together (`10 log10(Σ‖x‖² / Σ‖x − y‖²)`). The float outputs are
/// computed once, here. An error for no inputs.
pub fn output_sqnr(
    float_model: &dyn Module,
    inputs: &[Value],
) -> GraphResult<impl FnMut(&dyn Module) -> GraphResult<f64> + use<>> {
    if inputs.is_empty() {
        return Err(crate::invalid("fallback::output_sqnr", "inputs", 0, "give at least one input batch"));
    }
    let inputs = inputs.to_vec();
    let reference: Vec<ArrayD<f32>> = inputs
        .iter()
        .map(|x| float_model.forward(x.clone())?.into_float_lossy())
        .collect::<GraphResult<_>>()?;
    Ok(move |model: &dyn Module| {
        let mut sum = ns::SqnrSum::default();
        for (input, float) in inputs.iter().zip(&reference) {
            sum.add(float, &model.forward(input.clone())?.into_float_lossy()?)?;
        }
        Ok(sum.db())
    })
}

/// A metric for [`Target::MetricWithin`]: the top-1 agreement (percent) of a model's outputs on
/// `inputs` with `float_model`'s (rows of the last axis, as [`ns::report`] counts them; the
/// float model's own is 100). The float outputs are computed once, here. An error for no inputs.
pub fn output_agreement(
    float_model: &dyn Module,
    inputs: &[Value],
) -> GraphResult<impl FnMut(&dyn Module) -> GraphResult<f64> + use<>> {
    if inputs.is_empty() {
        return Err(crate::invalid(
            "fallback::output_agreement",
            "inputs",
            0,
            "give at least one input batch",
        ));
    }
    let inputs = inputs.to_vec();
    let reference: Vec<Value> =
        inputs.iter().map(|x| float_model.forward(x.clone())).collect::<GraphResult<_>>()?;
    Ok(move |model: &dyn Module| {
        let mut sum = ns::OutputSum::default();
        for (input, float) in inputs.iter().zip(&reference) {
            sum.add("fallback::output_agreement", float, &model.forward(input.clone())?)?;
        }
        Ok(100.0 * sum.finish().top1.map_or(1.0, |t| t.fraction()))
    })
}

/// The first sample of `batch` (a float batch's first row along axis 0; other values as they are).
fn first_sample(batch: &Value) -> Value {
    match batch {
        Value::Float(x) if x.ndim() > 0 && x.shape()[0] > 1 => {
            Value::Float(x.slice_axis(Axis(0), Slice::from(0..1)).to_owned())
        }
        other => other.clone(),
    }
}

/// Median wall time of [`LATENCY_RUNS`] forward passes of `model` on `input`, after one warm-up,
/// in milliseconds.
fn latency_ms(model: &dyn Module, input: &Value) -> GraphResult<f64> {
    model.forward(input.clone())?;
    let mut times = Vec::with_capacity(LATENCY_RUNS);
    for _ in 0..LATENCY_RUNS {
        let start = Instant::now();
        model.forward(input.clone())?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[LATENCY_RUNS / 2])
}

impl<E: FnMut(&dyn Module) -> GraphResult<f64>> Searcher<E> {
    /// Drops layers of `chosen` (last added first) while the target is met without them, until
    /// none can be dropped (dropping one may make another droppable).
    fn prune(&mut self, mut chosen: Vec<usize>, mut metric: f64) -> GraphResult<(Vec<usize>, f64)> {
        loop {
            let mut dropped = false;
            for layer in chosen.clone().into_iter().rev() {
                let trial: Vec<usize> = chosen.iter().copied().filter(|&i| i != layer).collect();
                let removed = format!("-{}", self.candidates[layer].path);
                let (meets, m) = self.try_set(Step::Prune, &trial, Some(removed))?;
                if meets {
                    (chosen, metric, dropped) = (trial, m, true);
                }
            }
            if !dropped {
                return Ok((chosen, metric));
            }
        }
    }

    /// The first set (pairs of `chosen` in order, replacements in ranking order) that trades two
    /// chosen layers for one other and still meets the target, with its metric.
    fn swap(&mut self, chosen: &[usize]) -> GraphResult<Option<(Vec<usize>, f64)>> {
        for (i, &a) in chosen.iter().enumerate() {
            for &b in &chosen[i + 1..] {
                for u in (0..self.candidates.len()).filter(|u| !chosen.contains(u)) {
                    let mut trial: Vec<usize> =
                        chosen.iter().copied().filter(|&c| c != a && c != b).collect();
                    trial.push(u);
                    let [a_path, b_path, u_path] = [a, b, u].map(|c| self.candidates[c].path.as_str());
                    let change = format!("-{a_path} -{b_path} +{u_path}");
                    let (meets, m) = self.try_set(Step::Swap, &trial, Some(change))?;
                    if meets {
                        return Ok(Some((trial, m)));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// The error for a target that none of the evaluated `rows` met (the greedy pass ended with every
/// candidate float): the best metric reached, where, and what to do.
fn unreachable(rows: &[Row], target: &Target, float_metric: f64) -> GraphError {
    const SHOWN: usize = 6;
    let names = |layers: &[String]| {
        let mut text = layers.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if layers.len() > SHOWN {
            text.push_str(&format!(", ... ({} more)", layers.len() - SHOWN));
        }
        format!("[{text}]")
    };
    let best = rows.iter().max_by(|a, b| match target {
        Target::MetricWithin { higher_is_better: false, .. } => b.metric.total_cmp(&a.metric),
        _ => a.metric.total_cmp(&b.metric),
    });
    let all = rows.last().map_or(f64::NAN, |r| r.metric);
    let best = best.map_or("none".to_string(), |r| {
        format!("{:.4} with {} float layer(s) {}", r.metric, r.float_layers.len(), names(&r.float_layers))
    });
    GraphError::Workflow {
        step: "fallback::search",
        reason: format!(
            "the target ({}) is unreachable: no float set tried meets it, not even every candidate layer float \
             ({} layers: metric {all:.4}); the best was {best}. What stays quantized (the QuantStub inputs, \
             FloatFunctional ops, each float layer's requantized output) limits it: relax the target, or \
             improve the calibration data or the qconfig",
            target.describe(float_metric),
            rows.last().map_or(0, |r| r.float_layers.len()),
        ),
    }
}

/// The search's state: the converted model, the candidates and how to evaluate a float set.
struct Searcher<E> {
    quantized: Box<dyn Module>,
    candidates: Vec<Candidate>,
    evaluate: E,
    target: Target,
    float_metric: f64,
    sample: Value,
    rows: Vec<Row>,
    /// Every float set evaluated (sorted indices): whether it met the target, its metric.
    seen: HashMap<Vec<usize>, (bool, f64)>,
}

impl<E: FnMut(&dyn Module) -> GraphResult<f64>> Searcher<E> {
    /// The model with the candidates at `float` (indices) float.
    fn model(&self, float: &[usize]) -> GraphResult<Box<dyn Module>> {
        let chosen: Vec<&Candidate> = float.iter().map(|&i| &self.candidates[i]).collect();
        with_islands(self.quantized.as_ref(), &chosen)
    }

    /// Evaluates the float set `float`, records the row and returns whether it meets the target
    /// and the metric; a set evaluated before (in any order) is not evaluated or recorded again.
    fn try_set(&mut self, step: Step, float: &[usize], changed: Option<String>) -> GraphResult<(bool, f64)> {
        let mut key = float.to_vec();
        key.sort_unstable();
        if let Some(&known) = self.seen.get(&key) {
            return Ok(known);
        }
        let model = self.model(float)?;
        let metric = (self.evaluate)(model.as_ref())?;
        let meets = self.target.is_met(self.float_metric, metric);
        let latency_ms = latency_ms(model.as_ref(), &self.sample)?;
        self.rows.push(Row {
            step,
            float_layers: float.iter().map(|&i| self.candidates[i].path.clone()).collect(),
            changed,
            metric,
            meets,
            latency_ms,
        });
        self.seen.insert(key, (meets, metric));
        Ok((meets, metric))
    }
}

/// `search(float_model, mapping, calibration, evaluate, target)`: the fewest layers of
/// `float_model` the search finds that must stay float for `evaluate` to meet `target`.
///
/// `float_model` is the float model after fusion (as for [`ns::report`]); `mapping` the qconfigs
/// it would be quantized with; `calibration` the calibration batches (the first
/// few also rank the layers, and the first sample of the first batch times the models);
/// `evaluate` gives a model's metric (e.g. test accuracy in percent, or [`output_sqnr`]).
///
/// The steps: evaluate the float model; prepare, calibrate and convert once; rank the layers
/// that can be left float (observed layers other than `QuantStub` and `FloatFunctional`) by own
/// SQNR; evaluate the all-quantized model (done if it meets the target); add layers most
/// damaging first until the target is met (an error if it is not met even with every candidate
/// float); then drop chosen layers again (last added first) while the target is still met
/// without them, and trade two chosen layers for one other where that still meets it
/// (`k(k-1)/2 · (n-k)` evaluations for k chosen of n candidates), until neither helps. The
/// result is minimal in that dropping any single chosen layer misses the target (the rows show
/// each such set), not necessarily the smallest set overall. A float set is evaluated once
/// (sets seen before are skipped).
///
/// Errors: an empty calibration set, a target no configuration meets, and the workflow's and
/// `evaluate`'s own errors.
pub fn search<E>(
    float_model: &dyn Module,
    mapping: &QConfigMapping,
    calibration: &[Value],
    evaluate: E,
    target: Target,
) -> GraphResult<Fallback>
where
    E: FnMut(&dyn Module) -> GraphResult<f64>,
{
    search_with(float_model, mapping, &Mappings::default(), calibration, evaluate, target)
}

/// [`search`] preparing and converting with the mapping table `mappings` (a crate's own modules,
/// e.g. an importer's, as `prepare_with` / `convert_with` take them).
pub fn search_with<E>(
    float_model: &dyn Module,
    mapping: &QConfigMapping,
    mappings: &Mappings,
    calibration: &[Value],
    mut evaluate: E,
    target: Target,
) -> GraphResult<Fallback>
where
    E: FnMut(&dyn Module) -> GraphResult<f64>,
{
    if calibration.is_empty() {
        return Err(crate::invalid(
            "fallback::search",
            "calibration",
            0,
            "give at least one calibration batch (the observers need data to choose the quantized ranges)",
        ));
    }
    let sample = first_sample(&calibration[0]);
    let float_metric = evaluate(float_model)?;
    let float_latency_ms = latency_ms(float_model, &sample)?;

    let mut prepared = float_model.clone_module();
    prepare_with(&mut prepared, mapping, mappings)?;
    calibrate(prepared.as_ref(), calibration.iter().cloned(), |_, _| {})?;
    let mut quantized = prepared.clone();
    convert_with(&mut quantized, mappings)?;

    let report = ns::report(
        float_model,
        quantized.as_ref(),
        &calibration[..calibration.len().min(RANK_BATCHES)],
        Some(prepared.as_ref()),
    )?;
    let mut candidates = candidates(prepared.as_ref())?;
    let own = |c: &Candidate| report.layer(&c.path).and_then(ns::Layer::rank_sqnr).filter(|v| !v.is_nan());
    // Most damaging first; layers the report could not compare last; ties in model order.
    candidates.sort_by(|a, b| own(a).unwrap_or(f64::INFINITY).total_cmp(&own(b).unwrap_or(f64::INFINITY)));
    let ranking: Vec<Ranked> = candidates
        .iter()
        .map(|c| Ranked { layer: c.path.clone(), own_sqnr: own(c).filter(|v| v.is_finite()) })
        .collect();

    let mut s = Searcher {
        quantized,
        candidates,
        evaluate,
        target,
        float_metric,
        sample,
        rows: Vec::new(),
        seen: HashMap::new(),
    };
    let n = s.candidates.len();
    let (meets, metric) = s.try_set(Step::Quantized, &[], None)?;
    let (chosen, metric) = if meets {
        (Vec::new(), metric)
    } else {
        let (mut chosen, mut metric) = (None, metric);
        for k in 1..=n {
            let step = if k == n { Step::AllFloat } else { Step::Greedy };
            let added = format!("+{}", s.candidates[k - 1].path);
            let (meets, m) = s.try_set(step, &(0..k).collect::<Vec<_>>(), Some(added))?;
            if meets {
                (chosen, metric) = (Some((0..k).collect::<Vec<usize>>()), m);
                break;
            }
        }
        let Some(mut chosen) = chosen else { return Err(unreachable(&s.rows, &target, float_metric)) };
        // Until no layer can be dropped and no two can be traded for one.
        loop {
            (chosen, metric) = s.prune(chosen, metric)?;
            match s.swap(&chosen)? {
                Some((trial, m)) => (chosen, metric) = (trial, m),
                None => break,
            }
        }
        (chosen, metric)
    };
    let mut chosen = chosen;
    chosen.sort_unstable(); // candidate indices are in ranking order
    let model = s.model(&chosen)?;
    Ok(Fallback {
        target,
        float_metric,
        float_latency_ms,
        ranking,
        layers: chosen.iter().map(|&i| s.candidates[i].path.clone()).collect(),
        metric,
        rows: s.rows,
        model,
    })
}
