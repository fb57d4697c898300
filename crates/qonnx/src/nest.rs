//! Names the items as PyTorch names modules and builds the module tree: items sharing a scope
//! prefix (`layer1.0`) become a nested [`Graph`] child, so every module sits at its PyTorch path
//! and its parameters under PyTorch's `state_dict` names (`layer1.0.conv1.weight`).

use std::collections::{HashMap, HashSet};

use qgraph::{Graph, GraphBuilder, Op};

use crate::error::OnnxError;
use crate::items::{Item, Kind, Role};

/// Gives every item its module path (components, outermost first).
pub(crate) fn name_items(items: &[Item]) -> Vec<Vec<String>> {
    let mut per_scope: HashMap<&[String], usize> = HashMap::new();
    for item in items.iter().filter(|i| i.role == Role::Op) {
        *per_scope.entry(item.scope.as_slice()).or_default() += 1;
    }
    let mut paths: Vec<Vec<String>> = vec![Vec::new(); items.len()];
    let mut taken: HashSet<Vec<String>> = HashSet::new();
    let unique = |taken: &mut HashSet<Vec<String>>, mut path: Vec<String>| -> Vec<String> {
        let last = path.pop().unwrap_or_else(|| "_".into());
        let mut candidate = last.clone();
        let mut k = 1;
        loop {
            path.push(candidate.clone());
            if !taken.contains(&path) {
                taken.insert(path.clone());
                return path;
            }
            path.pop();
            candidate = format!("{last}_{k}");
            k += 1;
        }
    };
    // Operators: their scope if alone in it, else scope.base.
    let mut own: Vec<bool> = vec![false; items.len()];
    for (i, item) in items.iter().enumerate() {
        if item.role != Role::Op {
            continue;
        }
        if !item.scope.is_empty() && per_scope[item.scope.as_slice()] == 1 && !taken.contains(&item.scope) {
            own[i] = true;
            paths[i] = item.scope.clone();
            taken.insert(item.scope.clone());
        }
    }
    // A module path that also holds other modules is a container: its operator moves inside.
    let prefixes: HashSet<Vec<String>> = items
        .iter()
        .filter(|i| i.role == Role::Op)
        .flat_map(|i| (1..i.scope.len()).map(move |n| i.scope[..n].to_vec()))
        .collect();
    for (i, item) in items.iter().enumerate() {
        if own[i] && prefixes.contains(&paths[i]) {
            own[i] = false;
            taken.remove(&paths[i]);
            paths[i].clear();
        }
        let _ = item;
    }
    for (i, item) in items.iter().enumerate() {
        if item.role == Role::Op && !own[i] {
            let mut p = item.scope.clone();
            p.push(item.base.clone());
            paths[i] = unique(&mut taken, p);
        }
    }
    // Stubs, tuple elements and boundaries: siblings of what they serve.
    for (i, item) in items.iter().enumerate() {
        match item.role {
            Role::Op => {}
            Role::Boundary => paths[i] = unique(&mut taken, vec![item.base.clone()]),
            Role::Stub { next_to } => {
                let mut target = next_to.min(items.len() - 1);
                let mut guard = 0;
                while !matches!(items[target].role, Role::Op) && guard < items.len() {
                    match items[target].role {
                        Role::Stub { next_to } if next_to != target => target = next_to.min(items.len() - 1),
                        _ => break,
                    }
                    guard += 1;
                }
                let mut p = if paths[target].is_empty() {
                    items[target].scope.clone()
                } else {
                    paths[target].clone()
                };
                let last = p.pop().unwrap_or_else(|| items[target].base.clone());
                p.push(format!("{last}_{}", item.base));
                paths[i] = unique(&mut taken, p);
            }
        }
    }
    paths
}

/// Everything the tree builder needs about the items.
pub(crate) struct Tree<'a> {
    items: Vec<Option<Item>>,
    paths: Vec<Vec<String>>,
    /// Value id -> the items reading it.
    readers: HashMap<String, Vec<usize>>,
    /// Graph outputs (value ids).
    graph_outputs: HashSet<&'a String>,
    /// PyTorch's class of each module path, where the exporter recorded it.
    classes: HashMap<Vec<String>, String>,
}

