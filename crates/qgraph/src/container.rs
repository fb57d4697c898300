//! Containers: [`Sequential`] (children run in order) and [`Graph`] (named nodes with named
//! inputs, for residual adds, concatenations and branches).

use serde::{Deserialize, Serialize};

use crate::module::Functional;
use crate::nn::{AdaptiveAvgPool2d, Flatten, check_sizes};
use crate::record::Record;
use crate::{GraphError, GraphResult, Module, Value, invalid};

/// Children by name, in order: the storage both containers share.
pub(crate) type Children = Vec<(String, Box<dyn Module>)>;

fn child_refs(children: &Children) -> Vec<(&str, &dyn Module)> {
    children.iter().map(|(n, m)| (n.as_str(), m.as_ref())).collect()
}

fn child_slot<'a>(children: &'a mut Children, name: &str) -> Option<&'a mut Box<dyn Module>> {
    children.iter_mut().find(|(n, _)| n == name).map(|(_, m)| m)
}

/// Checks that `name` can be added to `children`: non-empty, without a dot, not yet taken.
pub(crate) fn check_name(context: &'static str, children: &Children, name: &str) -> GraphResult<()> {
    if name.is_empty() || name.contains('.') {
        return Err(invalid(context, "child name", name, "names are non-empty and contain no '.'"));
    }
    if children.iter().any(|(n, _)| n == name) {
        return Err(invalid(context, "child name", name, "two children cannot share a name"));
    }
    Ok(())
}

/// `nn.Sequential`: runs its children in order. Children are named `"0"`, `"1"`, ... unless
/// built with [`Sequential::named`] (PyTorch's `OrderedDict` form).
///
/// ```
/// use qgraph::nn::{Flatten, ReLU};
/// use qgraph::{Module, Sequential};
/// let model = Sequential::new(vec![Box::new(ReLU::new()), Box::new(Flatten::new(1, -1))]);
/// assert_eq!((&model as &dyn Module).to_string(), "Sequential(\n  (0): ReLU()\n  (1): Flatten(start_dim=1, end_dim=-1)\n)");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Sequential {
    children: Children,
}

impl Sequential {
    /// Children named by their index.
    pub fn new(modules: Vec<Box<dyn Module>>) -> Self {
        Self { children: modules.into_iter().enumerate().map(|(i, m)| (i.to_string(), m)).collect() }
    }

    /// Children with the given names (unique, without dots).
    pub fn named(modules: Vec<(String, Box<dyn Module>)>) -> GraphResult<Self> {
        let mut children = Children::new();
        for (name, module) in modules {
            check_name("Sequential", &children, &name)?;
            children.push((name, module));
        }
        Ok(Self { children })
    }

    /// Appends a child named by its index.
    pub fn push(&mut self, module: Box<dyn Module>) {
        self.children.push((self.children.len().to_string(), module));
    }

    /// The number of children.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// True without children.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Rebuilds a saved `Sequential`.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        Ok(Self { children: record.children })
    }
}

impl Module for Sequential {
    fn type_name(&self) -> &str {
        "Sequential"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        self.children
            .iter()
            .try_fold(input, |x, (name, module)| module.forward(x).map_err(|e| e.within(name)))
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        child_refs(&self.children)
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        child_slot(&mut self.children, name)
    }
}

/// What a [`Graph`] node does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `forward` of the child of this name, on the node's one input.
    Call(String),
    /// A [`Functional`] op of the child of this name (a `FloatFunctional`), on the node's inputs.
    Functional(String, Functional),
    /// `torch.flatten(x, start_dim)` (to the last dimension).
    Flatten(usize),
    /// `F.adaptive_avg_pool2d(x, output_size)`.
    AdaptiveAvgPool2d([usize; 2]),
}

/// One step of a [`Graph`]: its name (the name of its output value), what it does and the names
/// of its inputs (earlier nodes or [`Graph::INPUT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's name; later nodes refer to its output by it.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Its inputs, by name.
    pub inputs: Vec<String>,
}

/// What a [`Graph`] saves besides its children.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GraphConfig {
    type_name: String,
    nodes: Vec<Node>,
    output: String,
}

/// A module whose forward is a small data-flow graph over named children: the form of a
/// hand-written PyTorch `forward` with residual adds, concatenations and branches (ResNet's
/// blocks, MobileNetV2's inverted residuals). It prints, fuses, prepares, converts, saves and
/// loads like any container; its children keep PyTorch's names.
///
/// ```
/// use qgraph::nn::{Conv2d, ReLU};
/// use qgraph::{FloatFunctional, Functional, Graph, Module, Value};
/// use ndarray::ArrayD;
/// // out = relu(conv(x)) + x
/// let mut b = Graph::builder("Block");
/// let x = Graph::INPUT;
/// let y = b.then("conv", Conv2d::new(4, 4, [3, 3]).padding([1, 1]).build()?, x);
/// let y = b.then("relu", ReLU::new(), &y);
/// let out = b.then_functional("skip_add", FloatFunctional::new(), Functional::Add, &[&y, x]);
/// let block = b.build(&out)?;
/// let out = block.forward(Value::from(ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 8, 8]))))?;
/// assert_eq!(out.shape()?, &[1, 4, 8, 8]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Graph {
    type_name: String,
    children: Children,
    nodes: Vec<Node>,
    output: String,
    /// For each node, the inputs by value index (0 is the graph input, i + 1 is node i).
    wiring: Vec<Vec<usize>>,
    /// The value index of the output.
    output_index: usize,
    /// For each value index, the last node that reads it.
    last_use: Vec<usize>,
}

