//! Training of the module tree's structure: `Sequential`, `Graph`, fused modules, prepared
//! (`Observed`) modules, stubs, `Identity`, `Flatten` and `FloatFunctional`.

use ndarray::{ArrayD, Axis, IxDyn, Slice};
use qgraph::nn::{Flatten, Fused, Identity};
use qgraph::workflow::Observed;
use qgraph::{
    DeQuantStub, FloatFunctional, Functional, Graph, GraphError, Module, Op, QuantStub, Sequential, Value,
};

use super::{BackPass, Backprop, Pass, Saved, Train, unsave};
use crate::fake_quantize::{QFakeResult, invalid};

pub(super) fn register(backprop: &mut Backprop) {
    backprop
        .register::<Sequential>()
        .register::<Fused>()
        .register::<Graph>()
        .register::<Observed>()
        .register::<Identity>()
        .register::<QuantStub>()
        .register::<DeQuantStub>()
        .register::<Flatten>()
        .register::<FloatFunctional>();
}

/// The children's names, in order.
fn child_names(module: &dyn Module) -> Vec<String> {
    module.children().into_iter().map(|(n, _)| n.to_string()).collect()
}

/// Runs the children in order (a `Sequential`, a fused module).
fn chain_forward(module: &mut dyn Module, input: Value, pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
    let mut saved = Vec::new();
    let mut x = input;
    for name in child_names(module) {
        let (y, s) = pass.child(module, &name, x)?;
        saved.push((name, s));
        x = y;
    }
    Ok((x, Box::new(saved)))
}

fn chain_backward(
    module: &dyn Module,
    saved: Saved,
    grad: Value,
    pass: &mut BackPass<'_>,
) -> QFakeResult<Value> {
    let saved = unsave::<Vec<(String, Saved)>>(saved, "Sequential")?;
    let mut g = grad;
    for (name, s) in saved.into_iter().rev() {
        g = pass.child(module, &name, s, g)?;
    }
    Ok(g)
}

macro_rules! chain_train {
    ($ty:ty) => {
        impl Train for $ty {
            fn train_forward(&mut self, input: Value, pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
                chain_forward(self, input, pass)
            }

            fn train_backward(
                &self,
                saved: Saved,
                grad: Value,
                pass: &mut BackPass<'_>,
            ) -> QFakeResult<Value> {
                chain_backward(self, saved, grad, pass)
            }
        }
    };
}

chain_train!(Sequential);
chain_train!(Fused);

macro_rules! identity_train {
    ($ty:ty) => {
        impl Train for $ty {
            fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
                Ok((self.forward(input)?, Box::new(())))
            }

            fn train_backward(
                &self,
                _saved: Saved,
                grad: Value,
                _pass: &mut BackPass<'_>,
            ) -> QFakeResult<Value> {
                Ok(grad)
            }
        }
    };
}

identity_train!(Identity);
identity_train!(QuantStub);
identity_train!(DeQuantStub);

