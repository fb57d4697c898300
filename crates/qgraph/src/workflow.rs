//! The eager-mode workflow: assign qconfigs ([`QConfigMapping`]), attach observers
//! ([`prepare`]), run calibration data ([`calibrate`]), swap in quantized modules ([`convert`]),
//! or all at once ([`quantize`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use qcore::QParams;
use qkernels::elementwise::PerTensor;
use qobserve::{ObservedRange, Observer};

use crate::module::{Functional, join, slot_mut};
use crate::qconfig::QConfig;
use crate::stubs::{DeQuantStub, DeQuantize, Quantize};
use crate::{GraphError, GraphResult, Module, Value, nn};

/// Which qconfig each module gets: PyTorch's `qconfig_dict` (`{"": global, Type: ..., "name":
/// ...}`) with its priority: by name, then by type, then inherited from the parent. `None`
/// excludes a module (and, by inheritance, its children).
///
/// ```
/// use qgraph::qconfig::get_default_qconfig;
/// use qgraph::workflow::QConfigMapping;
/// let mapping = QConfigMapping::global(get_default_qconfig("x86")?).set_name("fc", None);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QConfigMapping {
    global: Option<QConfig>,
    by_type: Vec<(String, Option<QConfig>)>,
    by_name: Vec<(String, Option<QConfig>)>,
}

impl QConfigMapping {
    /// Every module gets `qconfig` unless a more specific entry says otherwise (PyTorch's
    /// `model.qconfig = qconfig`).
    pub fn global(qconfig: QConfig) -> Self {
        Self { global: Some(qconfig), ..Self::default() }
    }

    /// Modules of PyTorch type `type_name` (e.g. `"Linear"`) get `qconfig`.
    pub fn set_type(mut self, type_name: &str, qconfig: Option<QConfig>) -> Self {
        self.by_type.push((type_name.to_string(), qconfig));
        self
    }

    /// The module at `path` and, unless overridden below, its children get `qconfig` (PyTorch's
    /// `model.layer1.qconfig = ...`).
    pub fn set_name(mut self, path: &str, qconfig: Option<QConfig>) -> Self {
        self.by_name.push((path.to_string(), qconfig));
        self
    }

    fn resolve(&self, path: &str, type_name: &str, parent: Option<&QConfig>) -> Option<QConfig> {
        if let Some((_, q)) = self.by_name.iter().rev().find(|(p, _)| p == path) {
            return q.clone();
        }
        if let Some((_, q)) = self.by_type.iter().rev().find(|(t, _)| t == type_name) {
            return q.clone();
        }
        if path.is_empty() { self.global.clone() } else { parent.cloned() }
    }
}

impl From<QConfig> for QConfigMapping {
    fn from(qconfig: QConfig) -> Self {
        QConfigMapping::global(qconfig)
    }
}

/// The module types `prepare` observes (those in PyTorch's static quantization mapping, plus the
/// fused ReLU6 forms): each becomes an [`Observed`] module, as a unit.
const OBSERVED_TYPES: &[&str] = &[
    "QuantStub",
    "FloatFunctional",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvReLU1d",
    "ConvReLU2d",
    "ConvReLU3d",
    "ConvReLU6_1d",
    "ConvReLU6_2d",
    "ConvReLU6_3d",
    "Linear",
    "LinearReLU",
    "LinearReLU6",
    "BatchNorm2d",
    "BatchNorm3d",
    "BNReLU2d",
    "BNReLU3d",
    "ReLU6",
    "Hardswish",
    "ELU",
    "LeakyReLU",
];

/// An observer as a module: PyTorch's `activation_post_process` child. It records the float
/// values passing through and counts its calls.
#[derive(Debug)]
pub struct ObserverModule {
    observer: Mutex<Box<dyn Observer>>,
    calls: AtomicUsize,
    per_forward: usize,
}

impl ObserverModule {
    fn new(observer: Box<dyn Observer>, per_forward: usize) -> Self {
        Self { observer: Mutex::new(observer), calls: AtomicUsize::new(0), per_forward }
    }