impl Graph {
    /// The name of the graph's input value.
    pub const INPUT: &'static str = "input";

    /// A builder for a graph printed as `type_name` (e.g. `BasicBlock`).
    pub fn builder(type_name: impl Into<String>) -> GraphBuilder {
        GraphBuilder {
            type_name: type_name.into(),
            children: Children::new(),
            nodes: Vec::new(),
            error: None,
        }
    }

    /// The nodes, in execution order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The name of the output node.
    pub fn output(&self) -> &str {
        &self.output
    }

    fn new(type_name: String, children: Children, nodes: Vec<Node>, output: String) -> GraphResult<Self> {
        const CONTEXT: &str = "Graph";
        let mut index = std::collections::HashMap::from([(Self::INPUT.to_string(), 0usize)]);
        let mut wiring = Vec::with_capacity(nodes.len());
        let mut functional_users = std::collections::HashMap::<&str, &str>::new();
        for (i, node) in nodes.iter().enumerate() {
            let arity = match &node.op {
                Op::Call(child) | Op::Functional(child, _) => {
                    if !children.iter().any(|(n, _)| n == child) {
                        return Err(invalid(
                            CONTEXT,
                            "node",
                            &node.name,
                            format!("calls unknown child `{child}`"),
                        ));
                    }
                    if let Op::Functional(_, f) = &node.op {
                        if let Some(first) = functional_users.insert(child, &node.name) {
                            return Err(invalid(
                                CONTEXT,
                                "node",
                                &node.name,
                                format!(
                                    "reuses FloatFunctional `{child}` already used by node `{first}`: one instance \
                                     has one observer, so two call sites would mix their statistics (PyTorch \
                                     silently does); give each call site its own FloatFunctional"
                                ),
                            ));
                        }
                        f.arity()
                    } else {
                        Some(1)
                    }
                }
                Op::Flatten(start) => {
                    if i64::try_from(*start).is_err() {
                        return Err(invalid(CONTEXT, "flatten start_dim", start, "must be at most 2^63 - 1"));
                    }
                    Some(1)
                }
                Op::AdaptiveAvgPool2d(size) => {
                    check_sizes(CONTEXT, "adaptive_avg_pool2d output_size", size, 1)?;
                    Some(1)
                }
            };
            let count_ok = match arity {
                Some(n) => node.inputs.len() == n,
                None => !node.inputs.is_empty(),
            };
            if !count_ok {
                return Err(invalid(
                    CONTEXT,
                    "inputs of node",
                    &node.name,
                    format!("{:?} is the wrong number of inputs", node.inputs),
                ));
            }
            let ids = node
                .inputs
                .iter()
                .map(|name| {
                    index.get(name).copied().ok_or_else(|| {
                        invalid(
                            CONTEXT,
                            "input",
                            name,
                            format!("node `{}` reads a value no earlier node produces", node.name),
                        )
                    })
                })
                .collect::<GraphResult<Vec<_>>>()?;
            if index.insert(node.name.clone(), i + 1).is_some() {
                return Err(invalid(
                    CONTEXT,
                    "node name",
                    &node.name,
                    "node names must be unique and not `input`",
                ));
            }
            wiring.push(ids);
        }
        let out = *index
            .get(&output)
            .ok_or_else(|| invalid(CONTEXT, "output", &output, "names no node (nor the input)"))?;
        let mut last_use = vec![usize::MAX; nodes.len() + 1];
        for (i, ids) in wiring.iter().enumerate() {
            for &id in ids {
                last_use[id] = i;
            }
        }
        last_use[out] = usize::MAX;
        Ok(Self { type_name, children, nodes, output, output_index: out, wiring, last_use })
    }

    /// Rebuilds a saved graph.
    pub fn from_record(mut record: Record<'_>) -> GraphResult<Self> {
        let config: GraphConfig = record.config()?;
        let children = std::mem::take(&mut record.children);
        Self::new(config.type_name, children, config.nodes, config.output)
    }

