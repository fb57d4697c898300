//! [`report()`]: the per-layer accuracy table of a quantized model against its float original.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use super::SqnrSum;
use super::suite::{
    compare_weights, float_logged_paths, group, match_logs, quantized_state_dict, run_logged,
};
use crate::mappings::ModuleKey;
use crate::workflow::Observed;
use crate::{GraphError, GraphResult, Module, QuantTensor, QuantTensorOf, Value};

/// How a layer's quantized output uses its integer range, over all inputs of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeUse {
    /// The output's dtype (`quint8`, `qint8`).
    pub dtype: String,
    /// The output's scale.
    pub scale: f64,
    /// The output's zero point.
    pub zero_point: i64,
    /// Percent of the elements clipped at the dtype's lowest code. Counted only when that code
    /// is not the zero point: at a zero point of `qmin` (after a ReLU) it stands for 0.0.
    pub saturated_low: f64,
    /// Percent of the elements at the dtype's highest code (clipped).
    pub saturated_high: f64,
    /// Percent of the dtype's codes outside the span `[lowest, highest]` of the codes seen
    /// (`reduce_range` observers leave half of them unused by design).
    pub unused_codes: f64,
}

/// One row of a [`Report`]: a module of the quantized model and its float counterpart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// The quantized module's path (`features.0`).
    pub name: String,
    /// The quantized module's class (`QuantizedConvReLU2d`).
    pub module: String,
    /// SQNR (dB) of the dequantized weight against the float weight, if the module has one.
    #[serde(with = "decibels")]
    pub weight_sqnr: Option<f64>,
    /// SQNR (dB) of the output against the float model's, both models running freely
    /// (accumulated error).
    #[serde(with = "decibels")]
    pub output_sqnr: Option<f64>,
    /// SQNR (dB) of the output when the module is fed the float model's input to it, quantized
    /// with the module's input parameters (teacher forcing: this layer's own error, plus the
    /// rounding of its input).
    #[serde(with = "decibels")]
    pub forced_sqnr: Option<f64>,
    /// SQNR (dB) of the input the module was given in the teacher-forced run (the float model's
    /// input to it, rounded by the previous layers' output parameters).
    #[serde(with = "decibels")]
    pub input_sqnr: Option<f64>,
    /// The layer's own error, estimated from the teacher-forced run by subtracting the input's
    /// relative noise from the output's (`-10 log10(N_out/S_out - N_in/S_in)`, additive noise
    /// model): what its weights and output range add. `+inf` when the output is no noisier than
    /// the input.
    #[serde(with = "decibels")]
    pub own_sqnr: Option<f64>,
    /// Range use of the quantized output (none for float outputs).
    pub range: Option<RangeUse>,
    /// The observer that chose the output range and the range it saw, if the prepared model
    /// was given.
    pub observer: Option<String>,
    /// The module's qconfig (activation / weight observers), if the prepared model was given.
    pub qconfig: Option<String>,
}

impl Layer {
    /// The SQNR that ranks layers: the layer's own ([`Layer::own_sqnr`]) if known, else
    /// teacher-forced, else free-running.
    pub fn rank_sqnr(&self) -> Option<f64> {
        self.own_sqnr.or(self.forced_sqnr).or(self.output_sqnr)
    }
}

/// The per-layer accuracy report of [`report()`]: a table (`Display`), JSON
/// ([`Report::to_json`], [`Report::from_json`]) and an SVG plot ([`Report::to_svg`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// How many inputs the models ran on.
    pub inputs: usize,
    /// The layers, in execution order.
    pub layers: Vec<Layer>,
    /// The name of the worst layer (see [`Report::worst_layer`]).
    pub worst: Option<String>,
}

impl Report {
    /// The layer with the lowest [`Layer::rank_sqnr`] (its own error, so that a layer fed a
    /// badly rounded input does not take the blame for it); the first of equals.
    pub fn worst_layer(&self) -> Option<&Layer> {
        self.worst.as_ref().and_then(|name| self.layers.iter().find(|l| &l.name == name))
    }

    /// The layer named `name`.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// The report as pretty JSON (infinite SQNRs as the string `"inf"`).
    pub fn to_json(&self) -> GraphResult<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| GraphError::Workflow { step: "ns::report", reason: format!("to JSON: {e}") })
    }

    /// A report from [`Report::to_json`]'s text.
    pub fn from_json(text: &str) -> GraphResult<Self> {
        serde_json::from_str(text).map_err(|e| GraphError::Mismatch {
            context: "ns::Report::from_json",
            reason: format!("not a report: {e}; give the text Report::to_json wrote"),
        })
    }

    /// The SQNR by layer as an SVG bar chart (teacher-forced bars, free-running points).
    pub fn to_svg(&self) -> String {
        super::svg::render(self)
    }
}

