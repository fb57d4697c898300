//! The [`Module`] trait and the operations on a tree of named modules: lookup by dotted path,
//! in-place replacement, state dicts, train/eval, and PyTorch's printout.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use ndarray::{ArrayD, ArrayViewD};

use crate::{GraphError, GraphResult, PerTensor, Value};

/// What `convert` needs from a module's `activation_post_process`: an observer (`workflow::ObserverModule`) after
/// calibration, or a fake quantizer after quantization-aware training. A module that is one
/// returns itself from [`Module::as_post_process`].
pub trait ActivationPostProcess {
    /// The output's quantization parameters (PyTorch's `calculate_qparams`).
    fn activation_qparams(&self) -> GraphResult<PerTensor>;

    /// How many outputs it has seen; `convert` refuses one that saw none.
    fn calls(&self) -> usize;
}

/// A tensor a module saves, borrowed from it.
#[derive(Debug, Clone)]
pub enum TensorView<'a> {
    /// f32 (float parameters, biases).
    F32(ArrayViewD<'a, f32>),
    /// i8 (quantized weights).
    I8(ArrayViewD<'a, i8>),
    /// f64 (scales).
    F64(ArrayViewD<'a, f64>),
    /// i64 (zero points).
    I64(ArrayViewD<'a, i64>),
    /// u8 (packed embedding rows).
    U8(ArrayViewD<'a, u8>),
}

/// An op of `FloatFunctional` / `QFunctional`: the calls a module makes on one instance
/// (`self.skip_add.add(a, b)`) rather than through `forward`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Functional {
    /// `add(a, b)`.
    Add,
    /// `add_relu(a, b)`.
    AddRelu,
    /// `mul(a, b)`.
    Mul,
    /// `add_scalar(a, c)` (not observed, as in PyTorch).
    AddScalar(f64),
    /// `mul_scalar(a, c)` (not observed, as in PyTorch).
    MulScalar(f64),
    /// `cat(inputs, dim)`.
    Cat(usize),
}

impl Functional {
    /// PyTorch's method name.
    pub fn name(&self) -> &'static str {
        match self {
            Functional::Add => "add",
            Functional::AddRelu => "add_relu",
            Functional::Mul => "mul",
            Functional::AddScalar(_) => "add_scalar",
            Functional::MulScalar(_) => "mul_scalar",
            Functional::Cat(_) => "cat",
        }
    }

    /// True if the op's output is observed (PyTorch skips `add_scalar` and `mul_scalar`, whose
    /// quantized versions pick their own output parameters).
    pub fn is_observed(&self) -> bool {
        !matches!(self, Functional::AddScalar(_) | Functional::MulScalar(_))
    }

    /// How many inputs the op takes (`None`: one or more, for `cat`).
    pub fn arity(&self) -> Option<usize> {
        match self {
            Functional::Add | Functional::AddRelu | Functional::Mul => Some(2),
            Functional::AddScalar(_) | Functional::MulScalar(_) => Some(1),
            Functional::Cat(_) => None,
        }
    }
}

/// A node of the model tree: PyTorch's `nn.Module` for inference.
///
/// A module runs [`forward`](Module::forward) on a [`Value`] (float or quantized), has named
/// children (so that every module is reachable by its dotted path and `fuse_modules`, `prepare`
/// and `convert` can replace one in place), and prints like PyTorch. The workflow functions find
/// module types by their Rust type and [`type_name`](Module::type_name) in
/// [`crate::mappings::Mappings`], files by [`saved_type`](Module::saved_type) in
/// [`crate::io::Loaders`], and downcast with [`ModuleAny`].
pub trait Module: ModuleAny + fmt::Debug + Send + Sync {
    /// PyTorch's class name, e.g. `Conv2d`, `ConvReLU2d`, `QuantizedConv2d`.
    fn type_name(&self) -> &str;

    /// The name a model file records for this module and [`crate::io::Loaders`] finds its loader
    /// by; by default [`type_name`](Module::type_name). Modules that print as another class
    /// (a QAT `Linear`, an observer) save under a name of their own.
    fn saved_type(&self) -> &str {
        self.type_name()
    }

    /// Runs the module on its input (a [`Value::Tuple`] for a module that takes several).
    fn forward(&self, input: Value) -> GraphResult<Value>;

    /// Runs one of the [`Functional`] ops (only `FloatFunctional` and its observed and quantized
    /// forms accept them).
    fn forward_functional(&self, op: Functional, inputs: Vec<Value>) -> GraphResult<Value> {
        let _ = inputs;
        Err(GraphError::InvalidArgument {
            context: "forward_functional",
            what: "op",
            value: op.name().to_string(),
            reason: format!("{} is not a FloatFunctional; call it through forward", self.type_name()),
        })
    }

    /// The children, in order, with their names.
    fn children(&self) -> Vec<(&str, &dyn Module)> {
        Vec::new()
    }

    /// The slot holding the child `name`, to replace it.
    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        let _ = name;
        None
    }

    /// The text between the parentheses of the printout (PyTorch's `extra_repr`).
    fn extra_repr(&self) -> String {
        String::new()
    }

    /// Float parameters and buffers under their `state_dict` names (`weight`, `running_mean`).
    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        Vec::new()
    }

    /// [`params`](Module::params), mutable, in the same order.
    fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
        Vec::new()
    }

    /// True in training mode (PyTorch's `module.training`).
    fn training(&self) -> bool {
        false
    }

    /// Sets training mode on this module only (see [`train`] for the whole tree).
    fn set_training(&mut self, training: bool) {
        let _ = training;
    }

    /// The module as an activation post-process (an observer or a fake quantizer), if it is one.
    fn as_post_process(&self) -> Option<&dyn ActivationPostProcess> {
        None
    }

    /// The constructor arguments, for saving (see [`crate::record`]).
    fn config(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The tensors to save besides the children's: by default the float [`params`](Module::params).
    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.params().into_iter().map(|(name, x)| (name.to_string(), TensorView::F32(x.view()))).collect()
    }
}