    /// How many times it observes each output of its module: 2 for fused modules, 1 otherwise
    /// (see [`Observed`]).
    pub fn observations_per_forward(&self) -> usize {
        self.per_forward
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Observer>> {
        // A panic while observing leaves statistics that are still a valid state.
        self.observer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `x` (a float value; a quantized one is dequantized first).
    pub fn observe(&self, x: &Value) -> GraphResult<()> {
        self.observe_repeated(x, 1)
    }

    /// Records `x` `times` times, as that many calls of [`ObserverModule::observe`] would.
    pub fn observe_repeated(&self, x: &Value, times: usize) -> GraphResult<()> {
        self.calls.fetch_add(times, Ordering::Relaxed);
        match x {
            Value::Float(x) => self.lock().observe_repeated(x.view(), times)?,
            other => self.lock().observe_repeated(other.to_float()?.view(), times)?,
        }
        Ok(())
    }

    /// How many times it has observed.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// The parameters it chose (`calculate_qparams`), as quint8 per-tensor activation parameters.
    pub fn activation_qparams(&self) -> GraphResult<PerTensor> {
        let observer = self.lock();
        match observer.calculate_qparams()? {
            QParams::PerTensor { scale, zero_point } => Ok(PerTensor::new(scale, zero_point)),
            other => Err(GraphError::Workflow {
                step: "convert",
                reason: format!(
                    "activation observer {} gives {:?} parameters; activations are quantized per tensor: use a \
                     per-tensor activation observer in the qconfig",
                    observer.name(),
                    other.qscheme()
                ),
            }),
        }
    }

    /// The observer's state (description, counters and statistics).
    pub fn state(&self) -> qobserve::ObserverState {
        self.lock().state()
    }

    /// The observer's statistics (its range, for the observers that keep one).
    pub fn stats(&self) -> qobserve::ObserverStats {
        self.lock().stats()
    }
}

impl Clone for ObserverModule {
    fn clone(&self) -> Self {
        let observer = self.state().build().expect("a state taken from a live observer rebuilds it");
        Self {
            observer: Mutex::new(observer),
            calls: AtomicUsize::new(self.calls()),
            per_forward: self.per_forward,
        }
    }
}

impl Module for ObserverModule {
    fn type_name(&self) -> &str {
        self.lock().name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        self.observe(&input)?;
        Ok(input)
    }

    /// PyTorch's `min_val=..., max_val=...` for observers that keep a range.
    fn extra_repr(&self) -> String {
        match self.stats().range {
            Some(ObservedRange::PerTensor { min, max }) => format!(
                "min_val={}, max_val={}",
                qcore::python_float_repr(f64::from(min)),
                qcore::python_float_repr(f64::from(max))
            ),
            Some(ObservedRange::PerChannel { min, max, .. }) => format!(
                "min_val={}, max_val={}",
                qcore::float_tensor_str(&min),
                qcore::float_tensor_str(&max)
            ),
            None => format!("min_val={}, max_val={}", "inf", "-inf"),
        }
    }
}

/// A module with an activation observer on its output, as `prepare` leaves it: it runs the
/// module in float and records its outputs. Prints as the module with an
/// `(activation_post_process)` child, as in PyTorch.
///
/// A fused module ([`nn::Fused`]) has each output observed twice, as in PyTorch: its fused
/// modules are `nn.Sequential`s, so the `activation_post_process` child `prepare` adds runs as the
/// last element of the sequence, and the forward hook `prepare` registers runs it again on the
/// same output (`torch/ao/quantization/quantize.py`, `_add_observer_`). Min/max and histogram
/// observers end with the same parameters either way; a moving-average observer does not.
#[derive(Debug, Clone)]
pub struct Observed {
    inner: Box<dyn Module>,
    qconfig: QConfig,
    post: Box<dyn Module>,
}

impl Observed {
    /// Observes `inner`'s outputs with `qconfig`'s activation observer.
    pub fn new(inner: Box<dyn Module>, qconfig: QConfig) -> GraphResult<Self> {
        let per_forward = if inner.is::<nn::Fused>() { 2 } else { 1 };
        let post = Box::new(ObserverModule::new(qconfig.activation.build()?, per_forward));
        Ok(Self { inner, qconfig, post })
    }

    /// The observed module.
    pub fn inner(&self) -> &dyn Module {
        self.inner.as_ref()
    }

    /// The qconfig it was prepared with.
    pub fn qconfig(&self) -> &QConfig {
        &self.qconfig
    }

    /// The observer.
    pub fn observer(&self) -> &ObserverModule {
        self.post.downcast_ref().expect("an Observed module's post-process is an ObserverModule")
    }
}

impl Module for Observed {
    fn type_name(&self) -> &str {
        self.inner.type_name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let out = self.inner.forward(input)?;
        let observer = self.observer();
        observer.observe_repeated(&out, observer.observations_per_forward())?;
        Ok(out)
    }

    fn forward_functional(&self, op: Functional, inputs: Vec<Value>) -> GraphResult<Value> {
        let out = self.inner.forward_functional(op, inputs)?;
        if op.is_observed() {
            self.observer().observe(&out)?;
        }
        Ok(out)
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        let mut children: Vec<_> =
            self.inner.children().into_iter().filter(|(n, _)| *n != "activation_post_process").collect();
        children.push(("activation_post_process", self.post.as_ref()));
        children
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        if name == "activation_post_process" { Some(&mut self.post) } else { self.inner.child_slot(name) }
    }

    fn extra_repr(&self) -> String {
        self.inner.extra_repr()
    }

    fn params(&self) -> Vec<(&'static str, &ndarray::ArrayD<f32>)> {
        self.inner.params()
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut ndarray::ArrayD<f32>)> {
        self.inner.params_mut()
    }

    fn training(&self) -> bool {
        self.inner.training()
    }

    fn set_training(&mut self, training: bool) {
        self.inner.set_training(training);
    }
}

/// `prepare(model)`: propagates qconfigs through the tree by `mapping` and wraps each module of an
/// observed type that has a qconfig in an [`Observed`] module; a `DeQuantStub` with a qconfig is
/// marked for `convert`. Fused modules and `FloatFunctional` are observed as units; `Dropout` is
/// skipped, as in PyTorch. Returns the number of observers attached; zero means no module has a
/// qconfig, which PyTorch only warns about and which is an error here, since nothing would be
/// quantized.
///
/// A module observed at more than one call site (a `Graph` child called twice) is an error: one
/// observer would mix the statistics of both sites.
pub fn prepare(model: &mut Box<dyn Module>, mapping: &QConfigMapping) -> GraphResult<usize> {
    check_single_call_sites(model.as_ref(), "")?;
    let mut count = 0;
    prepare_slot(model, "", None, mapping, &mut count)?;
    if count == 0 {
        return Err(GraphError::Workflow {
            step: "prepare",
            reason:
                "no module has a qconfig, so nothing would be observed or quantized; give the model one, \
                     e.g. QConfigMapping::global(get_default_qconfig(\"x86\")?)"
                    .into(),
        });
    }
    Ok(count)
}

fn check_single_call_sites(module: &dyn Module, path: &str) -> GraphResult<()> {
    // A repeated call's node is named `child#2`; only observed types mix statistics.
    fn observed_child<'a>(module: &dyn Module, node: &'a str) -> Option<&'a str> {
        let child = node.split('#').next().unwrap_or_default();
        module.get(child).is_ok_and(|m| OBSERVED_TYPES.contains(&m.type_name())).then_some(child)
    }
    let repeated = module.downcast_ref::<crate::Graph>().and_then(|g| {
        g.nodes().iter().filter(|n| n.name.contains('#')).find_map(|n| observed_child(module, &n.name))
    });
    if let Some(child) = repeated {
        return Err(GraphError::Workflow {
            step: "prepare",
            reason: format!(
                "module `{}` is called at more than one place in its graph, so its one observer would mix \
                 their statistics (PyTorch silently does); give each call site its own module",
                join(path, child)
            ),
        });
    }
    for (name, child) in module.children() {
        check_single_call_sites(child, &join(path, name))?;
    }
    Ok(())
}