impl Train for Flatten {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let shape = input.shape()?.to_vec();
        Ok((self.forward(input)?, Box::new(shape)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let shape = unsave::<Vec<usize>>(saved, "Flatten")?;
        reshape_grad(grad, &shape, "Flatten")
    }
}

/// `grad` reshaped to the input's `shape` (the backward of a reshape).
pub(super) fn reshape_grad(grad: Value, shape: &[usize], context: &'static str) -> QFakeResult<Value> {
    let g = grad.into_float(context)?;
    let g = g.as_standard_layout().into_owned();
    Ok(Value::Float(
        g.into_shape_with_order(IxDyn(shape)).map_err(|e| {
            invalid(context, "gradient", e, "must have as many elements as the forward output")
        })?,
    ))
}

/// What a prepared module's training forward keeps: its module's and its post-process's.
struct ObservedSaved {
    inner: Saved,
    post: Option<Saved>,
}

/// Observes `out` with the observer, or runs it through the fake quantizer child.
fn post_process(
    observed: &mut Observed,
    out: Value,
    times: usize,
    pass: &Pass<'_>,
) -> QFakeResult<(Value, Option<Saved>)> {
    if let Some(observer) = observed.observer() {
        observer.observe_repeated(&out, times)?;
        return Ok((out, None));
    }
    let (y, saved) = pass.child(observed, Observed::POST, out)?;
    Ok((y, Some(saved)))
}

fn post_backward(
    observed: &Observed,
    post: Option<Saved>,
    grad: Value,
    pass: &mut BackPass<'_>,
) -> QFakeResult<Value> {
    match post {
        Some(saved) => pass.child(observed, Observed::POST, saved, grad),
        None => Ok(grad),
    }
}

impl Train for Observed {
    /// The module's training forward, then its activation post-process: an observer records the
    /// output (twice for a float fused module, as `prepare` does), a fake quantizer replaces it.
    fn train_forward(&mut self, input: Value, pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let (out, inner) = pass.run(self.inner_mut(), input)?;
        let times = self.observer().map_or(1, |o| o.observations_per_forward());
        let (out, post) = post_process(self, out, times, pass)?;
        Ok((out, Box::new(ObservedSaved { inner, post })))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let saved = unsave::<ObservedSaved>(saved, "Observed")?;
        let grad = post_backward(self, saved.post, grad, pass)?;
        pass.run(self.inner(), saved.inner, grad)
    }

    fn train_forward_functional(
        &mut self,
        op: Functional,
        inputs: Vec<Value>,
        pass: &Pass<'_>,
    ) -> QFakeResult<(Value, Saved)> {
        let entry = pass.backprop.entry(self.inner(), pass.path())?;
        let (out, inner) = (entry.forward_functional)(self.inner_mut(), op, inputs, pass)?;
        let (out, post) = if op.is_observed() { post_process(self, out, 1, pass)? } else { (out, None) };
        Ok((out, Box::new(ObservedSaved { inner, post })))
    }

    fn train_backward_functional(
        &self,
        op: Functional,
        saved: Saved,
        grad: Value,
        pass: &mut BackPass<'_>,
    ) -> QFakeResult<Vec<Value>> {
        let saved = unsave::<ObservedSaved>(saved, "Observed")?;
        let grad = post_backward(self, saved.post, grad, pass)?;
        let entry = pass.backprop.entry(self.inner(), pass.path())?;
        (entry.backward_functional)(self.inner(), op, saved.inner, grad, pass)
    }
}

/// What `FloatFunctional`'s training forward keeps: the inputs (for `mul`, `add_relu`'s mask and
/// the shapes to reduce broadcast gradients to).
struct FunctionalSaved {
    inputs: Vec<ArrayD<f32>>,
    output: Option<ArrayD<f32>>,
}

impl Train for FloatFunctional {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        Ok((self.forward(input)?, Box::new(())))
    }

    fn train_backward(&self, _saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        Ok(grad)
    }

    fn train_forward_functional(
        &mut self,
        op: Functional,
        inputs: Vec<Value>,
        _pass: &Pass<'_>,
    ) -> QFakeResult<(Value, Saved)> {
        let floats = inputs.iter().map(|v| v.to_float()).collect::<QFakeResult<Vec<_>>>()?;
        let out = self.forward_functional(op, inputs)?;
        let output = matches!(op, Functional::AddRelu).then(|| out.to_float()).transpose()?;
        Ok((out, Box::new(FunctionalSaved { inputs: floats, output })))
    }