/// Downcasting and cloning of modules; implemented for every `Module + Clone`.
pub trait ModuleAny: Any {
    /// `&dyn Any`, to downcast.
    fn as_any(&self) -> &dyn Any;
    /// `&mut dyn Any`, to downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// `Box<dyn Any>`, to downcast by value.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    /// A deep copy.
    fn clone_module(&self) -> Box<dyn Module>;
}

impl<T: Module + Clone> ModuleAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn clone_module(&self) -> Box<dyn Module> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn Module> {
    fn clone(&self) -> Self {
        self.clone_module()
    }
}

impl dyn Module {
    /// The module as a `T`, if it is one.
    pub fn downcast_ref<T: Module>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }

    /// The module as a mutable `T`, if it is one.
    pub fn downcast_mut<T: Module>(&mut self) -> Option<&mut T> {
        self.as_any_mut().downcast_mut()
    }

    /// True if the module is a `T`.
    pub fn is<T: Module>(&self) -> bool {
        self.as_any().is::<T>()
    }

    /// Every module in the tree with its dotted path, parents before children; the root is `""`.
    pub fn named_modules(&self) -> Vec<(String, &dyn Module)> {
        let mut out = vec![(String::new(), self)];
        let mut i = 0;
        while i < out.len() {
            let (prefix, module) = (out[i].0.clone(), out[i].1);
            let children: Vec<_> =
                module.children().into_iter().map(|(name, child)| (join(&prefix, name), child)).collect();
            out.splice(i + 1..i + 1, children);
            i += 1;
        }
        out
    }

    /// The module at `path` (dotted; `""` is this module).
    pub fn get(&self, path: &str) -> GraphResult<&dyn Module> {
        let mut module = self;
        for (depth, name) in split(path).enumerate() {
            module = match module.children().into_iter().find(|(n, _)| *n == name) {
                Some((_, child)) => child,
                None => return Err(no_such_module(path, depth, module)),
            };
        }
        Ok(module)
    }

    /// The `state_dict`: every float parameter and buffer under its dotted name.
    pub fn state_dict(&self) -> Vec<(String, &ArrayD<f32>)> {
        self.named_modules()
            .into_iter()
            .flat_map(|(path, m)| m.params().into_iter().map(move |(name, x)| (join(&path, name), x)))
            .collect()
    }
}

