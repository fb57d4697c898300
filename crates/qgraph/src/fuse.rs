//! Module fusion for post-training quantization (PyTorch's `torch.ao.quantization.fuse_modules`):
//! conv + batch norm (+ ReLU), conv + ReLU, linear + batch norm, linear + ReLU and batch norm +
//! ReLU become one module, so that `convert` quantizes them as one layer. [`fuse_auto`] finds the
//! patterns itself, ReLU6 included (an extension: PyTorch does not fuse ReLU6).
//!
//! ```
//! use qgraph::fuse::fuse_modules;
//! use qgraph::nn::{BatchNorm2d, Conv2d, ReLU};
//! use qgraph::{Module, Sequential, eval};
//! let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
//!     Box::new(Conv2d::new(3, 8, [3, 3]).build()?),
//!     Box::new(BatchNorm2d::new(8)),
//!     Box::new(ReLU::new()),
//! ]));
//! eval(&mut model);
//! fuse_modules(&mut model, &[&["0", "1", "2"]])?;
//! assert_eq!(model.get("0")?.type_name(), "ConvReLU2d");
//! assert_eq!(model.get("1")?.type_name(), "Identity");
//! # Ok::<(), qgraph::GraphError>(())
//! ```

use std::collections::HashMap;

use ndarray::ArrayD;

use crate::fusion::{fuse_conv_bn_weights, fuse_linear_bn_weights};
use crate::nn::{BatchNorm, Conv, Fused, FusedKind, Identity, Linear};
use crate::{Graph, GraphError, GraphResult, Module, Op, Sequential, replace};

/// The patterns, as the errors list them.
const SUPPORTED: &str = "Conv{1,2,3}d + BatchNorm{1,2,3}d (same n), Conv{n}d + BatchNorm{n}d + ReLU, \
                         Conv{n}d + ReLU, Linear + BatchNorm1d, Linear + ReLU, BatchNorm2d/3d + ReLU, and the \
                         ReLU6 forms Conv{n}d (+ BatchNorm{n}d) + ReLU6 and Linear + ReLU6";

/// A module's role in a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Conv(usize),
    Linear,
    Bn(usize),
    Relu,
    Relu6,
    Other,
}

fn part_of(m: &dyn Module) -> Part {
    if let Some(c) = m.downcast_ref::<Conv>() {
        Part::Conv(c.dims())
    } else if m.is::<Linear>() {
        Part::Linear
    } else if let Some(bn) = m.downcast_ref::<BatchNorm>() {
        Part::Bn(bn.dims())
    } else if m.is::<crate::nn::ReLU>() {
        Part::Relu
    } else if m.type_name() == "ReLU6" {
        Part::Relu6
    } else {
        Part::Other
    }
}

/// True if the parts, in order, form a supported pattern.
fn is_pattern(parts: &[Part]) -> bool {
    use Part::*;
    match parts {
        [Conv(n), Bn(m)] | [Conv(n), Bn(m), Relu | Relu6] => n == m,
        [Conv(_) | Linear, Relu | Relu6] => true,
        [Linear, Bn(1)] => true,
        [Bn(n), Relu] => *n == 2 || *n == 3,
        _ => false,
    }
}

/// PyTorch's `fuse_modules(model, groups, inplace=True)` for eval mode: for each group of dotted
/// names (2 or 3 modules, in data-flow order) the fused module goes in the first slot and
/// `Identity` in the others.
///
/// Errors ([`GraphError::Fusion`], naming the group): a name that does not exist (with the names
/// that exist there), types that are not a supported pattern (with the supported ones), a module
/// in training mode (fusion for post-training quantization needs `eval(&mut model)` first), a
/// conv and batch norm whose channels differ. Groups before the failing one stay fused.
pub fn fuse_modules(model: &mut Box<dyn Module>, groups: &[&[&str]]) -> GraphResult<()> {
    fuse_groups(model, groups, fuse_known_modules)
}

