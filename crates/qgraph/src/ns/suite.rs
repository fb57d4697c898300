//! `compare_weights`, `compare_model_outputs`, `compare_model_stub` and their matching rule.

use std::collections::{BTreeSet, HashSet};

use ndarray::ArrayD;

use crate::debug::{self, OutputLog};
use crate::mappings::{
    ModuleKey, Swap, get_default_dynamic_quant_module_mappings, get_default_static_quant_module_mappings,
};
use crate::module::{TensorView, join};
use crate::quantized::{DynamicQuantizedLinear, QuantizedLinear, QuantizedWeight};
use crate::{DeQuantStub, GraphError, GraphResult, Module, Value};

/// A float tensor and the matching quantized one, dequantized (an entry of [`compare_weights`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPair {
    /// The float model's tensor.
    pub float: ArrayD<f32>,
    /// The quantized model's tensor, dequantized.
    pub quantized: ArrayD<f32>,
}

/// The outputs one layer logged in the float and the quantized model, one per call (an entry
/// of [`compare_model_outputs`]; PyTorch's `{"float": [...], "quantized": [...]}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ValuePair {
    /// The float module's outputs (`OutputLogger.stats["tensor_val"]` of the float model).
    pub float: Vec<Value>,
    /// The quantized module's outputs, as it returned them (quantized values).
    pub quantized: Vec<Value>,
}

/// The outputs a [`Shadow`](super::Shadow) logged: the quantized module's and its float shadow's on the same
/// (dequantized) input, one per call (`ShadowLogger.stats`).
pub type ShadowPair = ValuePair;

/// `_find_match(str_list, key_str, postfix)`: the first of `candidates` whose key, without its
/// last one or two dotted parts, equals `key` without its last part (`postfix`), comparing with
/// the dots removed as PyTorch does (`features.0.weight` matches `features.0.0.weight`, a fused
/// module's float weight). For `postfix == "_packed_params"`, `key` without its last two parts
/// is tried too. `None` if `key` does not end with `postfix` or nothing matches.
///
/// ```
/// use qgraph::ns::find_match;
/// let float = ["features.0.0.weight", "features.0.0.bias", "fc.weight"];
/// assert_eq!(find_match(&float, "features.0.weight", "weight"), Some("features.0.0.weight"));
/// assert_eq!(find_match(&float, "fc.weight", "weight"), Some("fc.weight"));
/// assert_eq!(find_match(&float, "fc.bias", "weight"), None);
/// ```
pub fn find_match<'a, S: AsRef<str>>(candidates: &'a [S], key: &str, postfix: &str) -> Option<&'a str> {
    if key.rsplit('.').next() != Some(postfix) {
        return None;
    }
    let without = |s: &str, n: usize| -> String {
        let p: Vec<&str> = s.split('.').collect();
        p[..p.len().saturating_sub(n)].concat()
    };
    let search = |target: &str| {
        candidates.iter().map(AsRef::as_ref).find(|s| without(s, 1) == target || without(s, 2) == target)
    };
    if let Some(found) = search(&without(key, 1)) {
        return Some(found);
    }
    if postfix == "_packed_params" {
        let target = without(key, 2);
        if !target.is_empty() {
            return search(&target);
        }
    }
    None
}

/// Where PyTorch's quantized and dynamic `Linear` keep their weight in a `state_dict`.
pub(crate) const PACKED: &str = "_packed_params._packed_params";

/// The quantized model's weights as PyTorch's quantized `state_dict` holds them: every module
/// that saves a qint8 `weight` with its `weight_scale` and `weight_zero_point` (quantized Conv,
/// Linear, their fused forms, dynamic Linear), in module order, under `<path>.weight`, or
/// `<path>._packed_params._packed_params` for a Linear (PyTorch's key).
pub fn quantized_state_dict(model: &dyn Module) -> GraphResult<Vec<(String, QuantizedWeight)>> {
    let mut out = Vec::new();
    for (path, module) in model.named_modules() {
        let tensors = module.tensors();
        let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let (Some(TensorView::I8(int)), Some(TensorView::F64(scales)), Some(TensorView::I64(zps))) =
            (find("weight"), find("weight_scale"), find("weight_zero_point"))
        else {
            continue;
        };
        let scales: Vec<f64> = scales.iter().copied().collect();
        let per_channel = scales.len() > 1;
        let weight = QuantizedWeight::new(int.to_owned(), scales, zps.iter().copied().collect(), per_channel)
            .map_err(|e| GraphError::At { path: path.clone(), source: Box::new(e) })?;
        // PyTorch's quantized Linear keeps its weight in packed parameters.
        let linear = module.is::<QuantizedLinear>() || module.is::<DynamicQuantizedLinear>();
        out.push((join(&path, if linear { PACKED } else { "weight" }), weight));
    }
    Ok(out)
}

