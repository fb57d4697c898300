//! Containers: [`Sequential`] (children run in order) and [`Graph`] (named nodes with named
//! inputs, for residual adds, concatenations and branches, with one or several graph inputs and
//! outputs).

use serde::{Deserialize, Serialize};

use crate::module::Functional;
use crate::nn::{AdaptiveAvgPool2d, Flatten, Permute, Squeeze, check_sizes};
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
    /// `forward` of the child of this name, on the node's input, or on the tuple of its inputs
    /// when it has several (a module whose `forward` takes several arguments).
    Call(String),
    /// A [`Functional`] op of the child of this name (a `FloatFunctional`), on the node's inputs.
    Functional(String, Functional),
    /// `torch.flatten(x, start_dim)` (to the last dimension).
    Flatten(usize),
    /// `F.adaptive_avg_pool2d(x, output_size)`.
    AdaptiveAvgPool2d([usize; 2]),
    /// `(a, b, ...)`: the tuple of the node's inputs.
    Tuple,
    /// `x[index]`: an element of the node's one input, a tuple.
    GetItem(usize),
    /// `x.squeeze(dim)` on a float value ([`Squeeze`]).
    Squeeze(i64),
    /// `x.permute(*dims)` on a float value ([`Permute`]).
    Permute(Vec<i64>),
}

/// One step of a [`Graph`]: its name (the name of its output value), what it does and the names
/// of its inputs (earlier nodes or the graph's inputs, [`Graph::INPUT`] unless declared with
/// [`GraphBuilder::inputs`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's name; later nodes refer to its output by it.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Its inputs, by name.
    pub inputs: Vec<String>,
}

/// What a [`Graph`] saves besides its children. A graph with one input named [`Graph::INPUT`]
/// and one output saves `type_name`, `nodes` and `output` only; `inputs` and `outputs` (in place
/// of `output`) appear when it has others.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GraphConfig {
    type_name: String,
    nodes: Vec<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inputs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outputs: Option<Vec<String>>,
}

/// Where a [`Graph`]'s result comes from: one value, or a tuple of values
/// ([`GraphBuilder::build_many`]).
#[derive(Debug, Clone, PartialEq)]
enum Outputs {
    One(String),
    Tuple(Vec<String>),
}

impl Outputs {
    fn names(&self) -> &[String] {
        match self {
            Outputs::One(name) => std::slice::from_ref(name),
            Outputs::Tuple(names) => names,
        }
    }
}

/// A module whose forward is a small data-flow graph over named children: the form of a
/// hand-written PyTorch `forward` with residual adds, concatenations and branches (ResNet's
/// blocks, MobileNetV2's inverted residuals). It prints, fuses, prepares, converts, saves and
/// loads like any container; its children keep PyTorch's names.
///
/// A graph has one input, [`Graph::INPUT`], unless [`GraphBuilder::inputs`] declares others: with
/// several, `forward` takes a [`Value::Tuple`] of one value per input. It returns one value
/// ([`GraphBuilder::build`]) or a tuple ([`GraphBuilder::build_many`]); [`Op::Tuple`] and
/// [`Op::GetItem`] pack and unpack tuples inside it, and [`GraphBuilder::call_many`] calls a
/// child on several values.
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
    inputs: Vec<String>,
    outputs: Outputs,
    /// For each node, the inputs by value index (graph input k is k, node i is `inputs.len() + i`).
    wiring: Vec<Vec<usize>>,
    /// The value index of each output.
    output_indices: Vec<usize>,
    /// For each value index, the last node that reads it.
    last_use: Vec<usize>,
}

impl Graph {
    /// The name of the graph's input value (unless [`GraphBuilder::inputs`] names others).
    pub const INPUT: &'static str = "input";

    /// A builder for a graph printed as `type_name` (e.g. `BasicBlock`).
    pub fn builder(type_name: impl Into<String>) -> GraphBuilder {
        GraphBuilder {
            type_name: type_name.into(),
            children: Children::new(),
            nodes: Vec::new(),
            inputs: None,
            error: None,
        }
    }

    /// The nodes, in execution order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The names of the graph's inputs: `[Graph::INPUT]`, or those [`GraphBuilder::inputs`]
    /// declared.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// The names of the values the graph returns: one, or the elements of the tuple it returns
    /// (built with [`GraphBuilder::build_many`]).
    pub fn outputs(&self) -> &[String] {
        self.outputs.names()
    }