impl<'a> Tree<'a> {
    pub(crate) fn new(
        items: Vec<Item>,
        paths: Vec<Vec<String>>,
        outputs: &'a [String],
        classes: HashMap<Vec<String>, String>,
    ) -> Self {
        let mut readers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            for input in &item.inputs {
                readers.entry(input.clone()).or_default().push(i);
            }
        }
        let graph_outputs = outputs.iter().collect();
        Self { items: items.into_iter().map(Some).collect(), paths, readers, graph_outputs, classes }
    }

    /// Builds the graph of the items `members` at `depth`, reading `inputs` (value ids, bound to
    /// `input_names`) and returning `outputs`.
    pub(crate) fn build(
        &mut self,
        type_name: &str,
        members: &[usize],
        depth: usize,
        inputs: &[String],
        input_names: &[String],
        outputs: &[String],
    ) -> Result<Graph, OnnxError> {
        let mut b: GraphBuilder = Graph::builder(type_name);
        let names: Vec<&str> = input_names.iter().map(String::as_str).collect();
        b.inputs(&names);
        let mut env: HashMap<String, String> =
            inputs.iter().cloned().zip(input_names.iter().cloned()).collect();
        // Where each group (the members under one first component) ends, to find it in one pass.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (k, &i) in members.iter().enumerate() {
            if self.paths[i].len() > depth + 1 {
                last.insert(self.paths[i][depth].as_str(), k);
            }
        }
        let last: HashMap<String, usize> = last.into_iter().map(|(name, k)| (name.to_string(), k)).collect();
        let wanted: HashSet<&String> = outputs.iter().collect();
        let mut k = 0;
        while k < members.len() {
            let i = members[k];
            let path = self.paths[i].clone();
            if path.len() == depth + 1 {
                self.leaf(&mut b, &mut env, i, &path[depth])?;
                k += 1;
                continue;
            }
            // The members under path[depth]: a contiguous run, as exporters write module scopes.
            let head = &path[..=depth];
            let end = last[&path[depth]] + 1;
            if members[k..end].iter().any(|&j| !self.paths[j].starts_with(head)) {
                return Err(OnnxError::Unsupported {
                    what: format!("module `{}` whose operators are interleaved with others'", head.join(".")),
                    fix: "export with the TorchScript or torch.export exporter, which keep module scopes contiguous"
                        .into(),
                });
            }
            let group: Vec<usize> = members[k..end].to_vec();
            let group_set: HashSet<usize> = group.iter().copied().collect();
            let produced: HashSet<&str> =
                group.iter().map(|&j| self.items[j].as_ref().expect("unbuilt").output.as_str()).collect();
            let mut g_inputs: Vec<String> = Vec::new();
            let mut seen: HashSet<&str> = HashSet::new();
            for &j in &group {
                for input in &self.items[j].as_ref().expect("unbuilt").inputs {
                    if !produced.contains(input.as_str()) && seen.insert(input.as_str()) {
                        g_inputs.push(input.clone());
                    }
                }
            }
            let mut g_outputs: Vec<String> = Vec::new();
            for &j in &group {
                let out = &self.items[j].as_ref().expect("unbuilt").output;
                let read_outside =
                    self.readers.get(out).is_some_and(|r| r.iter().any(|x| !group_set.contains(x)))
                        || self.graph_outputs.contains(out)
                        || wanted.contains(out);
                if read_outside {
                    g_outputs.push(out.clone());
                }
            }
            k = end;
            if g_outputs.is_empty() {
                continue;
            }
            let child_names: Vec<String> = if g_inputs.len() == 1 {
                vec![Graph::INPUT.to_string()]
            } else {
                (0..g_inputs.len()).map(|n| format!("input#{n}")).collect()
            };
            let name = &path[depth];
            let class = self.classes.get(head).cloned().unwrap_or_else(|| "Module".into());
            let child = self.build(&class, &group, depth + 1, &g_inputs, &child_names, &g_outputs)?;
            b.add(name, child);
            let args: Vec<&str> = g_inputs
                .iter()
                .map(|v| env.get(v).map(String::as_str).ok_or_else(|| missing(v, name)))
                .collect::<Result<_, _>>()?;
            let called = b.call_many(name, &args);
            if g_outputs.len() == 1 {
                env.insert(g_outputs[0].clone(), called);
            } else {
                for (n, out) in g_outputs.iter().enumerate() {
                    let item = b.get_item(&format!("{name}[{n}]"), &called, n);
                    env.insert(out.clone(), item);
                }
            }
        }
        let outs: Vec<&str> = outputs
            .iter()
            .map(|v| env.get(v).map(String::as_str).ok_or_else(|| missing(v, type_name)))
            .collect::<Result<_, _>>()?;
        Ok(if outs.len() == 1 { b.build(outs[0])? } else { b.build_many(&outs)? })
    }

    fn leaf(
        &mut self,
        b: &mut GraphBuilder,
        env: &mut HashMap<String, String>,
        i: usize,
        name: &str,
    ) -> Result<(), OnnxError> {
        let item = self.items[i].take().expect("each item is built once");
        let args: Vec<&str> = item
            .inputs
            .iter()
            .map(|v| env.get(v).map(String::as_str).ok_or_else(|| missing(v, &item.node)))
            .collect::<Result<_, _>>()?;
        let out = match item.kind {
            Kind::Module(m) => {
                b.add_boxed(name, m);
                b.call_many(name, &args)
            }
            Kind::Functional(f) => {
                b.add(name, qgraph::FloatFunctional::new());
                b.call_functional(name, f, &args)
            }
            Kind::GetItem(index) => b.op(name, Op::GetItem(index), args[0]),
        };
        env.insert(item.output, out);
        Ok(())
    }
}

fn missing(value: &str, at: &str) -> OnnxError {
    OnnxError::Undefined { value: value.to_string(), node: at.to_string() }
}
