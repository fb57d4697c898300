//! Parameters by `state_dict` name: walking the tree mutably, and moving the parameters an
//! optimizer updates out of the tree and back.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use qgraph::Module;

use super::backprop::{Gradients, join};
use crate::fake_quantize::FakeQuantModule;

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

/// The learned parameters of a fake quantizer module (`scale`, `zero_point` of a learnable one;
/// PyTorch's `nn.Parameter`s), empty for any other module.
fn learned_of(module: &mut dyn Module) -> Vec<(&'static str, &mut Vec<f32>)> {
    module
        .as_any_mut()
        .downcast_mut::<FakeQuantModule>()
        .map(FakeQuantModule::learned_mut)
        .unwrap_or_default()
}

/// The parameters of `model` that have a gradient in `grads`, moved out by name (see
/// [`put_parameters`]): optimizers update them in place, then they go back. They are the float
/// parameters (`params_mut`) and, as in PyTorch's `model.parameters()`, the `scale` and
/// `zero_point` of every learnable fake quantizer (1-D, one value per tensor or per channel).
pub fn take_parameters(model: &mut dyn Module, grads: &Gradients) -> Vec<(String, ArrayD<f32>)> {
    let mut out = Vec::new();
    visit_mut(model, "", &mut |path, module| {
        for (name, x) in module.params_mut() {
            let key = join(path, name);
            if grads.contains_key(&key) {
                out.push((key, std::mem::take(x)));
            }
        }
        for (name, x) in learned_of(module) {
            let key = join(path, name);
            if grads.contains_key(&key) {
                let values = std::mem::take(x);
                out.push((key, ArrayD::from_shape_vec(IxDyn(&[values.len()]), values).expect("1-D")));
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
        for (name, x) in learned_of(module) {
            if let Some(value) = params.remove(&join(path, name)) {
                *x = value.iter().copied().collect();
            }
        }
    });
}