impl fmt::Display for dyn Module {
    /// PyTorch's `repr(module)`: `Name(extra)` for a leaf, else the extra line and one
    /// `(name): child` line per child, indented by two spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra = self.extra_repr();
        let mut lines: Vec<String> = extra.lines().map(str::to_string).collect();
        let children = self.children();
        for (name, child) in &children {
            let text = child.to_string().replace('\n', "\n  ");
            lines.push(format!("({name}): {text}"));
        }
        write!(f, "{}(", self.type_name())?;
        if children.is_empty() && lines.len() == 1 {
            f.write_str(&lines[0])?;
        } else if !lines.is_empty() {
            write!(f, "\n  {}\n", lines.join("\n  "))?;
        }
        f.write_str(")")
    }
}

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('.').filter(|s| !s.is_empty())
}

fn no_such_module(path: &str, depth: usize, at: &dyn Module) -> GraphError {
    let names: Vec<&str> = at.children().into_iter().map(|(n, _)| n).collect();
    let reached: Vec<&str> = split(path).take(depth).collect();
    let hint = if names.is_empty() {
        format!("`{}` ({}) has no children", reached.join("."), at.type_name())
    } else if reached.is_empty() {
        format!("the top level has {}", names.join(", "))
    } else {
        format!("`{}` has {}", reached.join("."), names.join(", "))
    };
    GraphError::NoSuchModule { path: path.to_string(), hint }
}

/// The slot holding the module at `path` below `root` (`""` is `root` itself), to replace it.
pub fn slot_mut<'a>(root: &'a mut Box<dyn Module>, path: &str) -> GraphResult<&'a mut Box<dyn Module>> {
    let mut slot = root;
    for (depth, name) in split(path).enumerate() {
        if slot.child_slot(name).is_none() {
            return Err(no_such_module(path, depth, slot.as_ref()));
        }
        slot = slot.child_slot(name).expect("checked just above");
    }
    Ok(slot)
}

/// Puts `module` at `path`, returning the module that was there.
pub fn replace(
    root: &mut Box<dyn Module>,
    path: &str,
    module: Box<dyn Module>,
) -> GraphResult<Box<dyn Module>> {
    Ok(std::mem::replace(slot_mut(root, path)?, module))
}

/// Sets training mode on every module of the tree (`model.train(training)`).
pub fn train(root: &mut Box<dyn Module>, training: bool) {
    visit_slots(root, "", &mut |_, module| module.set_training(training));
}

/// `model.eval()`: [`train`] with `false`.
pub fn eval(root: &mut Box<dyn Module>) {
    train(root, false);
}

/// Loads float parameters by their `state_dict` names (PyTorch's `load_state_dict(strict=True)`,
/// `num_batches_tracked` ignored): every parameter of the tree must be given with its exact shape,
/// and every entry must name a parameter. Nothing changes unless all fit; the error lists each
/// missing, unexpected and mis-shaped name.
pub fn load_state_dict(
    root: &mut Box<dyn Module>,
    mut entries: BTreeMap<String, ArrayD<f32>>,
) -> GraphResult<()> {
    entries.retain(|k, _| !k.ends_with("num_batches_tracked"));
    let mut problems = Vec::new();
    let expected: Vec<(String, Vec<usize>)> =
        root.state_dict().into_iter().map(|(k, x)| (k, x.shape().to_vec())).collect();
    for (key, shape) in &expected {
        match entries.get(key) {
            Some(x) if x.shape() == shape.as_slice() => {}
            Some(x) => problems.push(format!("{key}: shape {:?} but the model has {shape:?}", x.shape())),
            None => problems.push(format!("{key}: missing")),
        }
    }
    let known: std::collections::BTreeSet<&String> = expected.iter().map(|(k, _)| k).collect();
    problems.extend(
        entries
            .keys()
            .filter(|k| !known.contains(k))
            .map(|k| format!("{k}: unexpected (not a parameter of this model)")),
    );
    if !problems.is_empty() {
        return Err(GraphError::Mismatch { context: "load_state_dict", reason: problems.join("; ") });
    }
    visit_slots(root, "", &mut |path, module| {
        for (name, param) in module.params_mut() {
            *param = entries.remove(&join(path, name)).expect("every key was checked above");
        }
    });
    Ok(())
}

/// Calls `f(path, module)` on `root` and every descendant reachable through
/// [`Module::child_slot`], parents first.
pub(crate) fn visit_slots(
    root: &mut Box<dyn Module>,
    path: &str,
    f: &mut impl FnMut(&str, &mut Box<dyn Module>),
) {
    f(path, root);
    let names: Vec<String> = root.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        if let Some(child) = root.child_slot(&name) {
            visit_slots(child, &join(path, &name), f);
        }
    }
}