/// `compare_weights(float_dict, quantized_dict)`: for each quantized weight whose key matches a
/// float key by [`find_match`] (postfix `weight`, else `_packed_params`), the float tensor and the quantized one
/// dequantized, keyed by the quantized key, in the quantized dict's order.
///
/// Give the float model the quantized model was converted from after fusion (PyTorch's tutorial
/// fuses the float model too), so that batch norms are folded in both.
pub fn compare_weights(
    float_dict: &[(String, &ArrayD<f32>)],
    quantized_dict: &[(String, QuantizedWeight)],
) -> Vec<(String, TensorPair)> {
    let keys: Vec<&str> = float_dict.iter().map(|(k, _)| k.as_str()).collect();
    quantized_dict
        .iter()
        .filter_map(|(key, weight)| {
            let found =
                find_match(&keys, key, "weight").or_else(|| find_match(&keys, key, "_packed_params"))?;
            let float = float_dict.iter().find(|(k, _)| k == found).map(|(_, t)| (*t).clone())?;
            Some((key.clone(), TensorPair { float, quantized: weight.dequantize() }))
        })
        .collect()
}

/// `get_default_compare_output_module_list()`: the float module types whose outputs
/// [`compare_model_outputs`] logs: every type with a static or dynamic default mapping
/// (QuantStub, DeQuantStub, Conv, Linear, fused modules, BatchNorm, FloatFunctional, the
/// quantizable activations, LSTM, Embedding, ...). A quantized module is logged where the float
/// model has a listed module at the same path.
pub fn get_default_compare_output_module_list() -> BTreeSet<ModuleKey> {
    let mut keys: BTreeSet<ModuleKey> =
        get_default_static_quant_module_mappings().static_keys().cloned().collect();
    keys.extend(get_default_dynamic_quant_module_mappings().swap_keys(Swap::Dynamic).cloned());
    keys
}

/// True if `compare_model_outputs` logs `module`'s outputs: its type is in `allow`, and it is not
/// one of the two modules PyTorch's `prepare` never observes (`DeQuantStub`, `nn.Dropout`).
fn logged_type(module: &dyn Module, allow: &BTreeSet<ModuleKey>) -> bool {
    allow.contains(&ModuleKey::of(module))
        && !module.is::<DeQuantStub>()
        && !module.is::<crate::nn::Dropout>()
}

/// The outermost modules of `model` that are at one of `paths` or of a logged type.
fn selected_paths(model: &dyn Module, paths: &HashSet<String>, allow: &BTreeSet<ModuleKey>) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    for (path, module) in model.named_modules() {
        let inside = chosen.iter().any(|p| p.is_empty() || path.starts_with(&format!("{p}.")));
        if !inside && (paths.contains(&path) || logged_type(module, allow)) {
            chosen.push(path);
        }
    }
    chosen
}

/// The paths of `model` that [`compare_model_outputs`] logs: listed types, outermost first.
pub(crate) fn float_logged_paths(model: &dyn Module, allow: &BTreeSet<ModuleKey>) -> Vec<String> {
    selected_paths(model, &HashSet::new(), allow)
}

/// What [`run_logged`] recorded, in execution order.
pub(crate) struct Logs {
    /// `(path, output)` per call.
    pub(crate) outputs: Vec<(String, Value)>,
    /// `(path, input)` per call, if asked for.
    pub(crate) inputs: Vec<(String, Value)>,
    /// The model's output for each input.
    pub(crate) results: Vec<Value>,
}

