//! Looking inside a model: record what chosen modules output during a forward pass (the role of
//! PyTorch's forward hooks and the numeric suite's `OutputLogger`), e.g. to compare a quantized
//! model with its float original or with PyTorch layer by layer.

use std::sync::{Arc, Mutex};

use crate::module::{Functional, slot_mut};
use crate::{GraphResult, Module, Value};

/// The outputs recorded by the loggers [`log_outputs`] attached, in execution order.
#[derive(Debug, Clone, Default)]
pub struct OutputLog(Arc<Mutex<Vec<(String, Value)>>>);

impl OutputLog {
    /// Takes the recorded `(path, output)` pairs, leaving the log empty.
    pub fn take(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn push(&self, path: &str, value: &Value) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((path.to_string(), value.clone()));
    }
}

/// Gives, for a module's path, the value to pass on in place of the module's own output (see
/// [`log_outputs_forced`]); `None` passes the module's output.
pub type Forcing = Arc<dyn Fn(&str) -> Option<Value> + Send + Sync>;

/// A module whose outputs (or, for [`log_inputs`], inputs) go to an [`OutputLog`]; it prints and
/// behaves as the module it wraps, unless a [`Forcing`] replaces what it passes on.
#[derive(Clone)]
struct Logged {
    inner: Box<dyn Module>,
    path: String,
    log: OutputLog,
    force: Option<Forcing>,
    inputs: bool,
}

impl std::fmt::Debug for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logged").field("inner", &self.inner).field("path", &self.path).finish_non_exhaustive()
    }
}

impl Logged {
    fn pass_on(&self, out: Value) -> Value {
        self.log.push(&self.path, &out);
        self.force.as_ref().and_then(|f| f(&self.path)).unwrap_or(out)
    }
}

impl Module for Logged {
    fn type_name(&self) -> &str {
        self.inner.type_name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        if self.inputs {
            self.log.push(&self.path, &input);
            return self.inner.forward(input);
        }
        Ok(self.pass_on(self.inner.forward(input)?))
    }

    fn forward_functional(&self, op: Functional, inputs: Vec<Value>) -> GraphResult<Value> {
        if self.inputs {
            self.log.push(&self.path, &Value::Tuple(inputs.clone()));
            return self.inner.forward_functional(op, inputs);
        }
        Ok(self.pass_on(self.inner.forward_functional(op, inputs)?))
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        self.inner.children()
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        self.inner.child_slot(name)
    }

    fn extra_repr(&self) -> String {
        self.inner.extra_repr()
    }
}

/// Wraps every module for which `select(path, module)` holds so that its outputs are recorded
/// (the selected modules' own children are not visited). Returns the log; [`remove_loggers`]
/// undoes it.
///
/// ```
/// use qgraph::nn::{Flatten, ReLU};
/// use qgraph::{Module, Sequential, Value, debug};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(ReLU::new()), Box::new(Flatten::new(1, -1))]));
/// let log = debug::log_outputs(&mut model, |path, _| path == "0")?;
/// model.forward(Value::from(ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 2, 2]))))?;
/// assert_eq!(log.take()[0].0, "0");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn log_outputs(
    model: &mut Box<dyn Module>,
    select: impl Fn(&str, &dyn Module) -> bool,
) -> GraphResult<OutputLog> {
    attach(model, select, None, false)
}

/// As [`log_outputs`], but records what each selected module is given (the role of a forward
/// pre-hook): its input, or the tuple of a `FloatFunctional` call's inputs. Loggers of both kinds
/// may wrap the same module; [`remove_loggers`] removes all.
///
/// ```
/// use qgraph::nn::{Flatten, ReLU};
/// use qgraph::{Module, Sequential, Value, debug};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(ReLU::new()), Box::new(Flatten::new(1, -1))]));
/// let outputs = debug::log_outputs(&mut model, |path, _| path == "0")?;
/// let inputs = debug::log_inputs(&mut model, |path, _| path == "1")?;
/// let x = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&[1, 2, 2]), -1.0);
/// model.forward(Value::from(x))?;
/// // The Flatten is given what the ReLU output.
/// assert_eq!(inputs.take()[0].1, outputs.take()[0].1);
/// debug::remove_loggers(&mut model)?;
/// assert_eq!(model.to_string(), "Sequential(\n  (0): ReLU()\n  (1): Flatten(start_dim=1, end_dim=-1)\n)");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn log_inputs(
    model: &mut Box<dyn Module>,
    select: impl Fn(&str, &dyn Module) -> bool,
) -> GraphResult<OutputLog> {
    attach(model, select, None, true)
}

/// As [`log_outputs`], and each selected module then passes on `force(path)` instead of its own
/// output when that is `Some`: "teacher forcing". Fed with another implementation's outputs
/// (PyTorch's, layer by layer), every module then computes from the same inputs as the
/// reference, so the log compares layers one at a time instead of accumulated differences.
pub fn log_outputs_forced(
    model: &mut Box<dyn Module>,
    select: impl Fn(&str, &dyn Module) -> bool,
    force: Forcing,
) -> GraphResult<OutputLog> {
    attach(model, select, Some(force), false)
}

fn attach(
    model: &mut Box<dyn Module>,
    select: impl Fn(&str, &dyn Module) -> bool,
    force: Option<Forcing>,
    inputs: bool,
) -> GraphResult<OutputLog> {
    let log = OutputLog::default();
    let mut chosen: Vec<String> = Vec::new();
    for (path, module) in model.named_modules() {
        if !chosen.iter().any(|p| p.is_empty() || path.starts_with(&format!("{p}."))) && select(&path, module)
        {
            chosen.push(path);
        }
    }
    for path in chosen {
        // Children without a slot (a FloatFunctional's placeholder `activation_post_process`)
        // cannot be wrapped; they only pass values through.
        let Ok(slot) = slot_mut(model, &path) else { continue };
        let inner = std::mem::replace(slot, Box::new(crate::nn::Identity::new()));
        *slot = Box::new(Logged { inner, path, log: log.clone(), force: force.clone(), inputs });
    }
    Ok(log)
}

/// Removes the loggers [`log_outputs`], [`log_outputs_forced`] and [`log_inputs`] attached,
/// restoring the modules they wrapped.
pub fn remove_loggers(model: &mut Box<dyn Module>) -> GraphResult<()> {
    while model.is::<Logged>() {
        let logged = std::mem::replace(model, Box::new(crate::nn::Identity::new()));
        let logged = logged.into_any().downcast::<Logged>().expect("checked just above");
        *model = logged.inner;
    }
    let names: Vec<String> = model.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        if let Some(child) = model.child_slot(&name) {
            remove_loggers(child)?;
        }
    }
    Ok(())
}