/// `Option<f64>` decibels in serde: `null`, a number, or `"inf"` / `"-inf"` / `"nan"` (JSON has
/// no infinities).
mod decibels {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Db {
        Number(f64),
        Text(String),
    }

    pub(super) fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(v) if v.is_finite() => s.serialize_some(&Db::Number(*v)),
            Some(v) => s.serialize_some(&Db::Text(v.to_string().to_lowercase())),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Db>::deserialize(d)? {
            None => Ok(None),
            Some(Db::Number(v)) => Ok(Some(v)),
            Some(Db::Text(t)) => t
                .parse::<f64>()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number of decibels"))),
        }
    }
}

/// Codes seen in a layer's quantized outputs.
#[derive(Debug, Clone)]
struct Codes {
    dtype: &'static str,
    qmin: i64,
    qmax: i64,
    scale: f64,
    zero_point: i64,
    count: usize,
    at_min: usize,
    at_max: usize,
    lowest: i64,
    highest: i64,
}

impl Codes {
    fn of(value: &Value) -> Option<(Self, Vec<i64>)> {
        let (dtype, qmin, qmax, q, codes): (_, _, _, _, Vec<i64>) = match value {
            Value::Quant(t) => {
                ("quint8", 0, 255, t.qparams(), t.data().iter().map(|&c| i64::from(c)).collect())
            }
            Value::QInt8(t) => {
                ("qint8", -128, 127, t.qparams(), t.data().iter().map(|&c| i64::from(c)).collect())
            }
            _ => return None,
        };
        let empty = Self {
            dtype,
            qmin,
            qmax,
            scale: q.scale,
            zero_point: q.zero_point,
            count: 0,
            at_min: 0,
            at_max: 0,
            lowest: qmax,
            highest: qmin,
        };
        Some((empty, codes))
    }

    fn add(&mut self, codes: &[i64]) {
        self.count += codes.len();
        for &c in codes {
            self.at_min += usize::from(c == self.qmin);
            self.at_max += usize::from(c == self.qmax);
            self.lowest = self.lowest.min(c);
            self.highest = self.highest.max(c);
        }
    }

    fn range_use(&self) -> RangeUse {
        let percent = |n: usize| if self.count == 0 { 0.0 } else { 100.0 * n as f64 / self.count as f64 };
        let span = if self.count == 0 { 0 } else { self.highest - self.lowest + 1 };
        let codes = self.qmax - self.qmin + 1;
        RangeUse {
            dtype: self.dtype.to_string(),
            scale: self.scale,
            zero_point: self.zero_point,
            saturated_low: if self.zero_point == self.qmin { 0.0 } else { percent(self.at_min) },
            saturated_high: percent(self.at_max),
            unused_codes: 100.0 * (codes - span) as f64 / codes as f64,
        }
    }
}

/// What the report accumulates for one layer over the inputs.
#[derive(Debug, Default)]
struct Accumulated {
    float_path: String,
    output: Option<SqnrSum>,
    forced: Option<SqnrSum>,
    input: Option<SqnrSum>,
    codes: Option<Codes>,
}

/// A value's float tensors: itself, or a tuple's elements; none for indices.
fn tensors(value: &Value) -> Vec<ArrayD<f32>> {
    match value {
        Value::Tuple(items) => items.iter().flat_map(tensors).collect(),
        Value::Int(_) => Vec::new(),
        v => v.to_float().into_iter().collect(),
    }
}

/// Adds the tensors of `(float, other)` to `sum` when both hold as many; an error naming
/// `layer` if their shapes differ.
fn accumulate(sum: &mut Option<SqnrSum>, layer: &str, float: &Value, other: &Value) -> GraphResult<()> {
    let (x, y) = (tensors(float), tensors(other));
    if x.is_empty() || x.len() != y.len() {
        return Ok(());
    }
    let sum = sum.get_or_insert_default();
    for (x, y) in x.iter().zip(&y) {
        sum.add(x, y).map_err(|e| GraphError::At { path: layer.to_string(), source: Box::new(e) })?;
    }
    Ok(())
}

/// The float output `float` as the quantized module's output `like` is typed: quantized with
/// its parameters and memory format, float as is; `None` for other values (not forced).
fn as_typed_like(float: &Value, like: &Value) -> GraphResult<Option<Value>> {
    let x = match float {
        Value::Tuple(_) | Value::Int(_) => return Ok(None),
        v => v.to_float()?,
    };
    Ok(Some(match like {
        Value::Quant(q) => {
            Value::Quant(QuantTensor::quantize(&x, q.qparams())?.with_memory_format(q.memory_format()))
        }
        Value::QInt8(q) => Value::QInt8(
            QuantTensorOf::<i8>::quantize(&x, q.qparams())?.with_memory_format(q.memory_format()),
        ),
        Value::Float(_) => Value::Float(x),
        _ => return Ok(None),
    }))
}