/// Runs `model` on each input with output loggers (forcing with `force`, if given) and, if
/// `with_inputs`, input loggers on the modules at `paths` or of `allow`'s types, then removes
/// them.
pub(crate) fn run_logged(
    model: &mut Box<dyn Module>,
    paths: &HashSet<String>,
    allow: &BTreeSet<ModuleKey>,
    inputs: &[Value],
    force: Option<debug::Forcing>,
    with_inputs: bool,
) -> GraphResult<Logs> {
    let selected: HashSet<String> = selected_paths(model.as_ref(), paths, allow).into_iter().collect();
    let select = |path: &str, _: &dyn Module| selected.contains(path);
    let attached = (|| -> GraphResult<(OutputLog, Option<OutputLog>)> {
        let outputs = match force {
            Some(force) => debug::log_outputs_forced(model, select, force)?,
            None => debug::log_outputs(model, select)?,
        };
        let input_log = if with_inputs { Some(debug::log_inputs(model, select)?) } else { None };
        Ok((outputs, input_log))
    })();
    let run = attached.and_then(|logs| {
        let results = inputs.iter().map(|x| model.forward(x.clone())).collect::<GraphResult<Vec<_>>>()?;
        Ok((logs, results))
    });
    debug::remove_loggers(model)?;
    let ((outputs, input_log), results) = run?;
    Ok(Logs { outputs: outputs.take(), inputs: input_log.map(|l| l.take()).unwrap_or_default(), results })
}

/// The log's entries grouped by path, paths in order of first appearance.
pub(crate) fn group(log: Vec<(String, Value)>) -> Vec<(String, Vec<Value>)> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for (path, value) in log {
        match out.iter_mut().find(|(p, _)| *p == path) {
            Some((_, values)) => values.push(value),
            None => out.push((path, vec![value])),
        }
    }
    out
}

/// `key.stats` for a module path (the root's is `stats`).
pub(crate) fn stats_key(path: &str) -> String {
    join(path, "stats")
}

/// Pairs the quantized log with the float log by PyTorch's rule (`get_matching_activations`:
/// [`find_match`] with postfix `stats` over the float keys sorted in reverse), as
/// `(quantized path, float path, pair)`.
pub(crate) fn match_logs(
    float_log: Vec<(String, Value)>,
    quantized_log: Vec<(String, Value)>,
) -> Vec<(String, String, ValuePair)> {
    let float = group(float_log);
    let mut float_keys: Vec<String> = float.iter().map(|(p, _)| stats_key(p)).collect();
    float_keys.sort_unstable_by(|a, b| b.cmp(a));
    group(quantized_log)
        .into_iter()
        .filter_map(|(q_path, quantized)| {
            let key = find_match(&float_keys, &stats_key(&q_path), "stats")?;
            let (f_path, values) = float.iter().find(|(p, _)| stats_key(p) == key)?;
            Some((q_path, f_path.clone(), ValuePair { float: values.clone(), quantized }))
        })
        .collect()
}

/// `compare_model_outputs(float_model, q_model, *data)`: runs both models on each input with
/// output loggers on the modules of [`get_default_compare_output_module_list`] (in the quantized
/// model: at the float model's logged paths) and returns, per quantized module, the float and
/// quantized outputs, keyed `<path>.stats` as PyTorch's `get_matching_activations`. As PyTorch's
/// `prepare`, it logs no `DeQuantStub` and no `Dropout`, so neither has an entry. Modules that
/// logged nothing are left out. The loggers are removed afterwards.
///
/// One difference: PyTorch logs a fused float module's output twice per call (its logger is the
/// last module of the `nn.Sequential` and also a forward hook), so its `float` lists are twice
/// as long as the `quantized` ones there; here every list has one entry per call.
pub fn compare_model_outputs(
    float_model: &mut Box<dyn Module>,
    q_model: &mut Box<dyn Module>,
    inputs: &[Value],
) -> GraphResult<Vec<(String, ValuePair)>> {
    let allow = get_default_compare_output_module_list();
    let paths: HashSet<String> = float_logged_paths(float_model.as_ref(), &allow).into_iter().collect();
    let float_log = run_logged(float_model, &paths, &allow, inputs, None, false)?.outputs;
    let quantized_log = run_logged(q_model, &paths, &allow, inputs, None, false)?.outputs;
    Ok(match_logs(float_log, quantized_log).into_iter().map(|(q, _, pair)| (stats_key(&q), pair)).collect())
}