/// PyTorch's `fuse_modules_qat(model, groups, inplace=True)`: as [`fuse_modules`], but a conv and
/// its batch norm are kept apart, in a `ConvBn{n}d` or `ConvBnReLU{n}d` [`Fused`] module that
/// `prepare_qat` turns into a QAT module folding the batch norm at every step. Any mode (train or
/// eval) is accepted, as in PyTorch; conv and batch norm must be in the same one.
///
/// ```
/// use qgraph::fuse::fuse_modules_qat;
/// use qgraph::nn::{BatchNorm2d, Conv2d, ReLU};
/// use qgraph::{Module, Sequential, train};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
///     Box::new(Conv2d::new(3, 8, [3, 3]).build()?),
///     Box::new(BatchNorm2d::new(8)),
///     Box::new(ReLU::new()),
/// ]));
/// train(&mut model, true);
/// fuse_modules_qat(&mut model, &[&["0", "1", "2"]])?;
/// assert_eq!(model.get("0")?.type_name(), "ConvBnReLU2d");
/// assert_eq!(model.get("0.1")?.type_name(), "BatchNorm2d");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn fuse_modules_qat(model: &mut Box<dyn Module>, groups: &[&[&str]]) -> GraphResult<()> {
    fuse_groups(model, groups, fuse_known_modules_qat)
}

/// Makes the fused module of a group.
type FuseFn = fn(&[&dyn Module]) -> GraphResult<Box<dyn Module>>;

/// Fuses each group with `fuse`, the fused module in the first slot and `Identity` in the others.
fn fuse_groups(model: &mut Box<dyn Module>, groups: &[&[&str]], fuse: FuseFn) -> GraphResult<()> {
    for group in groups {
        let fused = {
            let modules = group
                .iter()
                .map(|name| model.get(name).map_err(|e| fusion_error(group, e.to_string())))
                .collect::<GraphResult<Vec<_>>>()?;
            fuse(&modules).map_err(|e| match e {
                GraphError::Fusion { reason, .. } => fusion_error(group, reason),
                other => fusion_error(group, other.to_string()),
            })?
        };
        replace(model, group[0], fused)?;
        for name in &group[1..] {
            replace(model, name, Box::new(Identity::new()))?;
        }
    }
    Ok(())
}

/// The module [`fuse_modules_qat`] makes of `modules`: `ConvBn{n}d` / `ConvBnReLU{n}d` for a conv
/// and its batch norm, `LinearBn1d` for a linear layer and its `BatchNorm1d` (PyTorch's
/// `fuse_linear_bn(is_qat=True)`: `num_features` must equal `out_features`, the batch norm must be
/// affine), else what [`fuse_known_modules`] makes (ReLU6 is not fused for QAT, as in PyTorch's
/// QAT fuser table).
pub fn fuse_known_modules_qat(modules: &[&dyn Module]) -> GraphResult<Box<dyn Module>> {
    let parts: Vec<Part> = modules.iter().map(|m| part_of(*m)).collect();
    let types: Vec<String> = modules.iter().map(|m| m.type_name().to_string()).collect();
    let kind = match parts[..] {
        [Part::Conv(n), Part::Bn(m)] if n == m => FusedKind::ConvBn(n),
        [Part::Conv(n), Part::Bn(m), Part::Relu] if n == m => FusedKind::ConvBnReLU(n),
        [Part::Conv(n), Part::Relu] => FusedKind::ConvReLU(n),
        [Part::Linear, Part::Relu] => FusedKind::LinearReLU,
        [Part::Linear, Part::Bn(1)] => {
            check_linear_bn_qat(modules, &types)?;
            FusedKind::LinearBn1d
        }
        [Part::Bn(n @ (2 | 3)), Part::Relu] => FusedKind::BNReLU(n),
        _ => {
            return Err(GraphError::Fusion {
                modules: types.clone(),
                reason: format!(
                    "({}) is not a pattern quantization-aware training fuses; supported: Conv{{n}}d + \
                     BatchNorm{{n}}d (+ ReLU), Conv{{n}}d + ReLU, Linear + ReLU, Linear + BatchNorm1d, \
                     BatchNorm2d/3d + ReLU",
                    types.join(", ")
                ),
            });
        }
    };
    if matches!(parts[1], Part::Bn(_)) && modules[0].training() != modules[1].training() {
        return Err(GraphError::Fusion {
            modules: types.clone(),
            reason: format!(
                "{} and {} must be in the same mode (train or eval); call train(&mut model, true) before fusing",
                types[0], types[1]
            ),
        });
    }
    Ok(Box::new(Fused::from_parts(kind, modules.iter().map(|m| m.clone_module()).collect())?))
}