/// The observer and qconfig columns for the module at `path` of the prepared model.
fn observer_columns(prepared: Option<&dyn Module>, paths: [&str; 2]) -> (Option<String>, Option<String>) {
    let Some(observed) = prepared
        .and_then(|p| paths.iter().find_map(|path| p.get(path).ok()))
        .and_then(|m| m.downcast_ref::<Observed>())
    else {
        return (None, None);
    };
    let qconfig = observed.qconfig();
    let reduce =
        if qconfig.activation.args().is_some_and(|a| a.reduce_range) { "(reduce_range)" } else { "" };
    let qconfig_text = format!("{}{reduce} / {}", qconfig.activation.name(), qconfig.weight.name());
    let observer = observed.observer().map(|o| {
        let stats = o.stats();
        match stats.range {
            Some(qobserve::ObservedRange::PerTensor { min, max }) => {
                format!("{} [{min:.4}, {max:.4}]", stats.observer)
            }
            _ => stats.observer,
        }
    });
    (observer, Some(qconfig_text))
}

/// `report(float_model, quantized_model, inputs)`: runs both models on each input and gives
/// one [`Layer`] per quantized module that [`compare_model_outputs`](super::compare_model_outputs)
/// matches with a float module: weight SQNR ([`compare_weights`]), output SQNR free-running and
/// teacher-forced, range use of the output, and, if `prepared` (the calibrated model before
/// `convert`) is given, the observer and qconfig that chose the range.
///
/// `float_model` must be the float model after fusion (as `convert` saw it), so that layers
/// and folded weights line up. The models are not changed.
pub fn report(
    float_model: &dyn Module,
    quantized_model: &dyn Module,
    inputs: &[Value],
    prepared: Option<&dyn Module>,
) -> GraphResult<Report> {
    if inputs.is_empty() {
        return Err(crate::invalid("ns::report", "inputs", 0, "give at least one input batch"));
    }
    let (mut float, mut quantized) = (float_model.clone_module(), quantized_model.clone_module());
    let float_dict = float.state_dict();
    let weights: HashMap<String, f64> =
        compare_weights(&float_dict, &quantized_state_dict(quantized.as_ref())?)
            .into_iter()
            .map(|(key, pair)| Ok((key, super::compute_sqnr(&pair.float, &pair.quantized)?)))
            .collect::<GraphResult<_>>()?;

    let allow: BTreeSet<ModuleKey> = super::get_default_compare_output_module_list();
    let paths: HashSet<String> = float_logged_paths(float.as_ref(), &allow).into_iter().collect();
    let mut order: Vec<String> = Vec::new();
    let mut layers: HashMap<String, Accumulated> = HashMap::new();
    for input in inputs {
        let one = std::slice::from_ref(input);
        let float_logs = run_logged(&mut float, &paths, &allow, one, None, true)?;
        let free_log = run_logged(&mut quantized, &paths, &allow, one, None, false)?.outputs;
        let matched = match_logs(float_logs.outputs, free_log);

        let mut queues: HashMap<String, VecDeque<Value>> = HashMap::new();
        for (q_path, f_path, pair) in &matched {
            if !layers.contains_key(q_path) {
                order.push(q_path.clone());
            }
            let acc = layers.entry(q_path.clone()).or_default();
            acc.float_path.clone_from(f_path);
            let queue = queues.entry(q_path.clone()).or_default();
            for (f, q) in pair.float.iter().zip(&pair.quantized) {
                accumulate(&mut acc.output, q_path, f, q)?;
                if let Some((fresh, codes)) = Codes::of(q) {
                    acc.codes.get_or_insert(fresh).add(&codes);
                }
                let forced = as_typed_like(f, q)
                    .map_err(|e| GraphError::At { path: q_path.clone(), source: Box::new(e) })?;
                queue.push_back(forced.unwrap_or_else(|| q.clone()));
            }
        }

        let queues = Arc::new(Mutex::new(queues));
        let force: crate::debug::Forcing = Arc::new(move |path: &str| {
            queues.lock().unwrap_or_else(|p| p.into_inner()).get_mut(path).and_then(VecDeque::pop_front)
        });
        let forced = run_logged(&mut quantized, &paths, &allow, one, Some(force), true)?;
        let float_outputs: HashMap<&str, &Vec<Value>> =
            matched.iter().map(|(q, _, pair)| (q.as_str(), &pair.float)).collect();
        let float_inputs: HashMap<String, Vec<Value>> = group(float_logs.inputs).into_iter().collect();
        for (q_path, values) in group(forced.outputs) {
            let Some(acc) = layers.get_mut(&q_path) else { continue };
            for (f, v) in float_outputs.get(q_path.as_str()).into_iter().flat_map(|f| f.iter()).zip(&values) {
                accumulate(&mut acc.forced, &q_path, f, v)?;
            }
        }
        for (q_path, values) in group(forced.inputs) {
            let Some(acc) = layers.get_mut(&q_path) else { continue };
            for (f, v) in float_inputs.get(&acc.float_path).into_iter().flatten().zip(&values) {
                accumulate(&mut acc.input, &q_path, f, v)?;
            }
        }
    }

    let layers: Vec<Layer> = order
        .into_iter()
        .map(|name| {
            let acc = layers.remove(&name).unwrap_or_default();
            let module = quantized.get(&name).map(|m| m.type_name().to_string()).unwrap_or_default();
            let (observer, qconfig) = observer_columns(prepared, [acc.float_path.as_str(), name.as_str()]);
            Layer {
                weight_sqnr: ["weight", super::suite::PACKED]
                    .iter()
                    .find_map(|suffix| weights.get(&crate::module::join(&name, suffix)).copied()),
                output_sqnr: acc.output.map(|s| s.db()),
                forced_sqnr: acc.forced.map(|s| s.db()),
                input_sqnr: acc.input.map(|s| s.db()),
                own_sqnr: acc.forced.map(|out| {
                    let own = out.nsr() - acc.input.map_or(0.0, |i| i.nsr());
                    if own > 0.0 { -10.0 * own.log10() } else { f64::INFINITY }
                }),
                range: acc.codes.as_ref().map(Codes::range_use),
                observer,
                qconfig,
                module,
                name,
            }
        })
        .collect();
    let worst = layers
        .iter()
        .filter_map(|l| l.rank_sqnr().filter(|v| !v.is_nan()).map(|v| (l, v)))
        .fold(None::<(&Layer, f64)>, |best, (l, v)| match best {
            Some((_, b)) if b <= v => best,
            _ => Some((l, v)),
        })
        .map(|(l, _)| l.name.clone());
    Ok(Report { inputs: inputs.len(), layers, worst })
}

