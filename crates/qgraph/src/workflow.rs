//! The eager-mode workflow: assign qconfigs ([`QConfigMapping`]), attach observers
//! ([`prepare`]), run calibration data ([`calibrate`]), swap in quantized modules ([`convert`]),
//! or all at once ([`quantize`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use qcore::QParams;
use qkernels::elementwise::PerTensor;
use qobserve::{ObservedRange, Observer, ObserverState};
use serde::{Deserialize, Serialize};

use crate::mappings::{Mappings, ModuleKey, Swap};
pub use crate::module::ActivationPostProcess;
use crate::module::{Functional, join, slot_mut};
use crate::qconfig::QConfig;
use crate::record::{Record, TensorView};
use crate::{GraphError, GraphResult, Module, Value, nn};

/// Which qconfig each module gets: PyTorch's `qconfig_dict` (`{"": global, Type: ..., "name":
/// ...}`) with its priority: by name, then by type ([`ModuleKey`] entries before class names),
/// then inherited from the parent. `None` excludes a module (and, by inheritance, its children).
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
    by_key: Vec<(ModuleKey, Option<QConfig>)>,
    by_type: Vec<(String, Option<QConfig>)>,
    by_name: Vec<(String, Option<QConfig>)>,
}

impl QConfigMapping {
    /// Every module gets `qconfig` unless a more specific entry says otherwise (PyTorch's
    /// `model.qconfig = qconfig`).
    pub fn global(qconfig: QConfig) -> Self {
        Self { global: Some(qconfig), ..Self::default() }
    }

    /// Modules of PyTorch type `type_name` (e.g. `"Linear"`) get `qconfig`, whatever their Rust
    /// type (a QAT `Linear` too); [`set_key`](QConfigMapping::set_key) names one Rust type.
    pub fn set_type(mut self, type_name: &str, qconfig: Option<QConfig>) -> Self {
        self.by_type.push((type_name.to_string(), qconfig));
        self
    }

    /// Modules of the Rust type and class name `key` get `qconfig` (before any
    /// [`set_type`](QConfigMapping::set_type) entry of the same class name).
    pub fn set_key(mut self, key: ModuleKey, qconfig: Option<QConfig>) -> Self {
        self.by_key.push((key, qconfig));
        self
    }

    /// The module at `path` and, unless overridden below, its children get `qconfig` (PyTorch's
    /// `model.layer1.qconfig = ...`).
    pub fn set_name(mut self, path: &str, qconfig: Option<QConfig>) -> Self {
        self.by_name.push((path.to_string(), qconfig));
        self
    }