/// `fuse_linear_bn(is_qat=True)`'s checks: the batch norm normalizes the linear layer's outputs
/// and is affine.
fn check_linear_bn_qat(modules: &[&dyn Module], types: &[String]) -> GraphResult<()> {
    let linear = modules[0].downcast_ref::<Linear>();
    let bn = modules[1].downcast_ref::<BatchNorm>();
    let (Some(linear), Some(bn)) = (linear, bn) else {
        return Err(GraphError::Fusion {
            modules: types.to_vec(),
            reason: "Linear + BatchNorm1d fuses the library's Linear and BatchNorm only".into(),
        });
    };
    let reason = if bn.num_features() != linear.out_features() {
        format!(
            "Output features of Linear ({}) must match num_features of BatchNorm1d ({})",
            linear.out_features(),
            bn.num_features()
        )
    } else if !bn.options().affine {
        "only an affine BatchNorm1d (affine=True) fuses with Linear for QAT".to_string()
    } else {
        return Ok(());
    };
    Err(GraphError::Fusion { modules: types.to_vec(), reason })
}

fn fusion_error(group: &[&str], reason: String) -> GraphError {
    GraphError::Fusion { modules: group.iter().map(|s| s.to_string()).collect(), reason }
}

/// The fused module for `modules` (PyTorch's `fuse_known_modules`): a folded `Conv` / `Linear`,
/// or a [`Fused`] module. The inputs are not changed.
pub fn fuse_known_modules(modules: &[&dyn Module]) -> GraphResult<Box<dyn Module>> {
    let types: Vec<&str> = modules.iter().map(|m| m.type_name()).collect();
    let err = |reason: String| GraphError::Fusion {
        modules: types.iter().map(|s| s.to_string()).collect(),
        reason,
    };
    let parts: Vec<Part> = modules.iter().map(|m| part_of(*m)).collect();
    if !is_pattern(&parts) {
        return Err(err(format!(
            "({}) is not a supported pattern; supported: {SUPPORTED}",
            types.join(", ")
        )));
    }
    if let [first, second, ..] = modules
        && matches!(parts[1], Part::Bn(_))
        && first.training() != second.training()
    {
        let mode = |m: &dyn Module| if m.training() { "training" } else { "eval" };
        return Err(err(format!(
            "{} and {} must be in the same mode (train or eval), but {} is in {} mode and {} in {} mode; call \
             eval(&mut model) before fusing",
            types[0],
            types[1],
            types[0],
            mode(*first),
            types[1],
            mode(*second)
        )));
    }
    if let Some(m) = modules.iter().find(|m| m.training()) {
        return Err(err(format!(
            "{} is in training mode; fusion for post-training quantization folds the running statistics and \
             needs eval mode: call eval(&mut model) first",
            m.type_name()
        )));
    }
    let act = modules.last().filter(|m| matches!(part_of(**m), Part::Relu | Part::Relu6));
    let relu6 = act.is_some_and(|m| part_of(*m) == Part::Relu6);
    let base: Box<dyn Module> = match parts[..2] {
        [Part::Conv(_), Part::Bn(_)] => {
            let conv = modules[0].downcast_ref::<Conv>().expect("classified as Conv");
            let bn = modules[1].downcast_ref::<BatchNorm>().expect("classified as BatchNorm");
            let (w, b) =
                fuse_conv_bn_weights(conv.weight().view(), bias_view(conv.bias()), &bn.fold_params(), false)?;
            let mut fused = conv.clone();
            fused.set_weight_bias(w, Some(b.into_dyn()))?;
            Box::new(fused)
        }
        [Part::Linear, Part::Bn(_)] => {
            let linear = modules[0].downcast_ref::<Linear>().expect("classified as Linear");
            let bn = modules[1].downcast_ref::<BatchNorm>().expect("classified as BatchNorm");
            let (w, b) =
                fuse_linear_bn_weights(linear.weight().view(), bias_view(linear.bias()), &bn.fold_params())?;
            let mut fused = linear.clone();
            fused.set_weight_bias(w, Some(b.into_dyn()))?;
            Box::new(fused)
        }
        _ => modules[0].clone_module(),
    };
    let Some(act) = act else { return Ok(base) };
    let kind = match (part_of(base.as_ref()), relu6) {
        (Part::Conv(n), false) => FusedKind::ConvReLU(n),
        (Part::Conv(n), true) => FusedKind::ConvReLU6(n),
        (Part::Linear, false) => FusedKind::LinearReLU,
        (Part::Linear, true) => FusedKind::LinearReLU6,
        (Part::Bn(n), _) => FusedKind::BNReLU(n),
        _ => unreachable!("patterns start with a conv, linear or batch norm"),
    };
    Ok(Box::new(Fused::new(kind, base, act.clone_module())?))
}

