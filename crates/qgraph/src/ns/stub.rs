//! `compare_model_stub`: quantized modules shadowed by their float counterparts.

use std::sync::{Arc, Mutex};

use super::suite::{ShadowPair, stats_key};
use crate::mappings::ModuleKey;
use crate::module::join;
use crate::{Functional, GraphResult, Module, Value};

/// Shared log of the shadows: `(path, quantized output, float output)` per call.
type ShadowLog = Arc<Mutex<Vec<(String, Value, Value)>>>;

/// PyTorch's `Shadow`: runs the quantized module (`orig_module`), then its float counterpart
/// (`shadow_module`) on the same input dequantized, logs both outputs and passes on the
/// quantized one. `FloatFunctional` calls are shadowed too (`add`, `cat`, ...).
///
/// PyTorch's `ShadowLogger` keeps `x[0]` when `len(x) > 1`, which for a tensor is the first
/// sample of the batch; here a tuple output keeps its first element and a tensor is kept whole.
#[derive(Clone)]
pub struct Shadow {
    orig_module: Box<dyn Module>,
    shadow_module: Box<dyn Module>,
    path: String,
    log: ShadowLog,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("orig_module", &self.orig_module)
            .field("shadow_module", &self.shadow_module)
            .finish_non_exhaustive()
    }
}

/// `_dequantize_tensor_list`: quantized values dequantized, tuples element by element.
fn dequantize(value: &Value) -> GraphResult<Value> {
    Ok(match value {
        Value::Tuple(items) => Value::Tuple(items.iter().map(dequantize).collect::<GraphResult<_>>()?),
        v if v.is_quant() => Value::Float(v.to_float()?),
        other => other.clone(),
    })
}

/// What `ShadowLogger` keeps of an output: a tuple's first element, else the value.
fn first(value: Value) -> Value {
    match value {
        Value::Tuple(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    }
}

impl Shadow {
    fn record(&self, quantized: &Value, float: Value) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((
            self.path.clone(),
            first(quantized.clone()),
            first(float),
        ));
    }
}

impl Module for Shadow {
    fn type_name(&self) -> &str {
        "Shadow"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let output = self.orig_module.forward(input.clone())?;
        let shadow_output = self.shadow_module.forward(dequantize(&input)?)?;
        self.record(&output, shadow_output);
        Ok(output)
    }

    fn forward_functional(&self, op: Functional, inputs: Vec<Value>) -> GraphResult<Value> {
        let float_inputs = inputs.iter().map(dequantize).collect::<GraphResult<Vec<_>>>()?;
        let output = self.orig_module.forward_functional(op, inputs)?;
        let shadow_output = self.shadow_module.forward_functional(op, float_inputs)?;
        self.record(&output, shadow_output);
        Ok(output)
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        vec![("orig_module", self.orig_module.as_ref()), ("shadow_module", self.shadow_module.as_ref())]
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        match name {
            "orig_module" => Some(&mut self.orig_module),
            "shadow_module" => Some(&mut self.shadow_module),
            _ => None,
        }
    }
}

/// `_is_identical_module_type`: the same module types, in the same order, in both trees.
fn identical_module_types(a: &dyn Module, b: &dyn Module) -> bool {
    let types =
        |m: &dyn Module| m.named_modules().into_iter().map(|(_, m)| ModuleKey::of(m)).collect::<Vec<_>>();
    types(a) == types(b)
}

/// `prepare_model_with_stubs(float_module, q_module, module_swap_list, ShadowLogger)`: walks both
/// trees by child name and replaces each quantized module whose float counterpart's class is in
/// `module_swap_list` (and whose module types differ from it) by a [`Shadow`] of the two. Returns
/// the shadows' log and the shadowed paths (module order).
fn attach_shadows(
    float_module: &dyn Module,
    q_module: &mut Box<dyn Module>,
    module_swap_list: &[&str],
    prefix: &str,
    log: &ShadowLog,
    shadowed: &mut Vec<String>,
) -> GraphResult<()> {
    let names: Vec<String> = q_module.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let Some(float_child) = float_module.children().into_iter().find(|(n, _)| *n == name).map(|(_, m)| m)
        else {
            continue;
        };
        let Some(slot) = q_module.child_slot(&name) else { continue };
        let path = join(prefix, &name);
        if !module_swap_list.contains(&float_child.type_name()) {
            attach_shadows(float_child, slot, module_swap_list, &path, log, shadowed)?;
        } else if !identical_module_types(slot.as_ref(), float_child) {
            let orig = std::mem::replace(slot, Box::new(crate::nn::Identity::new()));
            *slot = Box::new(Shadow {
                orig_module: orig,
                shadow_module: float_child.clone_module(),
                path: path.clone(),
                log: log.clone(),
            });
            shadowed.push(path);
        }
    }
    Ok(())
}

/// Puts back the quantized modules of every [`Shadow`] in `model`.
fn remove_shadows(model: &mut Box<dyn Module>) {
    if model.is::<Shadow>() {
        let shadow = std::mem::replace(model, Box::new(crate::nn::Identity::new()));
        if let Ok(shadow) = shadow.into_any().downcast::<Shadow>() {
            *model = shadow.orig_module;
        }
    }
    let names: Vec<String> = model.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        if let Some(child) = model.child_slot(&name) {
            remove_shadows(child);
        }
    }
}

/// `compare_model_stub(float_model, q_model, module_swap_list, *data)`: shadows the quantized
/// modules whose float counterparts are of a class in `module_swap_list` (class names, e.g.
/// `["ConvReLU2d", "Linear"]`), runs `q_model` on each input and returns, keyed
/// `<path>.stats`, each shadow's quantized and float outputs. `q_model` is restored afterwards.
pub fn compare_model_stub(
    float_model: &dyn Module,
    q_model: &mut Box<dyn Module>,
    module_swap_list: &[&str],
    inputs: &[Value],
) -> GraphResult<Vec<(String, ShadowPair)>> {
    let log = ShadowLog::default();
    let mut shadowed = Vec::new();
    attach_shadows(float_model, q_model, module_swap_list, "", &log, &mut shadowed)?;
    if shadowed.is_empty() {
        remove_shadows(q_model);
        return Err(crate::invalid(
            "compare_model_stub",
            "module_swap_list",
            module_swap_list,
            "no quantized module has a float counterpart of these classes at the same path; list the float \
             class names (e.g. \"ConvReLU2d\", \"Linear\") of the modules to shadow",
        ));
    }
    let run = inputs.iter().try_for_each(|x| q_model.forward(x.clone()).map(drop));
    remove_shadows(q_model);
    run?;
    let entries = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(shadowed
        .into_iter()
        .map(|path| {
            let mut pair = ShadowPair { float: Vec::new(), quantized: Vec::new() };
            for (_, q, f) in entries.iter().filter(|(p, _, _)| *p == path) {
                pair.quantized.push(q.clone());
                pair.float.push(f.clone());
            }
            (stats_key(&path), pair)
        })
        .collect())
}