fn prepare_slot(
    slot: &mut Box<dyn Module>,
    path: &str,
    parent: Option<&QConfig>,
    mapping: &QConfigMapping,
    count: &mut usize,
) -> GraphResult<()> {
    let type_name = slot.type_name().to_string();
    let qconfig = mapping.resolve(path, &type_name, parent);
    if slot.is::<Observed>() {
        return Ok(());
    }
    if let Some(dropout) = slot.downcast_mut::<nn::Dropout>() {
        dropout.swap_at_convert = qconfig.is_some();
        return Ok(());
    }
    if OBSERVED_TYPES.contains(&type_name.as_str()) {
        if let Some(qc) = qconfig {
            let inner = std::mem::replace(slot, Box::new(nn::Identity::new()));
            *slot = Box::new(Observed::new(inner, qc).map_err(|e| e.within_path(path))?);
            *count += 1;
        }
        return Ok(());
    }
    if let Some(stub) = slot.downcast_mut::<DeQuantStub>() {
        stub.qconfig = qconfig;
        return Ok(());
    }
    let names: Vec<String> = slot.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let child = slot.child_slot(&name).expect("a child listed by children()");
        prepare_slot(child, &join(path, &name), qconfig.as_ref(), mapping, count)?;
    }
    Ok(())
}