    fn child(&self, name: &str) -> &dyn Module {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.as_ref())
            .expect("validated at construction")
    }

    fn run_node(&self, node: &Node, mut inputs: Vec<Value>) -> GraphResult<Value> {
        match &node.op {
            Op::Call(child) => {
                self.child(child).forward(inputs.pop().expect("arity checked")).map_err(|e| e.within(child))
            }
            Op::Functional(child, op) => {
                self.child(child).forward_functional(*op, inputs).map_err(|e| e.within(child))
            }
            Op::Flatten(start) => {
                Flatten::new(*start as i64, -1).forward(inputs.pop().expect("arity checked"))
            }
            Op::AdaptiveAvgPool2d(size) => {
                AdaptiveAvgPool2d::new(*size).forward(inputs.pop().expect("arity checked"))
            }
        }
    }
}

impl Module for Graph {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let mut values: Vec<Option<Value>> = vec![None; self.nodes.len() + 1];
        values[0] = Some(input);
        for (i, node) in self.nodes.iter().enumerate() {
            let inputs = self.wiring[i]
                .iter()
                .map(|&id| {
                    if self.last_use[id] == i && self.wiring[i].iter().filter(|&&x| x == id).count() == 1 {
                        values[id].take()
                    } else {
                        values[id].clone()
                    }
                    .expect("inputs are computed before use and kept until their last use")
                })
                .collect();
            values[i + 1] = Some(self.run_node(node, inputs)?);
        }
        Ok(values[self.output_index].take().expect("the output is kept"))
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        child_refs(&self.children)
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        child_slot(&mut self.children, name)
    }

    fn config(&self) -> serde_json::Value {
        let config = GraphConfig {
            type_name: self.type_name.clone(),
            nodes: self.nodes.clone(),
            output: self.output.clone(),
        };
        serde_json::to_value(config).expect("plain data serializes")
    }
}

/// Builds a [`Graph`] node by node; see [`Graph`] for an example. Each method returns the name
/// of the value it produces. Mistakes (a duplicate child name, an unknown input) are reported by
/// [`GraphBuilder::build`].
#[derive(Debug)]
pub struct GraphBuilder {
    type_name: String,
    children: Children,
    nodes: Vec<Node>,
    error: Option<GraphError>,
}

impl GraphBuilder {
    /// Declares a child without calling it yet (to keep PyTorch's child order when a module is
    /// defined before it is first called, e.g. `quant` in torchvision's quantizable models).
    pub fn add(&mut self, name: &str, module: impl Module) -> &mut Self {
        self.add_boxed(name, Box::new(module))
    }

    /// [`add`](GraphBuilder::add) for a boxed module.
    pub fn add_boxed(&mut self, name: &str, module: Box<dyn Module>) -> &mut Self {
        match check_name("Graph", &self.children, name) {
            Ok(()) => self.children.push((name.to_string(), module)),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Calls the declared child `child` on `input`. The node takes the child's name, or
    /// `child#2`, `child#3`, ... when the child is called again (legal in float; `prepare` reports
    /// it, since one observer would see both call sites).
    pub fn call(&mut self, child: &str, input: &str) -> String {
        self.push(child, Op::Call(child.to_string()), vec![input.to_string()])
    }

    /// Adds the child `name` and calls it on `input`.
    pub fn then(&mut self, name: &str, module: impl Module, input: &str) -> String {
        self.add(name, module);
        self.call(name, input)
    }

    /// [`then`](GraphBuilder::then) for a boxed module.
    pub fn then_boxed(&mut self, name: &str, module: Box<dyn Module>, input: &str) -> String {
        self.add_boxed(name, module);
        self.call(name, input)
    }

    /// Adds the `FloatFunctional` child `name` and applies `op` to `inputs`.
    pub fn then_functional(
        &mut self,
        name: &str,
        module: impl Module,
        op: Functional,
        inputs: &[&str],
    ) -> String {
        self.add(name, module);
        self.call_functional(name, op, inputs)
    }

    /// Applies `op` of the declared `FloatFunctional` child `child` to `inputs`. A second call
    /// site of the same child is refused by [`GraphBuilder::build`]: one instance has one observer.
    pub fn call_functional(&mut self, child: &str, op: Functional, inputs: &[&str]) -> String {
        let inputs = inputs.iter().map(|s| s.to_string()).collect();
        self.push(child, Op::Functional(child.to_string(), op), inputs)
    }

    /// A parameterless op (`Op::Flatten`, `Op::AdaptiveAvgPool2d`) named `name` on `input`.
    pub fn op(&mut self, name: &str, op: Op, input: &str) -> String {
        self.push(name, op, vec![input.to_string()])
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<String>) -> String {
        let taken = |n: &str| self.nodes.iter().any(|node| node.name == n);
        let mut node_name = name.to_string();
        let mut k = 2;
        while taken(&node_name) {
            node_name = format!("{name}#{k}");
            k += 1;
        }
        self.nodes.push(Node { name: node_name.clone(), op, inputs });
        node_name
    }

    /// The graph whose result is the value `output`.
    pub fn build(self, output: &str) -> GraphResult<Graph> {
        if let Some(e) = self.error {
            return Err(e);
        }
        Graph::new(self.type_name, self.children, self.nodes, output.to_string())
    }
}