    /// The qconfig `prepare` gives the module at `path` of `model` (resolved at the root, then
    /// at each ancestor down to `path`, as `prepare` walks), or `None` where it stays float. An
    /// error if `path` does not exist.
    ///
    /// ```
    /// use qgraph::nn::{Linear, ReLU};
    /// use qgraph::qconfig::default_qconfig;
    /// use qgraph::{QConfigMapping, Sequential};
    /// let model = Sequential::new(vec![Box::new(Linear::new(4, 4, true)), Box::new(ReLU::new())]);
    /// let mapping = QConfigMapping::global(default_qconfig()).set_name("1", None);
    /// assert_eq!(mapping.qconfig_at(&model, "0")?, Some(default_qconfig()));
    /// assert_eq!(mapping.qconfig_at(&model, "1")?, None);
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    pub fn qconfig_at(&self, model: &dyn Module, path: &str) -> GraphResult<Option<QConfig>> {
        let mut qconfig = self.resolve("", model, None);
        let mut prefix = String::new();
        for part in path.split('.').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('.');
            }
            prefix.push_str(part);
            qconfig = self.resolve(&prefix, model.get(&prefix)?, qconfig.as_ref());
        }
        Ok(qconfig)
    }

    fn resolve(&self, path: &str, module: &dyn Module, parent: Option<&QConfig>) -> Option<QConfig> {
        if let Some((_, q)) = self.by_name.iter().rev().find(|(p, _)| p == path) {
            return q.clone();
        }
        if !self.by_key.is_empty() {
            let key = ModuleKey::of(module);
            if let Some((_, q)) = self.by_key.iter().rev().find(|(k, _)| *k == key) {
                return q.clone();
            }
        }
        if let Some((_, q)) = self.by_type.iter().rev().find(|(t, _)| t == module.type_name()) {
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

/// An observer as a module: PyTorch's `activation_post_process` child. It records the float
/// values passing through and counts its calls.
#[derive(Debug)]
pub struct ObserverModule {
    observer: Mutex<Box<dyn Observer>>,
    calls: AtomicUsize,
    per_forward: usize,
}

/// What an [`ObserverModule`] saves: the observer's state, its call count and observations per
/// forward.
#[derive(Debug, Serialize, Deserialize)]
struct ObserverConfig {
    state: ObserverState,
    calls: usize,
    per_forward: usize,
}

impl ObserverModule {
    fn new(observer: Box<dyn Observer>, per_forward: usize) -> Self {
        Self { observer: Mutex::new(observer), calls: AtomicUsize::new(0), per_forward }
    }

    /// An observer module resuming from `state` (as [`ObserverModule::state`] gave it), having
    /// been called `calls` times and observing each output `per_forward` times (1 or 2).
    pub fn restore(state: &ObserverState, calls: usize, per_forward: usize) -> GraphResult<Self> {
        if !(1..=2).contains(&per_forward) {
            return Err(crate::invalid(
                "ObserverModule",
                "per_forward",
                per_forward,
                "an output is observed once, or twice for a fused module",
            ));
        }
        let module = Self::new(state.build()?, per_forward);
        module.calls.store(calls, Ordering::Relaxed);
        Ok(module)
    }

    /// Rebuilds a saved observer module.
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: ObserverConfig = record.config()?;
        Self::restore(&c.state, c.calls, c.per_forward)
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
        if observer.spec().args().is_some_and(|a| a.dtype == qcore::QDType::QUInt4x2) {
            return Err(GraphError::Workflow {
                step: "convert",
                reason: format!(
                    "activation observer {} quantizes to torch.quint4x2, which only embedding weights take; use \
                     quint8 for activations",
                    observer.name()
                ),
            });
        }
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

impl ActivationPostProcess for ObserverModule {
    fn activation_qparams(&self) -> GraphResult<PerTensor> {
        ObserverModule::activation_qparams(self)
    }

    fn calls(&self) -> usize {
        ObserverModule::calls(self)
    }
}

impl Module for ObserverModule {
    fn type_name(&self) -> &str {
        self.lock().name()
    }

    fn as_post_process(&self) -> Option<&dyn ActivationPostProcess> {
        Some(self)
    }

    fn saved_type(&self) -> &str {
        "ObserverModule"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        self.observe(&input)?;
        Ok(input)
    }

    fn config(&self) -> serde_json::Value {
        let config =
            ObserverConfig { state: self.state(), calls: self.calls(), per_forward: self.per_forward };
        serde_json::to_value(config).expect("plain data")
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
    /// The name a prepared module is saved under (its observed module's name is in its
    /// configuration).
    pub const SAVED_TYPE: &'static str = "Observed";

    /// The name of the observer child, as in PyTorch.
    pub const POST: &'static str = "activation_post_process";

    /// Observes `inner`'s outputs with `qconfig`'s activation observer.
    pub fn new(inner: Box<dyn Module>, qconfig: QConfig) -> GraphResult<Self> {
        let per_forward = observations_per_forward(inner.as_ref());
        let post = Box::new(ObserverModule::new(qconfig.activation.build()?, per_forward));
        Ok(Self { inner, qconfig, post })
    }

    /// `inner` with `post` as its `activation_post_process` (a fake quantizer, for QAT): its
    /// forward runs on every output and its result is the module's output. `post` must be an
    /// [`ActivationPostProcess`] ([`Module::as_post_process`]).
    pub fn with_post_process(
        inner: Box<dyn Module>,
        qconfig: QConfig,
        post: Box<dyn Module>,
    ) -> GraphResult<Self> {
        if post.as_post_process().is_none() {
            return Err(crate::invalid(
                "Observed",
                "activation_post_process",
                post.type_name(),
                "give an observer or a fake quantizer (a module whose as_post_process() is Some)",
            ));
        }
        Ok(Self { inner, qconfig, post })
    }

    /// A prepared module resuming with `observer` (e.g. a loaded one, whose statistics
    /// calibration continues from). The observer must be of `qconfig`'s activation description.
    pub fn restore(inner: Box<dyn Module>, qconfig: QConfig, observer: ObserverModule) -> GraphResult<Self> {
        let per_forward = observations_per_forward(inner.as_ref());
        if observer.per_forward != per_forward {
            return Err(crate::invalid(
                "Observed",
                "observer per_forward",
                observer.per_forward,
                format!("{} observes each output {per_forward} time(s)", inner.type_name()),
            ));
        }
        let spec = observer.state().spec;
        if spec != qconfig.activation {
            return Err(crate::invalid(
                "Observed",
                "observer",
                spec.name(),
                format!(
                    "the qconfig's activation observer is {}; give the observer the qconfig was prepared with",
                    qconfig.activation.name()
                ),
            ));
        }
        Ok(Self { inner, qconfig, post: Box::new(observer) })
    }

    /// The observed module.
    pub fn inner(&self) -> &dyn Module {
        self.inner.as_ref()
    }

    /// The observed module, mutable (training updates it).
    pub fn inner_mut(&mut self) -> &mut dyn Module {
        self.inner.as_mut()
    }

    /// The qconfig it was prepared with.
    pub fn qconfig(&self) -> &QConfig {
        &self.qconfig
    }

    /// The observer, if the post-process is one (after `prepare`; a fake quantizer after
    /// `prepare_qat`).
    pub fn observer(&self) -> Option<&ObserverModule> {
        self.post.downcast_ref()
    }

    /// The activation post-process: the observer, or a fake quantizer.
    pub fn post_process(&self) -> &dyn ActivationPostProcess {
        self.post.as_post_process().expect("checked when the module was built")
    }
}

/// How many times an observer sees each output of `inner`: twice for a fused module (see
/// [`Observed`]), once otherwise.
fn observations_per_forward(inner: &dyn Module) -> usize {
    if inner.is::<nn::Fused>() { 2 } else { 1 }
}

impl Module for Observed {
    fn type_name(&self) -> &str {
        self.inner.type_name()
    }

    fn saved_type(&self) -> &str {
        Self::SAVED_TYPE
    }

    /// The qconfig and the observed module's own name and configuration; its tensors are the
    /// observed module's, its children the observed module's and the observer.
    fn config(&self) -> serde_json::Value {
        let module =
            SavedInner { saved_type: self.inner.saved_type().to_string(), config: self.inner.config() };
        serde_json::to_value(ObservedConfig { qconfig: self.qconfig.clone(), module }).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.inner.tensors()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let out = self.inner.forward(input)?;
        match self.observer() {
            Some(observer) => {
                observer.observe_repeated(&out, observer.observations_per_forward())?;
                Ok(out)
            }
            None => self.post.forward(out),
        }
    }

    fn forward_functional(&self, op: Functional, inputs: Vec<Value>) -> GraphResult<Value> {
        let out = self.inner.forward_functional(op, inputs)?;
        if !op.is_observed() {
            return Ok(out);
        }
        match self.observer() {
            Some(observer) => observer.observe(&out).map(|()| out),
            None => self.post.forward(out),
        }
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        let mut children: Vec<_> =
            self.inner.children().into_iter().filter(|(n, _)| *n != Self::POST).collect();
        children.push((Self::POST, self.post.as_ref()));
        children
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        if name == Self::POST { Some(&mut self.post) } else { self.inner.child_slot(name) }
    }

    delegate_to_inner!(inner);
}

/// The saved configuration of an [`Observed`] module: the qconfig, and the observed module's
/// saved name and configuration.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ObservedConfig {
    pub(crate) qconfig: QConfig,
    pub(crate) module: SavedInner,
}

/// The observed module inside an [`ObservedConfig`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SavedInner {
    #[serde(rename = "type")]
    pub(crate) saved_type: String,
    #[serde(default)]
    pub(crate) config: serde_json::Value,
}

/// `prepare(model)` with the [default mappings](Mappings::default): see [`prepare_with`].
pub fn prepare(model: &mut Box<dyn Module>, mapping: &QConfigMapping) -> GraphResult<usize> {
    prepare_with(model, mapping, &Mappings::default())
}

/// `prepare(model)`: propagates qconfigs through the tree by `mapping` and wraps each module with
/// an observed entry in `mappings` that has a qconfig in an [`Observed`] module; modules with an
/// unobserved entry (`DeQuantStub`, `Dropout`) are marked for `convert`. Fused modules and
/// `FloatFunctional` are observed as units, as in PyTorch. Returns the number of observers
/// attached; zero means no module has a qconfig, which PyTorch only warns about and which is an
/// error here, since nothing would be quantized.
///
/// A module observed at more than one call site (a `Graph` child called twice) is an error: one
/// observer would mix the statistics of both sites.
pub fn prepare_with(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    mappings: &Mappings,
) -> GraphResult<usize> {
    let count = attach_observers(model, mapping, mappings)?;
    if count == 0 {
        return Err(nothing_to_quantize());
    }
    Ok(count)
}

/// [`prepare_with`] without its check that something was observed.
fn attach_observers(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    mappings: &Mappings,
) -> GraphResult<usize> {
    check_single_call_sites(model.as_ref(), "", mappings)?;
    let mut count = 0;
    prepare_slot(model, "", None, mapping, mappings, &mut count)?;
    Ok(count)
}

/// The error of a prepare that finds no module with a qconfig.
fn nothing_to_quantize() -> GraphError {
    GraphError::Workflow {
        step: "prepare",
        reason: "no module has a qconfig, so nothing would be observed or quantized; give the model one, \
                 e.g. QConfigMapping::global(get_default_qconfig(\"x86\")?)"
            .into(),
    }
}

/// `prepare_qat(model)`: swaps every module with a qconfig and an entry in the QAT table of
/// `mappings` for its QAT form (PyTorch's `convert(model, mapping=qat_mappings)`), then
/// [`prepare_with`]. Returns the number of observers attached, which may be zero when modules
/// were swapped (QAT embeddings get no observer); an error when nothing was swapped or observed.
pub fn prepare_qat_with(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    mappings: &Mappings,
) -> GraphResult<usize> {
    let swapped = swap_with(model, mapping, mappings, Swap::Qat)?;
    let count = attach_observers(model, mapping, mappings)?;
    // QAT modules without an activation post-process (embeddings, whose NoopObserver keeps the
    // output float) make a model with nothing observed but something to train and convert.
    if count == 0 && swapped == 0 {
        return Err(nothing_to_quantize());
    }
    Ok(count)
}

/// `quantize_dynamic(model)`: swaps every module with a qconfig and an entry in the dynamic table
/// of `mappings` for its dynamic form. Returns the number of modules swapped.
pub fn quantize_dynamic_with(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    mappings: &Mappings,
) -> GraphResult<usize> {
    swap_with(model, mapping, mappings, Swap::Dynamic)
}

/// The `dtype` argument of [`quantize_dynamic`]: which default module set and qconfig a
/// [`DynamicQConfigSpec::Default`] or [`DynamicQConfigSpec::Types`] spec gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DynamicDType {
    /// `torch.qint8`: Linear and the recurrent modules with `default_dynamic_qconfig`.
    QInt8,
    /// `torch.float16`: the same modules with `float16_dynamic_qconfig`.
    Float16,
    /// `torch.quint8`: Embedding and EmbeddingBag with `float_qparams_weight_only_qconfig`.
    QUInt8,
    /// `torch.quint4x2`: EmbeddingBag with `float_qparams_weight_only_qconfig_4bit`.
    QUInt4x2,
}

impl DynamicDType {
    /// The class names `quantize_dynamic` quantizes by default for this dtype.
    pub fn default_types(self) -> &'static [&'static str] {
        const RECURRENT_AND_LINEAR: &[&str] = &["Linear", "LSTM", "GRU", "LSTMCell", "RNNCell", "GRUCell"];
        match self {
            DynamicDType::QInt8 | DynamicDType::Float16 => RECURRENT_AND_LINEAR,
            DynamicDType::QUInt8 => &["EmbeddingBag", "Embedding"],
            DynamicDType::QUInt4x2 => &["EmbeddingBag"],
        }
    }

    /// The qconfig a module named in a set gets for this dtype.
    pub fn default_qconfig(self) -> GraphResult<QConfig> {
        match self {
            DynamicDType::QInt8 => Ok(crate::qconfig::default_dynamic_qconfig()),
            DynamicDType::QUInt8 => Ok(crate::qconfig::float_qparams_weight_only_qconfig()),
            DynamicDType::QUInt4x2 => Ok(crate::qconfig::float_qparams_weight_only_qconfig_4bit()),
            DynamicDType::Float16 => Ok(crate::qconfig::float16_dynamic_qconfig()),
        }
    }
}

