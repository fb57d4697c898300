//! The training forward and backward passes: the [`Train`] trait, the [`Backprop`] registry
//! and the passes that run children and collect gradients.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};

use ndarray::ArrayD;
use qgraph::{Functional, GraphError, Module, Value};

use crate::fake_quantize::QFakeResult;

/// Parameter gradients by `state_dict` name (`features.0.weight`). A parameter without an entry
/// got no gradient (it is frozen, or not on the path to the loss).
pub type Gradients = BTreeMap<String, ArrayD<f32>>;

/// What a layer's training forward keeps for its backward.
pub type Saved = Box<dyn Any + Send + Sync>;

/// A layer that trains: its training forward and its backward.
///
/// `train_forward` runs the layer as PyTorch runs it in its current mode (`training()`), updating
/// what training updates (running statistics, observers), and returns its output and what its
/// backward needs. `train_backward` takes that and the gradient of the output and returns the
/// gradient of the input, adding the gradients of its parameters with [`BackPass::add_grad`].
/// Containers run their children through the [`Pass`] and [`BackPass`] they are given.
pub trait Train: Module {
    /// The training forward.
    fn train_forward(&mut self, input: Value, pass: &Pass<'_>) -> QFakeResult<(Value, Saved)>;

    /// The backward of the forward that saved `saved`.
    fn train_backward(&self, saved: Saved, grad_output: Value, pass: &mut BackPass<'_>)
    -> QFakeResult<Value>;

    /// The training forward of a [`Functional`] op (`FloatFunctional` and its prepared forms only).
    fn train_forward_functional(
        &mut self,
        op: Functional,
        inputs: Vec<Value>,
        pass: &Pass<'_>,
    ) -> QFakeResult<(Value, Saved)> {
        let _ = (inputs, pass);
        Err(not_functional(self.type_name(), op))
    }

    /// The backward of a [`Functional`] op: one gradient per input.
    fn train_backward_functional(
        &self,
        op: Functional,
        saved: Saved,
        grad_output: Value,
        pass: &mut BackPass<'_>,
    ) -> QFakeResult<Vec<Value>> {
        let _ = (saved, grad_output, pass);
        Err(not_functional(self.type_name(), op))
    }
}

fn not_functional(type_name: &str, op: Functional) -> GraphError {
    crate::fake_quantize::invalid(
        "train",
        "op",
        op.name(),
        format!("{type_name} is not a FloatFunctional; call it through forward"),
    )
}

type ForwardFn = fn(&mut dyn Module, Value, &Pass<'_>) -> QFakeResult<(Value, Saved)>;
type BackwardFn = fn(&dyn Module, Saved, Value, &mut BackPass<'_>) -> QFakeResult<Value>;
type ForwardFunctionalFn =
    fn(&mut dyn Module, Functional, Vec<Value>, &Pass<'_>) -> QFakeResult<(Value, Saved)>;
type BackwardFunctionalFn =
    fn(&dyn Module, Functional, Saved, Value, &mut BackPass<'_>) -> QFakeResult<Vec<Value>>;

/// The [`Train`] methods of one module type, reached through `dyn Module`.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) forward: ForwardFn,
    pub(crate) backward: BackwardFn,
    pub(crate) forward_functional: ForwardFunctionalFn,
    pub(crate) backward_functional: BackwardFunctionalFn,
}

fn typed_mut<M: Train>(module: &mut dyn Module) -> &mut M {
    module.downcast_mut::<M>().expect("entries are looked up by the module's TypeId")
}

fn typed<M: Train>(module: &dyn Module) -> &M {
    module.downcast_ref::<M>().expect("entries are looked up by the module's TypeId")
}

impl Entry {
    fn of<M: Train>() -> Self {
        Self {
            forward: |m, x, pass| typed_mut::<M>(m).train_forward(x, pass),
            backward: |m, saved, g, pass| typed::<M>(m).train_backward(saved, g, pass),
            forward_functional: |m, op, xs, pass| typed_mut::<M>(m).train_forward_functional(op, xs, pass),
            backward_functional: |m, op, saved, g, pass| {
                typed::<M>(m).train_backward_functional(op, saved, g, pass)
            },
        }
    }
}

/// The layers that train, by Rust type (see the [module documentation](crate::train)).
#[derive(Clone)]
pub struct Backprop {
    entries: HashMap<TypeId, Entry>,
}

impl std::fmt::Debug for Backprop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backprop").field("types", &self.entries.len()).finish()
    }
}

impl Backprop {
    /// No layer trains.
    pub fn empty() -> Self {
        Self { entries: HashMap::new() }
    }

    /// Modules of type `M` train with their [`Train`] implementation.
    pub fn register<M: Train>(&mut self) -> &mut Self {
        self.entries.insert(TypeId::of::<M>(), Entry::of::<M>());
        self
    }

    /// True if modules of `module`'s type train.
    pub fn knows(&self, module: &dyn Module) -> bool {
        self.entries.contains_key(&module.as_any().type_id())
    }

    pub(crate) fn entry(&self, module: &dyn Module, path: &str) -> QFakeResult<Entry> {
        self.entries.get(&module.as_any().type_id()).copied().ok_or_else(|| GraphError::Workflow {
            step: "train",
            reason: format!(
                "`{}` is a {} ({}), which has no training forward and backward; implement qfake::train::Train for \
                 it and register it with Backprop::register",
                if path.is_empty() { "the model" } else { path },
                module.type_name(),
                std::any::type_name_of_val(module.as_any()),
            ),
        })
    }

    /// The training forward of `model` on `input`: its output and the tape its backward needs.
    /// Put the model in training mode first ([`qgraph::train`]) for PyTorch's `model.train()`
    /// behavior (batch statistics, dropout).
    pub fn forward(&self, model: &mut dyn Module, input: Value) -> QFakeResult<(Value, Tape)> {
        let pass = Pass { backprop: self, path: String::new() };
        let (out, saved) = pass.run(model, input)?;
        Ok((out, Tape { saved }))
    }

    /// The backward of the forward that made `tape`, for `grad_output` (the gradient of the loss
    /// with respect to the output): the gradient of the input and of every parameter.
    pub fn backward(
        &self,
        model: &dyn Module,
        tape: Tape,
        grad_output: Value,
    ) -> QFakeResult<(Value, Gradients)> {
        let mut grads = Gradients::new();
        let mut pass = BackPass { backprop: self, path: String::new(), grads: &mut grads };
        let grad_input = pass.run(model, tape.saved, grad_output)?;
        Ok((grad_input, grads))
    }
}

/// What [`Backprop::forward`] keeps for [`Backprop::backward`].
pub struct Tape {
    saved: Saved,
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tape")
    }
}

/// The training forward in progress: runs children by their [`Train`] implementations.
pub struct Pass<'a> {
    pub(crate) backprop: &'a Backprop,
    path: String,
}

impl Pass<'_> {
    /// The dotted path of the module running.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn at(&self, name: &str) -> Pass<'_> {
        Pass { backprop: self.backprop, path: join(&self.path, name) }
    }

    pub(crate) fn run(&self, module: &mut dyn Module, input: Value) -> QFakeResult<(Value, Saved)> {
        let entry = self.backprop.entry(module, &self.path)?;
        (entry.forward)(module, input, self).map_err(|e| e.within_path(&self.path))
    }

    /// Runs the child `name` of `parent` on `input`.
    pub fn child(&self, parent: &mut dyn Module, name: &str, input: Value) -> QFakeResult<(Value, Saved)> {
        let pass = self.at(name);
        let parent_type = parent.type_name().to_string();
        let child = parent.child_slot(name).ok_or_else(|| no_child(&parent_type, &pass.path))?;
        pass.run(child.as_mut(), input)
    }

    /// Runs a [`Functional`] op of the child `name` of `parent`.
    pub fn child_functional(
        &self,
        parent: &mut dyn Module,
        name: &str,
        op: Functional,
        inputs: Vec<Value>,
    ) -> QFakeResult<(Value, Saved)> {
        let pass = self.at(name);
        let parent_type = parent.type_name().to_string();
        let child = parent.child_slot(name).ok_or_else(|| no_child(&parent_type, &pass.path))?;
        let entry = self.backprop.entry(child.as_ref(), &pass.path)?;
        (entry.forward_functional)(child.as_mut(), op, inputs, &pass).map_err(|e| e.within_path(&pass.path))
    }
}