fn bias_view(bias: Option<&ArrayD<f32>>) -> Option<ndarray::ArrayView1<'_, f32>> {
    bias.map(|b| b.view().into_dimensionality().expect("biases are vectors"))
}

/// Finds every supported pattern of consecutive modules, fuses them with [`fuse_modules`] and
/// returns the groups fused (dotted names, as `fuse_modules` takes them).
///
/// It looks at the children of every `Sequential` in order and at the chains of `Call` nodes of
/// every `Graph` where each intermediate value goes only to the next node (and is not the
/// graph's output), and fuses the longest pattern at each place: conv + bn + relu before conv +
/// bn. ReLU6 is fused too (`ConvReLU6_2d`, `LinearReLU6`), which PyTorch's fuser does not do.
pub fn fuse_auto(model: &mut Box<dyn Module>) -> GraphResult<Vec<Vec<String>>> {
    let mut groups = Vec::new();
    for (path, module) in model.named_modules() {
        let chains = if let Some(seq) = module.downcast_ref::<Sequential>() {
            vec![seq.children().into_iter().map(|(n, _)| n.to_string()).collect()]
        } else if let Some(graph) = module.downcast_ref::<Graph>() {
            graph_chains(graph)
        } else {
            continue;
        };
        let children: HashMap<&str, &dyn Module> = module.children().into_iter().collect();
        for chain in chains {
            let mut i = 0;
            while i < chain.len() {
                let len = [3, 2].into_iter().find(|&len| {
                    i + len <= chain.len()
                        && is_pattern(
                            &chain[i..i + len]
                                .iter()
                                .map(|n| part_of(children[n.as_str()]))
                                .collect::<Vec<_>>(),
                        )
                });
                match len {
                    Some(len) => {
                        groups.push(chain[i..i + len].iter().map(|n| join(&path, n)).collect::<Vec<_>>());
                        i += len;
                    }
                    None => i += 1,
                }
            }
        }
    }
    // In module order (parents before children, children in order), as a user would list them.
    let order: HashMap<String, usize> =
        model.named_modules().into_iter().enumerate().map(|(i, (path, _))| (path, i)).collect();
    groups.sort_by_key(|g| order[&g[0]]);
    let refs: Vec<Vec<&str>> = groups.iter().map(|g| g.iter().map(String::as_str).collect()).collect();
    let slices: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    fuse_modules(model, &slices)?;
    Ok(groups)
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// The maximal chains of children called one after the other in `graph`: node `b` follows node
/// `a` when `b` is the only reader of `a`'s value, `b` calls a child on it alone, `a`'s value is
/// not an output, and both children are called from one node only.
fn graph_chains(graph: &Graph) -> Vec<Vec<String>> {
    let nodes = graph.nodes();
    let mut calls: HashMap<&str, usize> = HashMap::new();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        if let Op::Call(child) | Op::Functional(child, _) = &node.op {
            *calls.entry(child.as_str()).or_default() += 1;
        }
        for input in &node.inputs {
            readers.entry(input.as_str()).or_default().push(i);
        }
    }
    let single_call = |i: usize| match &nodes[i].op {
        Op::Call(child) if calls[child.as_str()] == 1 && nodes[i].inputs.len() == 1 => Some(child.clone()),
        _ => None,
    };
    // The node following node i in a chain, if any.
    let next = |i: usize| -> Option<usize> {
        let name = nodes[i].name.as_str();
        if graph.outputs().iter().any(|o| o == name) {
            return None;
        }
        match readers.get(name).map(Vec::as_slice) {
            Some(&[j]) if single_call(j).is_some() => Some(j),
            _ => None,
        }
    };
    let mut has_prev = vec![false; nodes.len()];
    for i in 0..nodes.len() {
        if single_call(i).is_some()
            && let Some(j) = next(i)
        {
            has_prev[j] = true;
        }
    }
    let mut chains = Vec::new();
    for (start, &follows) in has_prev.iter().enumerate() {
        if follows {
            continue;
        }
        let Some(child) = single_call(start) else { continue };
        let mut chain = vec![child];
        let mut i = start;
        while let Some(j) = next(i) {
            chain.push(single_call(j).expect("next only follows calls"));
            i = j;
        }
        chains.push(chain);
    }
    chains
}