    fn new(
        type_name: String,
        children: Children,
        nodes: Vec<Node>,
        inputs: Vec<String>,
        outputs: Outputs,
    ) -> GraphResult<Self> {
        const CONTEXT: &str = "Graph";
        if inputs.is_empty() {
            return Err(invalid(CONTEXT, "inputs", &inputs, "a graph has at least one input"));
        }
        let mut index = std::collections::HashMap::new();
        for (k, name) in inputs.iter().enumerate() {
            if name.is_empty() || index.insert(name.clone(), k).is_some() {
                return Err(invalid(CONTEXT, "input name", name, "input names are non-empty and unique"));
            }
        }
        let first_node = inputs.len();
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
                        None
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
                Op::Tuple => None,
                Op::GetItem(_) | Op::Squeeze(_) => Some(1),
                Op::Permute(dims) => {
                    Permute::new(dims)?;
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
            if index.insert(node.name.clone(), first_node + i).is_some() {
                return Err(invalid(
                    CONTEXT,
                    "node name",
                    &node.name,
                    format!("node names must be unique and differ from the graph's inputs {inputs:?}"),
                ));
            }
            wiring.push(ids);
        }
        let output_indices = outputs
            .names()
            .iter()
            .map(|name| {
                index.get(name).copied().ok_or_else(|| {
                    invalid(
                        CONTEXT,
                        "output",
                        name,
                        format!("names no node (nor one of the inputs {inputs:?})"),
                    )
                })
            })
            .collect::<GraphResult<Vec<_>>>()?;
        let mut last_use = vec![usize::MAX; first_node + nodes.len()];
        for (i, ids) in wiring.iter().enumerate() {
            for &id in ids {
                last_use[id] = i;
            }
        }
        for &out in &output_indices {
            last_use[out] = usize::MAX;
        }
        Ok(Self { type_name, children, nodes, inputs, outputs, output_indices, wiring, last_use })
    }

    /// Rebuilds a saved graph.
    pub fn from_record(mut record: Record<'_>) -> GraphResult<Self> {
        let config: GraphConfig = record.config()?;
        let children = std::mem::take(&mut record.children);
        let inputs = config.inputs.unwrap_or_else(|| vec![Self::INPUT.to_string()]);
        let outputs = match (config.output, config.outputs) {
            (Some(output), None) => Outputs::One(output),
            (None, Some(outputs)) => Outputs::Tuple(outputs),
            _ => {
                return Err(record
                    .tensors
                    .mismatch("a graph saves either `output` or `outputs`; re-save the model".to_string()));
            }
        };
        Self::new(config.type_name, children, config.nodes, inputs, outputs)
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
                let input = if inputs.len() == 1 {
                    inputs.pop().expect("arity checked")
                } else {
                    Value::Tuple(inputs)
                };
                self.child(child).forward(input).map_err(|e| e.within(child))
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
            Op::Squeeze(dim) => Squeeze::new(*dim).forward(inputs.pop().expect("arity checked")),
            Op::Permute(dims) => Permute::new(dims)?.forward(inputs.pop().expect("arity checked")),
            Op::Tuple => Ok(Value::Tuple(inputs)),
            Op::GetItem(index) => {
                let items = inputs.pop().expect("arity checked").into_tuple(&self.type_name)?;
                let len = items.len();
                items.into_iter().nth(*index).ok_or_else(|| {
                    invalid(
                        "Graph",
                        "GetItem index",
                        index,
                        format!("node `{}` reads a tuple of {len} values; index it below {len}", node.name),
                    )
                })
            }
        }
    }

    /// The values of the graph's inputs, in order: `input` itself for a graph with one input,
    /// else the elements of the tuple `input`, which must have one per input.
    fn bind_inputs(&self, input: Value) -> GraphResult<Vec<Value>> {
        if self.inputs.len() == 1 {
            return Ok(vec![input]);
        }
        let expected = format!("a tuple of {} values ({})", self.inputs.len(), self.inputs.join(", "));
        let fix = "pass a Value::Tuple with one value per graph input, in order";
        match input {
            Value::Tuple(items) if items.len() == self.inputs.len() => Ok(items),
            other => Err(other.unsupported(&self.type_name, &expected, fix)),
        }
    }
}