    fn train_backward_functional(
        &self,
        op: Functional,
        saved: Saved,
        grad: Value,
        _pass: &mut BackPass<'_>,
    ) -> QFakeResult<Vec<Value>> {
        let saved = unsave::<FunctionalSaved>(saved, "FloatFunctional")?;
        let g = grad.into_float("FloatFunctional")?;
        let xs = &saved.inputs;
        let grads = match op {
            Functional::Add => vec![sum_to_shape(&g, xs[0].shape())?, sum_to_shape(&g, xs[1].shape())?],
            Functional::AddRelu => {
                let out = saved.output.as_ref().expect("saved for add_relu");
                let mut g = g;
                // PyTorch's `threshold_backward(grad, out, 0)`: zero where the output is <= 0.
                g.zip_mut_with(out, |g, &y| {
                    if y <= 0.0 {
                        *g = 0.0;
                    }
                });
                vec![sum_to_shape(&g, xs[0].shape())?, sum_to_shape(&g, xs[1].shape())?]
            }
            Functional::Mul => {
                let ga = &g * &xs[1];
                let gb = &g * &xs[0];
                vec![sum_to_shape(&ga, xs[0].shape())?, sum_to_shape(&gb, xs[1].shape())?]
            }
            Functional::AddScalar(_) => vec![g],
            Functional::MulScalar(c) => vec![g.mapv(|v| v * c as f32)],
            Functional::Cat(dim) => {
                let mut start = 0;
                xs.iter()
                    .map(|x| {
                        let len = x.len_of(Axis(dim));
                        let part = g.slice_axis(Axis(dim), Slice::from(start..start + len)).to_owned();
                        start += len;
                        part
                    })
                    .collect()
            }
        };
        Ok(grads.into_iter().map(Value::Float).collect())
    }
}

/// The gradient of a broadcast operand: `g` summed over the dimensions broadcasting added or
/// expanded (PyTorch's `sum_to_size`).
pub(super) fn sum_to_shape(g: &ArrayD<f32>, shape: &[usize]) -> QFakeResult<ArrayD<f32>> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let lead = g.ndim().checked_sub(shape.len()).ok_or_else(|| {
        invalid("FloatFunctional", "gradient shape", g.shape(), format!("cannot reduce to {shape:?}"))
    })?;
    let mut out = g.clone();
    for _ in 0..lead {
        out = out.sum_axis(Axis(0));
    }
    for (axis, &n) in shape.iter().enumerate() {
        if n == 1 && out.len_of(Axis(axis)) != 1 {
            out = out.sum_axis(Axis(axis)).insert_axis(Axis(axis));
        }
    }
    if out.shape() != shape {
        return Err(invalid(
            "FloatFunctional",
            "gradient shape",
            g.shape(),
            format!("cannot reduce to {shape:?}"),
        ));
    }
    Ok(out)
}

/// What one graph node's training forward kept.
enum NodeSaved {
    /// A child's `forward` (how many inputs it took).
    Call(Saved, usize),
    /// A child's functional op.
    Functional(Saved),
    /// A reshape, with the input's shape.
    Reshape(Vec<usize>),
    /// A permute, with its inverse.
    Permute(Vec<usize>),
    /// An adaptive average pool, with the input's shape.
    AdaptiveAvgPool(Vec<usize>),
    /// A tuple of the inputs.
    Tuple,
    /// An element of a tuple, with the tuple's element shapes.
    GetItem(usize, Vec<Vec<usize>>),
}

/// Where each node's inputs come from, by value index (graph input k is k, node i is
/// `inputs + i`), as the graph wires them.
fn wiring(graph: &Graph) -> QFakeResult<Vec<Vec<usize>>> {
    let mut index: std::collections::HashMap<&str, usize> =
        graph.inputs().iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let first = graph.inputs().len();
    let mut out = Vec::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        let ids = node
            .inputs
            .iter()
            .map(|n| {
                index.get(n.as_str()).copied().ok_or_else(|| GraphError::Workflow {
                    step: "train",
                    reason: format!("graph node `{}` reads `{n}`, which no earlier node makes", node.name),
                })
            })
            .collect::<QFakeResult<Vec<_>>>()?;
        out.push(ids);
        index.insert(node.name.as_str(), first + i);
    }
    Ok(out)
}