/// `inf`, `-` for none, else two decimals.
pub(super) fn db_text(value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.to_string(),
        Some(v) => format!("{v:.2}"),
    }
}

impl fmt::Display for Report {
    /// An aligned text table, one row per layer, then the worst layer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "layer",
            "module",
            "weight dB",
            "output dB",
            "input dB",
            "forced dB",
            "own dB",
            "sat lo %",
            "sat hi %",
            "unused %",
            "observer",
        ];
        let pct = |r: &Option<RangeUse>, get: fn(&RangeUse) -> f64| {
            r.as_ref().map_or("-".to_string(), |r| format!("{:.2}", get(r)))
        };
        let rows: Vec<[String; 11]> = self
            .layers
            .iter()
            .map(|l| {
                [
                    l.name.clone(),
                    l.module.clone(),
                    db_text(l.weight_sqnr),
                    db_text(l.output_sqnr),
                    db_text(l.input_sqnr),
                    db_text(l.forced_sqnr),
                    db_text(l.own_sqnr),
                    pct(&l.range, |r| r.saturated_low),
                    pct(&l.range, |r| r.saturated_high),
                    pct(&l.range, |r| r.unused_codes),
                    l.observer.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: Vec<&str>| -> fmt::Result {
            let mut text = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                let sep = if i == 0 { "" } else { "  " };
                // Names and the observer are left-aligned, numbers right-aligned.
                if i < 2 || i == 10 {
                    text.push_str(&format!("{sep}{cell:<w$}"));
                } else {
                    text.push_str(&format!("{sep}{cell:>w$}"));
                }
            }
            writeln!(f, "{}", text.trim_end())
        };
        line(f, header.to_vec())?;
        line(
            f,
            widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().iter().map(String::as_str).collect(),
        )?;
        for row in &rows {
            line(f, row.iter().map(String::as_str).collect())?;
        }
        match self.worst_layer() {
            Some(l) => write!(
                f,
                "worst layer: {} ({}), own SQNR {} dB, teacher-forced {} dB, free-running {} dB ({} input batches)",
                l.name,
                l.module,
                db_text(l.own_sqnr),
                db_text(l.forced_sqnr),
                db_text(l.output_sqnr),
                self.inputs
            ),
            None => write!(f, "no layer could be compared ({} input batches)", self.inputs),
        }
    }
}