impl Module for Graph {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let first_node = self.inputs.len();
        let mut values: Vec<Option<Value>> = vec![None; first_node + self.nodes.len()];
        for (slot, value) in values.iter_mut().zip(self.bind_inputs(input)?) {
            *slot = Some(value);
        }
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
            values[first_node + i] = Some(self.run_node(node, inputs)?);
        }
        let mut take = |k: usize| {
            let id = self.output_indices[k];
            let again = self.output_indices[k + 1..].contains(&id);
            if again { values[id].clone() } else { values[id].take() }.expect("the outputs are kept")
        };
        Ok(match &self.outputs {
            Outputs::One(_) => take(0),
            Outputs::Tuple(names) => Value::Tuple((0..names.len()).map(take).collect()),
        })
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        child_refs(&self.children)
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        child_slot(&mut self.children, name)
    }

    fn config(&self) -> serde_json::Value {
        let default_input = self.inputs.len() == 1 && self.inputs[0] == Self::INPUT;
        let (output, outputs) = match &self.outputs {
            Outputs::One(name) => (Some(name.clone()), None),
            Outputs::Tuple(names) => (None, Some(names.clone())),
        };
        let config = GraphConfig {
            type_name: self.type_name.clone(),
            nodes: self.nodes.clone(),
            inputs: (!default_input).then(|| self.inputs.clone()),
            output,
            outputs,
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
    inputs: Option<Vec<String>>,
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

    /// Calls the declared child `child` on the tuple of `inputs` (a module whose `forward` takes
    /// several arguments; with one input this is [`call`](GraphBuilder::call)).
    pub fn call_many(&mut self, child: &str, inputs: &[&str]) -> String {
        let inputs = inputs.iter().map(|s| s.to_string()).collect();
        self.push(child, Op::Call(child.to_string()), inputs)
    }

    /// Names the graph's inputs (by default one, [`Graph::INPUT`]) and returns the names, to
    /// wire nodes to. A graph with several inputs takes a [`Value::Tuple`] with one value per
    /// input, in this order.
    pub fn inputs(&mut self, names: &[&str]) -> Vec<String> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        self.inputs = Some(names.clone());
        names
    }

    /// The tuple `(inputs...)`, as a node named `name`.
    pub fn tuple(&mut self, name: &str, inputs: &[&str]) -> String {
        let inputs = inputs.iter().map(|s| s.to_string()).collect();
        self.push(name, Op::Tuple, inputs)
    }

    /// `input[index]` of the tuple `input`, as a node named `name`.
    pub fn get_item(&mut self, name: &str, input: &str, index: usize) -> String {
        self.push(name, Op::GetItem(index), vec![input.to_string()])
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

    /// A parameterless op (`Op::Flatten`, `Op::AdaptiveAvgPool2d`, `Op::GetItem`, `Op::Squeeze`,
    /// `Op::Permute`) named `name` on `input`.
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
        self.finish(Outputs::One(output.to_string()))
    }

    /// The graph whose result is the tuple of the values `outputs` (a `forward` that returns
    /// `(a, b, ...)`).
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use qgraph::{FloatFunctional, Functional, Graph, Module, Value};
    /// // forward(x, y) returns (x + y, x)
    /// let mut b = Graph::builder("Pair");
    /// let xy = b.inputs(&["x", "y"]);
    /// let sum = b.then_functional("add", FloatFunctional::new(), Functional::Add, &[&xy[0], &xy[1]]);
    /// let graph = b.build_many(&[&sum, &xy[0]])?;
    /// let ones = Value::from(ArrayD::<f32>::ones(IxDyn(&[2])));
    /// let out = graph.forward(Value::Tuple(vec![ones.clone(), ones.clone()]))?.into_tuple("Pair")?;
    /// assert_eq!(out[0].to_float()?, ArrayD::from_elem(IxDyn(&[2]), 2.0));
    /// assert_eq!(out[1], ones);
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    pub fn build_many(self, outputs: &[&str]) -> GraphResult<Graph> {
        self.finish(Outputs::Tuple(outputs.iter().map(|s| s.to_string()).collect()))
    }

    fn finish(self, outputs: Outputs) -> GraphResult<Graph> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let inputs = self.inputs.unwrap_or_else(|| vec![Graph::INPUT.to_string()]);
        Graph::new(self.type_name, self.children, self.nodes, inputs, outputs)
    }
}