/// Runs calibration data through a prepared model: each batch is a forward pass, whose output is
/// discarded; `progress(done, total)` is called after each batch (`total` from the iterator's
/// size hint when it knows it). Afterwards, an observer called more often than its module could
/// have run in that many batches is reported: a module instance used at two call sites of a
/// hand-written forward.
pub fn calibrate<I>(
    model: &dyn Module,
    batches: I,
    mut progress: impl FnMut(usize, Option<usize>),
) -> GraphResult<()>
where
    I: IntoIterator,
    I::Item: Into<Value>,
{
    let before = observer_calls(model);
    let batches = batches.into_iter();
    let total = match batches.size_hint() {
        (lo, Some(hi)) if lo == hi => Some(lo),
        _ => None,
    };
    let mut done = 0;
    for batch in batches {
        model.forward(batch.into())?;
        done += 1;
        progress(done, total);
    }
    for ((path, after, per_forward), (_, earlier, _)) in observer_calls(model).into_iter().zip(before) {
        let forwards = (after - earlier) / per_forward;
        if forwards > done {
            return Err(GraphError::Workflow {
                step: "calibrate",
                reason: format!(
                    "the module observed by `{path}` ran {forwards} times in {done} forward passes: it is \
                     used at several call sites, so its observer's statistics mix them (PyTorch silently \
                     does); give each call site its own module"
                ),
            });
        }
    }
    Ok(())
}

/// Every observer's path, calls so far and observations per forward of its module.
fn observer_calls(model: &dyn Module) -> Vec<(String, usize, usize)> {
    model
        .named_modules()
        .into_iter()
        .filter_map(|(path, m)| {
            m.downcast_ref::<ObserverModule>().map(|o| (path, o.calls(), o.observations_per_forward()))
        })
        .collect()
}