/// The `qconfig_spec` argument of [`quantize_dynamic`].
#[derive(Debug, Clone, Default, PartialEq)]
pub enum DynamicQConfigSpec {
    /// `None`: the dtype's default module set ([`DynamicDType::default_types`]) with its
    /// default qconfig.
    #[default]
    Default,
    /// A set of class names (`{nn.EmbeddingBag}`): those modules with the dtype's default qconfig.
    Types(Vec<String>),
    /// A dict (by type, by name, global): qconfigs as given; the dtype is ignored.
    Mapping(QConfigMapping),
}

/// PyTorch's `quantize_dynamic(model, qconfig_spec, dtype)`: puts the model in eval mode and
/// swaps every module with a qconfig and an entry in
/// [`get_default_dynamic_quant_module_mappings`](crate::mappings::get_default_dynamic_quant_module_mappings)
/// for its dynamic form, in place. Modules with a qconfig but no dynamic form stay as they are,
/// as in PyTorch. Returns the number of modules swapped.
///
/// ```
/// use qgraph::nn::{Embedding, EmbeddingBag, EmbeddingBagMode};
/// use qgraph::workflow::{DynamicDType, DynamicQConfigSpec, quantize_dynamic};
/// use qgraph::{Module, Sequential};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
///     Box::new(Embedding::new(10, 4)?),
///     Box::new(EmbeddingBag::new(10, 4, EmbeddingBagMode::Sum)?),
/// ]));
/// let swapped = quantize_dynamic(&mut model, DynamicQConfigSpec::Default, DynamicDType::QUInt4x2)?;
/// assert_eq!(swapped, 1); // quint4x2 quantizes EmbeddingBag only
/// assert_eq!(model.get("1")?.type_name(), "QuantizedEmbeddingBag");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn quantize_dynamic(
    model: &mut Box<dyn Module>,
    qconfig_spec: DynamicQConfigSpec,
    dtype: DynamicDType,
) -> GraphResult<usize> {
    let by_types = |types: &mut dyn Iterator<Item = &str>| -> GraphResult<QConfigMapping> {
        let qconfig = dtype.default_qconfig()?;
        Ok(types.fold(QConfigMapping::default(), |m, t| m.set_type(t, Some(qconfig.clone()))))
    };
    let mapping = match qconfig_spec {
        DynamicQConfigSpec::Default => by_types(&mut dtype.default_types().iter().copied())?,
        DynamicQConfigSpec::Types(types) => by_types(&mut types.iter().map(String::as_str))?,
        DynamicQConfigSpec::Mapping(mapping) => mapping,
    };
    crate::module::eval(model);
    quantize_dynamic_with(model, &mapping, &crate::mappings::get_default_dynamic_quant_module_mappings())
}