impl Train for Graph {
    fn train_forward(&mut self, input: Value, pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let nodes = self.nodes().to_vec();
        let wires = wiring(self)?;
        let first = self.inputs().len();
        let mut values: Vec<Option<Value>> = vec![None; first + nodes.len()];
        let bound = if first == 1 { vec![input] } else { input.into_tuple("Graph")? };
        if bound.len() != first {
            return Err(invalid("Graph", "inputs", bound.len(), format!("the graph takes {first} inputs")));
        }
        for (slot, v) in values.iter_mut().zip(bound) {
            *slot = Some(v);
        }
        let mut saved = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let mut inputs: Vec<Value> =
                wires[i].iter().map(|&id| values[id].clone().expect("computed before use")).collect();
            let (out, s) = match &node.op {
                Op::Call(child) => {
                    let n = inputs.len();
                    let x = if n == 1 { inputs.pop().expect("one input") } else { Value::Tuple(inputs) };
                    let (y, s) = pass.child(self, child, x)?;
                    (y, NodeSaved::Call(s, n))
                }
                Op::Functional(child, op) => {
                    let (y, s) = pass.child_functional(self, child, *op, inputs)?;
                    (y, NodeSaved::Functional(s))
                }
                Op::Flatten(start) => {
                    let x = inputs.pop().expect("one input");
                    let shape = x.shape()?.to_vec();
                    (Flatten::new(*start as i64, -1).forward(x)?, NodeSaved::Reshape(shape))
                }
                Op::Squeeze(dim) => {
                    let x = inputs.pop().expect("one input");
                    let shape = x.shape()?.to_vec();
                    (qgraph::nn::Squeeze::new(*dim).forward(x)?, NodeSaved::Reshape(shape))
                }
                Op::Permute(dims) => {
                    let x = inputs.pop().expect("one input");
                    let permute = qgraph::nn::Permute::new(dims)?;
                    let rank = dims.len() as i64;
                    let resolved: Vec<usize> =
                        dims.iter().map(|&d| if d < 0 { (d + rank) as usize } else { d as usize }).collect();
                    let mut inverse = vec![0; resolved.len()];
                    for (i, &d) in resolved.iter().enumerate() {
                        inverse[d] = i;
                    }
                    (permute.forward(x)?, NodeSaved::Permute(inverse))
                }
                Op::AdaptiveAvgPool2d(size) => {
                    let x = inputs.pop().expect("one input");
                    let shape = x.shape()?.to_vec();
                    (qgraph::nn::AdaptiveAvgPool2d::new(*size).forward(x)?, NodeSaved::AdaptiveAvgPool(shape))
                }
                Op::Tuple => (Value::Tuple(inputs), NodeSaved::Tuple),
                Op::GetItem(index) => {
                    let items = inputs.pop().expect("one input").into_tuple("Graph")?;
                    let shapes =
                        items.iter().map(|v| v.shape().map(<[usize]>::to_vec)).collect::<QFakeResult<_>>()?;
                    let item = items.into_iter().nth(*index).ok_or_else(|| {
                        invalid(
                            "Graph",
                            "GetItem index",
                            index,
                            format!("node `{}` reads a shorter tuple", node.name),
                        )
                    })?;
                    (item, NodeSaved::GetItem(*index, shapes))
                }
            };
            values[first + i] = Some(out);
            saved.push(s);
        }
        let outputs: Vec<usize> = self
            .outputs()
            .iter()
            .map(|n| {
                self.inputs()
                    .iter()
                    .position(|i| i == n)
                    .or_else(|| nodes.iter().position(|node| &node.name == n).map(|i| first + i))
                    .expect("outputs are checked when the graph is built")
            })
            .collect();
        let result = if outputs.len() == 1 && !graph_returns_tuple(self) {
            values[outputs[0]].clone().expect("computed")
        } else {
            Value::Tuple(outputs.iter().map(|&id| values[id].clone().expect("computed")).collect())
        };
        Ok((result, Box::new(GraphSaved { nodes: saved, wires, outputs })))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let saved = *unsave::<GraphSaved>(saved, "Graph")?;
        let first = self.inputs().len();
        let mut grads: Vec<Option<Value>> = vec![None; first + self.nodes().len()];
        let output_grads = if saved.outputs.len() == 1 && !graph_returns_tuple(self) {
            vec![grad]
        } else {
            grad.into_tuple("Graph")?
        };
        for (&id, g) in saved.outputs.iter().zip(output_grads) {
            accumulate(&mut grads[id], g)?;
        }
        let nodes = self.nodes();
        for (i, node_saved) in saved.nodes.into_iter().enumerate().rev() {
            let Some(g) = grads[first + i].take() else { continue };
            let input_grads: Vec<Value> = match (node_saved, &nodes[i].op) {
                (NodeSaved::Call(s, n), Op::Call(child)) => {
                    let g = pass.child(self, child, s, g)?;
                    if n == 1 { vec![g] } else { g.into_tuple("Graph")? }
                }
                (NodeSaved::Functional(s), Op::Functional(child, op)) => {
                    pass.child_functional(self, child, *op, s, g)?
                }
                (NodeSaved::Reshape(shape), _) => vec![reshape_grad(g, &shape, "Graph")?],
                (NodeSaved::Permute(inverse), _) => {
                    let g = g.into_float("Graph")?;
                    vec![Value::Float(g.permuted_axes(IxDyn(&inverse)).as_standard_layout().into_owned())]
                }
                (NodeSaved::AdaptiveAvgPool(shape), Op::AdaptiveAvgPool2d(_)) => {
                    vec![Value::Float(crate::grad::adaptive_avg_pool_backward(
                        &g.into_float("Graph")?,
                        &shape,
                    )?)]
                }
                (NodeSaved::Tuple, _) => g.into_tuple("Graph")?,
                (NodeSaved::GetItem(index, shapes), _) => {
                    let items = shapes
                        .iter()
                        .enumerate()
                        .map(|(k, s)| {
                            if k == index { Ok(g.clone()) } else { Ok(Value::Float(ArrayD::zeros(IxDyn(s)))) }
                        })
                        .collect::<QFakeResult<Vec<_>>>()?;
                    vec![Value::Tuple(items)]
                }
                _ => {
                    return Err(GraphError::Workflow {
                        step: "train",
                        reason: "the graph changed between forward and backward".into(),
                    });
                }
            };
            for (&id, g) in saved.wires[i].iter().zip(input_grads) {
                accumulate(&mut grads[id], g)?;
            }
        }
        let mut inputs: Vec<Value> = grads
            .into_iter()
            .take(first)
            .zip(self.inputs())
            .map(|(g, name)| {
                g.ok_or_else(|| GraphError::Workflow {
                    step: "train",
                    reason: format!("graph input `{name}` does not reach the output"),
                })
            })
            .collect::<QFakeResult<_>>()?;
        Ok(if first == 1 { inputs.pop().expect("one input") } else { Value::Tuple(inputs) })
    }
}