/// `convert(model)`: replaces every [`Observed`] module by its quantized counterpart (weights
/// quantized with the qconfig's weight observer, re-run on the final weight as PyTorch does; output
/// parameters from the activation observer) and every `DeQuantStub` with a qconfig by
/// `DeQuantize`. Modules without a quantized counterpart (ReLU, pooling, Flatten, Identity, ...)
/// stay and run on quantized values. Observers that saw no data are an error naming every such
/// module.
pub fn convert(model: &mut Box<dyn Module>) -> GraphResult<()> {
    let uncalled = uncalled_functionals(model.as_ref());
    let unobserved: Vec<String> = model
        .named_modules()
        .into_iter()
        .filter(|(_, m)| m.downcast_ref::<ObserverModule>().is_some_and(|o| o.calls() == 0))
        .map(|(path, _)| path.trim_end_matches(".activation_post_process").to_string())
        .filter(|path| !uncalled.contains(path))
        .collect();
    if !unobserved.is_empty() {
        return Err(GraphError::Workflow {
            step: "convert",
            reason: format!(
                "the observers of {} saw no data; run calibration data through the prepared model first (or give \
                 these modules qconfig None)",
                unobserved.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let paths: Vec<String> = model.named_modules().into_iter().map(|(p, _)| p).collect();
    for path in paths {
        let Ok(slot) = slot_mut(model, &path) else { continue };
        if let Some(observed) = slot.downcast_ref::<Observed>() {
            // A FloatFunctional no graph node calls gets PyTorch's default parameters (1.0, 0).
            let out_q = if uncalled.contains(&path) {
                PerTensor::new(1.0, 0)
            } else {
                observed.observer().activation_qparams().map_err(|e| e.within_path(&path))?
            };
            let quantized = quantized_module(observed.inner(), observed.qconfig(), out_q)
                .map_err(|e| e.within_path(&path))?;
            *slot = quantized;
        } else if slot.downcast_ref::<DeQuantStub>().is_some_and(|s| s.qconfig.is_some()) {
            *slot = Box::new(DeQuantize::new());
        } else if let Some(dropout) = slot.downcast_ref::<nn::Dropout>().filter(|d| d.swap_at_convert) {
            *slot = Box::new(crate::quantized::activation::Dropout::from_float(dropout)?);
        }
    }
    Ok(())
}

/// The paths of `Graph` children that no node of their graph calls (torchvision's MobileNetV2
/// keeps a `skip_add` in blocks without a residual).
fn uncalled_functionals(model: &dyn Module) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for (path, module) in model.named_modules() {
        let Some(graph) = module.downcast_ref::<crate::Graph>() else { continue };
        for (name, _) in module.children() {
            let called = graph.nodes().iter().any(|n| match &n.op {
                crate::Op::Call(c) | crate::Op::Functional(c, _) => c == name,
                _ => false,
            });
            if !called {
                out.insert(join(&path, name));
            }
        }
    }
    out
}

/// The one mapping from float (observed) modules to quantized modules: PyTorch's
/// `DEFAULT_STATIC_QUANT_MODULE_MAPPINGS`, for the types in [`OBSERVED_TYPES`].
fn quantized_module(float: &dyn Module, qconfig: &QConfig, out_q: PerTensor) -> GraphResult<Box<dyn Module>> {
    use crate::quantized::{QuantizedAct, QuantizedBatchNorm, QuantizedConv, QuantizedLinear, activation};
    let weight = &qconfig.weight;
    let expect = |what: &str| GraphError::Workflow {
        step: "convert",
        reason: format!("a module named {} is not the library's {what}", float.type_name()),
    };
    if let Some(fused) = float.downcast_ref::<nn::Fused>() {
        let base = fused.base();
        let act = if fused.kind().is_relu6() { QuantizedAct::Relu6 } else { QuantizedAct::Relu };
        return Ok(match fused.kind() {
            nn::FusedKind::ConvReLU(_) | nn::FusedKind::ConvReLU6(_) => {
                let conv = base.downcast_ref::<nn::Conv>().ok_or_else(|| expect("Conv"))?;
                Box::new(QuantizedConv::from_float(conv, act, weight, out_q)?)
            }
            nn::FusedKind::LinearReLU | nn::FusedKind::LinearReLU6 => {
                let linear = base.downcast_ref::<nn::Linear>().ok_or_else(|| expect("Linear"))?;
                Box::new(QuantizedLinear::from_float(linear, act, weight, out_q)?)
            }
            nn::FusedKind::BNReLU(_) => {
                let bn = base.downcast_ref::<nn::BatchNorm>().ok_or_else(|| expect("BatchNorm"))?;
                Box::new(QuantizedBatchNorm::from_float(bn, true, out_q)?)
            }
        });
    }
    Ok(match float.type_name() {
        "QuantStub" => Box::new(Quantize::new(out_q)?),
        "FloatFunctional" => Box::new(crate::functional::QFunctional::new(out_q)?),
        "Conv1d" | "Conv2d" | "Conv3d" => {
            let conv = float.downcast_ref::<nn::Conv>().ok_or_else(|| expect("Conv"))?;
            Box::new(QuantizedConv::from_float(conv, QuantizedAct::None, weight, out_q)?)
        }
        "Linear" => {
            let linear = float.downcast_ref::<nn::Linear>().ok_or_else(|| expect("Linear"))?;
            Box::new(QuantizedLinear::from_float(linear, QuantizedAct::None, weight, out_q)?)
        }
        "BatchNorm2d" | "BatchNorm3d" => {
            let bn = float.downcast_ref::<nn::BatchNorm>().ok_or_else(|| expect("BatchNorm"))?;
            Box::new(QuantizedBatchNorm::from_float(bn, false, out_q)?)
        }
        "ReLU6" => Box::new(activation::ReLU6::from_float(float)?),
        "Hardswish" => Box::new(activation::Hardswish::from_float(float, out_q)?),
        "ELU" => Box::new(activation::ELU::from_float(float, out_q)?),
        "LeakyReLU" => Box::new(activation::LeakyReLU::from_float(float, out_q)?),
        other => {
            return Err(GraphError::Workflow {
                step: "convert",
                reason: format!(
                    "{other} has no quantized counterpart; give it qconfig None so that it stays float"
                ),
            });
        }
    })
}

/// `quantize(model, run_fn)`: [`prepare`], then `calibrate(model)` (a closure running calibration
/// data through the prepared model, e.g. with [`calibrate`]), then [`convert`].
pub fn quantize(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    calibrate: impl FnOnce(&dyn Module) -> GraphResult<()>,
) -> GraphResult<()> {
    prepare(model, mapping)?;
    calibrate(model.as_ref())?;
    convert(model)
}

impl GraphError {
    /// [`GraphError::within`] for a full dotted path (`""` leaves the error as it is).
    pub(crate) fn within_path(self, path: &str) -> GraphError {
        if path.is_empty() { self } else { self.within(path) }
    }
}
