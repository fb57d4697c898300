//! [`report()`]: the per-layer accuracy table of a quantized model against its float original.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::output::{ModelOutput, OutputSum, tensors};
use super::range::{Codes, RangeUse};
use super::sqnr::{SqnrSum, compute_sqnr};
use super::suite::{
    compare_weights, float_logged_paths, get_default_compare_output_module_list, group, match_logs,
    quantized_state_dict, run_logged,
};
use super::svg::{self, Bar};
use crate::mappings::ModuleKey;
use crate::workflow::Observed;
use crate::{GraphError, GraphResult, Module, QuantTensor, QuantTensorOf, Value};

/// One row of a [`Report`]: a module of the quantized model and its float counterpart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// The quantized module's path (`features.0`).
    pub name: String,
    /// The quantized module's class (`QuantizedConvReLU2d`).
    pub module: String,
    /// SQNR (dB) of the dequantized weight against the float weight, if the module has one.
    #[serde(with = "super::sqnr::decibels")]
    pub weight_sqnr: Option<f64>,
    /// SQNR (dB) of the output against the float model's, both models running freely
    /// (accumulated error).
    #[serde(with = "super::sqnr::decibels")]
    pub output_sqnr: Option<f64>,
    /// SQNR (dB) of the output when the module is fed the float model's input to it, quantized
    /// with the module's input parameters (teacher forcing: this layer's own error, plus the
    /// rounding of its input).
    #[serde(with = "super::sqnr::decibels")]
    pub forced_sqnr: Option<f64>,
    /// SQNR (dB) of the input the module was given in the teacher-forced run (the float model's
    /// input to it, rounded by the previous layers' output parameters).
    #[serde(with = "super::sqnr::decibels")]
    pub input_sqnr: Option<f64>,
    /// The layer's own error, estimated from the teacher-forced run by subtracting the input's
    /// relative noise from the output's (`-10 log10(N_out/S_out - N_in/S_in)`, additive noise
    /// model): what its weights and output range add. `+inf` when the output is no noisier than
    /// the input.
    #[serde(with = "super::sqnr::decibels")]
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
    /// The model's output against the float model's (free-running).
    #[serde(default)]
    pub output: Option<ModelOutput>,
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
        let bars: Vec<Bar<'_>> = self
            .layers
            .iter()
            .map(|l| Bar { name: &l.name, bar: l.forced_sqnr, point: l.output_sqnr })
            .collect();
        svg::render(&bars, self.worst.as_deref())
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

/// An error unless the float module at `float_path` is what the quantized module at `name` was
/// converted from, by class name (`QuantizedConvReLU2d` from `ConvReLU2d`): a float model that
/// was not fused as the quantized one would compare a convolution before its batch norm and
/// ReLU with the fused int8 layer.
fn check_counterpart(
    float: &dyn Module,
    quantized: &dyn Module,
    name: &str,
    float_path: &str,
) -> GraphResult<()> {
    let (Ok(q), Ok(f)) = (quantized.get(name), float.get(float_path)) else { return Ok(()) };
    match q.type_name().strip_prefix("Quantized") {
        Some(expected) if expected != f.type_name() => Err(GraphError::Mismatch {
            context: "ns::report",
            reason: format!(
                "layer `{name}` is {} in the quantized model but `{float_path}` is {} in the float model; pass \
                 the float model after fuse_modules with the quantized model's groups (as convert saw it)",
                q.type_name(),
                f.type_name()
            ),
        }),
        _ => Ok(()),
    }
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
            .map(|(key, pair)| Ok((key, compute_sqnr(&pair.float, &pair.quantized)?)))
            .collect::<GraphResult<_>>()?;

    let allow: BTreeSet<ModuleKey> = get_default_compare_output_module_list();
    let paths: HashSet<String> = float_logged_paths(float.as_ref(), &allow).into_iter().collect();
    let mut order: Vec<String> = Vec::new();
    let mut layers: HashMap<String, Accumulated> = HashMap::new();
    let mut output = OutputSum::default();
    for input in inputs {
        let one = std::slice::from_ref(input);
        let float_logs = run_logged(&mut float, &paths, &allow, one, None, true)?;
        let free = run_logged(&mut quantized, &paths, &allow, one, None, false)?;
        for (f, q) in float_logs.results.iter().zip(&free.results) {
            output.add("ns::report: the model output", f, q)?;
        }
        let free_log = free.outputs;
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

    for name in &order {
        check_counterpart(float.as_ref(), quantized.as_ref(), name, &layers[name].float_path)?;
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
    Ok(Report { inputs: inputs.len(), layers, worst, output: Some(output.finish()) })
}