/// What a graph's training forward keeps.
struct GraphSaved {
    nodes: Vec<NodeSaved>,
    wires: Vec<Vec<usize>>,
    outputs: Vec<usize>,
}

/// True if the graph returns a tuple (built with several outputs).
fn graph_returns_tuple(graph: &Graph) -> bool {
    graph.config().get("outputs").is_some_and(|o| !o.is_null())
}

/// Adds `g` to the gradient collected so far for one value (a value read by several nodes).
fn accumulate(total: &mut Option<Value>, g: Value) -> QFakeResult<()> {
    *total = Some(match total.take() {
        None => g,
        Some(sum) => add_values(sum, g)?,
    });
    Ok(())
}

fn add_values(a: Value, b: Value) -> QFakeResult<Value> {
    match (a, b) {
        (Value::Tuple(a), Value::Tuple(b)) if a.len() == b.len() => {
            Ok(Value::Tuple(a.into_iter().zip(b).map(|(a, b)| add_values(a, b)).collect::<QFakeResult<_>>()?))
        }
        (a, b) => {
            let (a, b) = (a.into_float("Graph")?, b.into_float("Graph")?);
            if a.shape() != b.shape() {
                return Err(invalid(
                    "Graph",
                    "gradient shape",
                    b.shape(),
                    format!("must equal {:?}", a.shape()),
                ));
            }
            Ok(Value::Float(a + b))
        }
    }
}