/// Replaces every module with a qconfig and an entry in `table` by its swapped form (not looking
/// inside swapped modules); returns how many were swapped.
fn swap_with(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    mappings: &Mappings,
    table: Swap,
) -> GraphResult<usize> {
    fn visit(
        slot: &mut Box<dyn Module>,
        path: &str,
        parent: Option<&QConfig>,
        ctx: (&QConfigMapping, &Mappings, Swap),
        count: &mut usize,
    ) -> GraphResult<()> {
        let (mapping, mappings, table) = ctx;
        let qconfig = mapping.resolve(path, slot.as_ref(), parent);
        if let Some(swapped) = qconfig.as_ref().and_then(|qc| mappings.swap(table, slot.as_ref(), qc)) {
            *slot = swapped.map_err(|e| e.within_path(path))?;
            *count += 1;
            return Ok(());
        }
        let names: Vec<String> = slot.children().into_iter().map(|(n, _)| n.to_string()).collect();
        for name in names {
            let child = slot.child_slot(&name).expect("a child listed by children()");
            visit(child, &join(path, &name), qconfig.as_ref(), ctx, count)?;
        }
        Ok(())
    }
    let mut count = 0;
    visit(model, "", None, (mapping, mappings, table), &mut count)?;
    Ok(count)
}

