//! Parameters by `state_dict` name: walking the tree mutably, and moving the parameters an
//! optimizer updates out of the tree and back.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use qgraph::Module;

use super::backprop::{Gradients, join};

/// Calls `f(path, module)` on every module of the tree, parents first.
pub fn visit_mut(module: &mut dyn Module, path: &str, f: &mut dyn FnMut(&str, &mut dyn Module)) {
    f(path, module);
    let names: Vec<String> = module.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        if let Some(child) = module.child_slot(&name) {
            visit_mut(child.as_mut(), &join(path, &name), f);
        }
    }
}

/// The parameters of `model` that have a gradient in `grads`, moved out by name (see
/// [`put_parameters`]): optimizers update them in place, then they go back.
pub fn take_parameters(model: &mut dyn Module, grads: &Gradients) -> Vec<(String, ArrayD<f32>)> {
    let mut out = Vec::new();
    visit_mut(model, "", &mut |path, module| {
        for (name, x) in module.params_mut() {
            let key = join(path, name);
            if grads.contains_key(&key) {
                out.push((key, std::mem::take(x)));
            }
        }
    });
    out
}

/// Puts back what [`take_parameters`] took.
pub fn put_parameters(model: &mut dyn Module, params: Vec<(String, ArrayD<f32>)>) {
    let mut params: BTreeMap<String, ArrayD<f32>> = params.into_iter().collect();
    visit_mut(model, "", &mut |path, module| {
        for (name, x) in module.params_mut() {
            if let Some(value) = params.remove(&join(path, name)) {
                *x = value;
            }
        }
    });
}
