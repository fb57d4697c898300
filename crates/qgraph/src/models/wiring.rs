//! [`Wiring`]: a [`Graph`] given as its children in declaration order plus its nodes, for
//! blocks whose children are declared in an order other than the one their forward first uses
//! them in (torchvision's `QuantizableBottleneck` declares `skip_add_relu` before `relu1`).

use std::collections::BTreeMap;

use crate::record::{Record, Tensors};
use crate::{Functional, Graph, GraphResult, Module, Node, Op};

/// Children (in printing order) and nodes (in execution order) of a [`Graph`] under construction.
pub(crate) struct Wiring {
    type_name: String,
    children: Vec<(String, Box<dyn Module>)>,
    nodes: Vec<Node>,
}

impl Wiring {
    pub(crate) fn new(type_name: &str) -> Self {
        Self { type_name: type_name.to_string(), children: Vec::new(), nodes: Vec::new() }
    }

    /// Declares the child `name`.
    pub(crate) fn add(&mut self, name: &str, module: impl Module) {
        self.children.push((name.to_string(), Box::new(module)));
    }

    fn push(&mut self, name: &str, op: Op, inputs: &[&str]) -> String {
        let inputs = inputs.iter().map(|s| s.to_string()).collect();
        self.nodes.push(Node { name: name.to_string(), op, inputs });
        name.to_string()
    }

    /// Calls the declared child `child` on `input` (each child is called once).
    pub(crate) fn call(&mut self, child: &str, input: &str) -> String {
        self.push(child, Op::Call(child.to_string()), &[input])
    }

    /// Applies `op` of the declared `FloatFunctional` `child` to `inputs`.
    pub(crate) fn functional(&mut self, child: &str, op: Functional, inputs: &[&str]) -> String {
        self.push(child, Op::Functional(child.to_string(), op), inputs)
    }

    /// The graph with output `output`; [`Graph`] validates the wiring.
    pub(crate) fn build(self, output: &str) -> GraphResult<Graph> {
        let config = serde_json::json!({
            "type_name": self.type_name,
            "nodes": self.nodes,
            "output": output,
        });
        Graph::from_record(Record {
            path: String::new(),
            config,
            tensors: Tensors::new(self.type_name.clone(), BTreeMap::new()),
            children: self.children,
        })
    }
}
