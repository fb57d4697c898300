//! Finding the layers to equalize: chains of convs and linears in a fused float model with only
//! ReLU, identity, dropout or max pooling between them, and [`equalize_model`] on all of them.
//! The chain walk ([`tokens`]) also finds, for the data-free bias correction, which layer's
//! output each layer reads.

use super::absorb::{absorb_high_bias, absorbable};
use super::cle::{equalize, expand_groups};
use super::layer::{self, Accept};
use super::stats::Activation;
use crate::{Graph, GraphResult, Module, Sequential, Value};

/// What a stretch of a model means for a walk over it, in execution order.
pub(crate) enum Token {
    /// A weighted layer (its path).
    Layer(String),
    /// A function that leaves what the walk tracks unchanged (for equalization: one that
    /// commutes with a positive per-channel scale).
    Pass,
    /// A clipping activation between layers (for bias correction).
    Act(Activation),
    /// Anything else: a chain ends here.
    Barrier,
}

/// What a leaf (or a whole weighted module) is to a walk: [`tokens`] asks this before looking
/// at a module's children; `None` means "look inside" (a barrier if there is nothing inside).
pub(crate) enum Leaf {
    /// A weighted layer.
    Layer,
    /// See [`Token::Pass`].
    Pass,
    /// See [`Token::Act`].
    Act(Activation),
}

/// The class names that commute with a positive per-channel scale.
const PASS_THROUGH: [&str; 5] = ["ReLU", "Identity", "Dropout", "MaxPool1d", "MaxPool2d"];

/// Equalization's view of a module: an equalizable layer, a pass-through, or neither.
fn equalization_leaf(module: &dyn Module) -> Option<Leaf> {
    if layer::base_path(module, "", Accept::Equalizable).is_ok() {
        return Some(Leaf::Layer);
    }
    (PASS_THROUGH.contains(&module.type_name()) && module.children().is_empty()).then_some(Leaf::Pass)
}

/// `parent.name`, or `name` at the root.
fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() { name.to_string() } else { format!("{parent}.{name}") }
}

/// The children a [`Graph`] calls one after another on its input if it is such a chain (one
/// input, one output, every node a child call on the previous node's output).
fn graph_chain(graph: &Graph) -> Option<Vec<&str>> {
    let [input] = graph.inputs() else { return None };
    let [output] = graph.outputs() else { return None };
    let mut previous = input.as_str();
    let mut calls = Vec::new();
    for node in graph.nodes() {
        let crate::Op::Call(child) = &node.op else { return None };
        if node.inputs.len() != 1 || node.inputs[0] != previous {
            return None;
        }
        calls.push(child.as_str());
        previous = &node.name;
    }
    (previous == output.as_str()).then_some(calls)
}

/// The tokens of `module` at `path`, each module classified by `leaf`; a stretch that cannot be
/// a link of a longer chain (inside a graph with branches, an unknown container) is handed to
/// `sink` here, and the caller hands the returned top stretch to it.
pub(crate) fn tokens(
    module: &dyn Module,
    path: &str,
    leaf: &dyn Fn(&dyn Module) -> Option<Leaf>,
    sink: &mut dyn FnMut(Vec<Token>),
) -> Vec<Token> {
    match leaf(module) {
        Some(Leaf::Layer) => return vec![Token::Layer(path.to_string())],
        Some(Leaf::Pass) => return vec![Token::Pass],
        Some(Leaf::Act(act)) => return vec![Token::Act(act)],
        None => {}
    }
    let children = module.children();
    let chain: Option<Vec<&str>> = if module.is::<Sequential>() {
        Some(children.iter().map(|(n, _)| *n).collect())
    } else {
        module.downcast_ref::<Graph>().and_then(graph_chain)
    };
    match chain {
        Some(order) => order
            .into_iter()
            .flat_map(|name| {
                let child = children.iter().find(|(n, _)| *n == name).map(|(_, m)| *m);
                match child {
                    Some(child) => tokens(child, &join(path, name), leaf, sink),
                    None => vec![Token::Barrier],
                }
            })
            .collect(),
        None => {
            for (name, child) in children {
                let stretch = tokens(child, &join(path, name), leaf, sink);
                sink(stretch);
            }
            vec![Token::Barrier]
        }
    }
}

/// Appends each run of two or more layers of `tokens` not broken by a barrier to `groups`.
fn close(tokens: Vec<Token>, groups: &mut Vec<Vec<String>>) {
    let mut run: Vec<String> = Vec::new();
    for token in tokens.into_iter().chain([Token::Barrier]) {
        match token {
            Token::Layer(path) => run.push(path),
            Token::Pass => {}
            Token::Act(_) | Token::Barrier => {
                if run.len() >= 2 {
                    groups.push(std::mem::take(&mut run));
                }
                run.clear();
            }
        }
    }
}

/// The groups of `model` that [`equalize`] can take: maximal chains of `Conv`, `Linear`,
/// `ConvReLU*d` and `LinearReLU` modules in execution order with only ReLU, identity, dropout or
/// max pooling between them, inside `Sequential`s and chain-shaped `Graph`s (any nesting). A
/// graph with a branch or a residual add ends the chains through it (the skipped value would no
/// longer match), as do batch norms (fuse them first), `ReLU6`, pooling to a size, flattening and
/// stubs. In a fused MobileNetV2 a chain runs through the pointwise, depthwise and pointwise
/// convolutions of an inverted residual and on into the next block when that block has no skip
/// connection.
///
/// ```
/// use qgraph::nn::{Conv2d, ReLU};
/// use qgraph::{Module, Sequential};
/// let model = Sequential::new(vec![
///     Box::new(Conv2d::new(3, 8, [3, 3]).build()?),
///     Box::new(ReLU::new()),
///     Box::new(Conv2d::new(8, 8, [3, 3]).groups(8).build()?),
///     Box::new(Conv2d::new(8, 4, [1, 1]).build()?),
/// ]);
/// assert_eq!(qgraph::equalize::find_equalizable_groups(&model), [["0", "2", "3"]]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn find_equalizable_groups(model: &dyn Module) -> Vec<Vec<String>> {
    let mut groups = Vec::new();
    let mut sink = |stretch| close(stretch, &mut groups);
    let top = tokens(model, "", &equalization_leaf, &mut sink);
    sink(top);
    groups
}

/// Equalizes every group [`find_equalizable_groups`] finds in `model` (a fused float model in
/// evaluation mode) with [`equalize`] at `threshold`, then, given calibration inputs
/// (`absorb_with`), absorbs high biases ([`absorb_high_bias`]) along every pair it takes (first
/// layer with a ReLU, second without padding), in order; returns the groups. The float function
/// stays the same up to float rounding (with absorption: on the calibration data).
pub fn equalize_model(
    model: &mut Box<dyn Module>,
    threshold: f32,
    absorb_with: Option<&[Value]>,
) -> GraphResult<Vec<Vec<String>>> {
    let groups = find_equalizable_groups(model.as_ref());
    if groups.is_empty() {
        return Ok(groups);
    }
    equalize(model, &groups, threshold)?;
    if let Some(inputs) = absorb_with {
        for (first, second) in expand_groups(&groups)? {
            if absorbable(model.as_ref(), &first, &second) {
                absorb_high_bias(model, &first, &second, inputs)?;
            }
        }
    }
    Ok(groups)
}