fn check_single_call_sites(module: &dyn Module, path: &str, mappings: &Mappings) -> GraphResult<()> {
    // A repeated call's node is named `child#2`; only observed types mix statistics.
    let observed_child = |node: &'_ str| -> Option<String> {
        let child = node.split('#').next().unwrap_or_default();
        module.get(child).is_ok_and(|m| mappings.is_observed(m)).then(|| child.to_string())
    };
    let repeated = module.downcast_ref::<crate::Graph>().and_then(|g| {
        g.nodes().iter().filter(|n| n.name.contains('#')).find_map(|n| observed_child(&n.name))
    });
    if let Some(child) = repeated {
        return Err(GraphError::Workflow {
            step: "prepare",
            reason: format!(
                "module `{}` is called at more than one place in its graph, so its one observer would mix \
                 their statistics (PyTorch silently does); give each call site its own module",
                join(path, &child)
            ),
        });
    }
    for (name, child) in module.children() {
        check_single_call_sites(child, &join(path, name), mappings)?;
    }
    Ok(())
}

fn prepare_slot(
    slot: &mut Box<dyn Module>,
    path: &str,
    parent: Option<&QConfig>,
    mapping: &QConfigMapping,
    mappings: &Mappings,
    count: &mut usize,
) -> GraphResult<()> {
    let qconfig = mapping.resolve(path, slot.as_ref(), parent);
    if slot.is::<Observed>() || mappings.mark(slot.as_mut(), qconfig.as_ref()) {
        return Ok(());
    }
    if mappings.is_observed(slot.as_ref()) {
        if let Some(qc) = qconfig {
            let inner = std::mem::replace(slot, Box::new(nn::Identity::new()));
            let observed = match mappings.activation_post_process(inner.as_ref(), &qc) {
                Some(post) => post.and_then(|post| Observed::with_post_process(inner, qc, post)),
                None => Observed::new(inner, qc),
            };
            *slot = Box::new(observed.map_err(|e| e.within_path(path))?);
            *count += 1;
        }
        return Ok(());
    }
    let names: Vec<String> = slot.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let child = slot.child_slot(&name).expect("a child listed by children()");
        prepare_slot(child, &join(path, &name), qconfig.as_ref(), mapping, mappings, count)?;
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
        // A count restored from a file may be anything: wrap rather than overflow.
        let forwards = after.wrapping_sub(earlier) / per_forward.max(1);
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

/// `convert(model)` with the [default mappings](Mappings::default): see [`convert_with`].
pub fn convert(model: &mut Box<dyn Module>) -> GraphResult<()> {
    convert_with(model, &Mappings::default())
}

/// `convert(model)`: replaces every [`Observed`] module by its quantized counterpart from
/// `mappings` (weights quantized with the qconfig's weight observer, re-run on the final weight as
/// PyTorch does; output parameters from the activation observer) and every module `prepare`
/// marked (a `DeQuantStub` or `Dropout` with a qconfig) by its replacement. Modules without a
/// quantized counterpart (ReLU, pooling, Flatten, Identity, ...) stay and run on quantized values.
/// Observers that saw no data are an error naming every such module.
pub fn convert_with(model: &mut Box<dyn Module>, mappings: &Mappings) -> GraphResult<()> {
    let uncalled = uncalled_functionals(model.as_ref());
    let unobserved: Vec<String> = model
        .named_modules()
        .into_iter()
        .filter(|(path, m)| {
            path.ends_with(Observed::POST) && m.as_post_process().is_some_and(|post| post.calls() == 0)
        })
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
                observed.post_process().activation_qparams().map_err(|e| e.within_path(&path))?
            };
            let quantized = mappings
                .quantize(observed.inner(), observed.qconfig(), out_q)
                .map_err(|e| e.within_path(&path))?;
            *slot = quantized;
        } else if let Some(replacement) = mappings.take(slot.as_ref()).map_err(|e| e.within_path(&path))? {
            *slot = replacement;
        }
    }
    Ok(())
}