/// The backward pass in progress: collects parameter gradients by name.
pub struct BackPass<'a> {
    pub(crate) backprop: &'a Backprop,
    path: String,
    grads: &'a mut Gradients,
}

impl BackPass<'_> {
    /// The dotted path of the module running.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Adds `grad` to the gradient of the parameter `name` of the module running (`weight`,
    /// `bn.bias`): a parameter used twice gets the sum, as autograd accumulates.
    pub fn add_grad(&mut self, name: &str, grad: ArrayD<f32>) {
        let key = join(&self.path, name);
        match self.grads.get_mut(&key) {
            Some(total) => *total += &grad,
            None => {
                self.grads.insert(key, grad);
            }
        }
    }

    fn at(&mut self, name: &str) -> BackPass<'_> {
        BackPass { backprop: self.backprop, path: join(&self.path, name), grads: self.grads }
    }

    pub(crate) fn run(&mut self, module: &dyn Module, saved: Saved, grad: Value) -> QFakeResult<Value> {
        let entry = self.backprop.entry(module, &self.path)?;
        let path = self.path.clone();
        (entry.backward)(module, saved, grad, self).map_err(|e| e.within_path(&path))
    }

    /// The backward of the child `name` of `parent`.
    pub fn child(
        &mut self,
        parent: &dyn Module,
        name: &str,
        saved: Saved,
        grad: Value,
    ) -> QFakeResult<Value> {
        let child = child_ref(parent, name, &self.path)?;
        self.at(name).run(child, saved, grad)
    }

    /// The backward of a [`Functional`] op of the child `name` of `parent`.
    pub fn child_functional(
        &mut self,
        parent: &dyn Module,
        name: &str,
        op: Functional,
        saved: Saved,
        grad: Value,
    ) -> QFakeResult<Vec<Value>> {
        let child = child_ref(parent, name, &self.path)?;
        let mut pass = self.at(name);
        let entry = pass.backprop.entry(child, &pass.path)?;
        let path = pass.path.clone();
        (entry.backward_functional)(child, op, saved, grad, &mut pass).map_err(|e| e.within_path(&path))
    }
}

fn child_ref<'m>(parent: &'m dyn Module, name: &str, path: &str) -> QFakeResult<&'m dyn Module> {
    parent
        .children()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| m)
        .ok_or_else(|| no_child(parent.type_name(), &join(path, name)))
}

fn no_child(parent_type: &str, path: &str) -> GraphError {
    GraphError::Workflow {
        step: "train",
        reason: format!(
            "{parent_type} has no child `{path}`; the model changed between forward and backward"
        ),
    }
}

/// `a.b`, or `b` when `a` is empty.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// `saved` as the `T` a training forward saved (an error, not a panic, if a tape from another
/// model is given).
pub fn unsave<T: Any>(saved: Saved, context: &'static str) -> QFakeResult<Box<T>> {
    saved.downcast::<T>().map_err(|_| GraphError::Workflow {
        step: "train",
        reason: format!(
            "{context}: the tape is not from this module's forward; pass the tape forward returned"
        ),
    })
}