/// The paths of `Graph` children that no node of their graph calls (torchvision's MobileNetV2
/// keeps a `skip_add` in blocks without a residual), or calls only with ops whose output is not
/// observed (`add_scalar`, `mul_scalar`): their observers see nothing, in PyTorch too.
fn uncalled_functionals(model: &dyn Module) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for (path, module) in model.named_modules() {
        let Some(graph) = module.downcast_ref::<crate::Graph>() else { continue };
        for (name, _) in module.children() {
            let called = graph.nodes().iter().any(|n| match &n.op {
                crate::Op::Call(c) => c == name,
                crate::Op::Functional(c, op) => c == name && op.is_observed(),
                _ => false,
            });
            if !called {
                out.insert(join(&path, name));
            }
        }
    }
    out
}

/// `quantize(model, run_fn)` with the [default mappings](Mappings::default): see
/// [`quantize_with`].
pub fn quantize(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    calibrate: impl FnOnce(&dyn Module) -> GraphResult<()>,
) -> GraphResult<()> {
    quantize_with(model, mapping, &Mappings::default(), calibrate)
}

/// `quantize(model, run_fn)`: [`prepare_with`], then `calibrate(model)` (a closure running
/// calibration data through the prepared model, e.g. with [`calibrate`]), then [`convert_with`].
pub fn quantize_with(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    mappings: &Mappings,
    calibrate: impl FnOnce(&dyn Module) -> GraphResult<()>,
) -> GraphResult<()> {
    prepare_with(model, mapping, mappings)?;
    calibrate(model.as_ref())?;
    convert_with(model, mappings)
}
