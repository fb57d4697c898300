//! Which modules `prepare` observes and what `convert` swaps them for: PyTorch's
//! `quantization_mappings.py` as typed tables ([`Mappings`]).
//!
//! A table is keyed by a [`ModuleKey`]: the module's Rust type and its class name (one Rust type
//! serves several classes: [`nn::Conv`] is `Conv1d`, `Conv2d` and `Conv3d`). The static table
//! maps float modules to quantized ones (`DEFAULT_STATIC_QUANT_MODULE_MAPPINGS`); its observed
//! entries are the modules `prepare` gives an output observer, its unobserved ones
//! (`DeQuantStub`, `Dropout`) are only marked by `prepare` and swapped by `convert`. The QAT and
//! dynamic tables map float modules to their QAT and dynamic forms ([`Swap`]).

use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use qkernels::elementwise::PerTensor;

use crate::functional::{FloatFunctional, QFunctional};
use crate::nn;
use crate::qconfig::QConfig;
use crate::quantized::{
    DynamicQuantizedGRU, DynamicQuantizedGRUCell, DynamicQuantizedLSTM, DynamicQuantizedLSTMCell,
    DynamicQuantizedLinear, DynamicQuantizedRNNCell, QuantizedAct, QuantizedBatchNorm, QuantizedConv,
    QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedLinear, activation as qa,
};
use crate::stubs::{DeQuantStub, DeQuantize, QuantStub, Quantize};
use crate::{GraphError, GraphResult, Module};

/// A module type in a mapping: its Rust type and its class name ([`Module::type_name`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleKey {
    type_id: TypeId,
    name: String,
}

impl ModuleKey {
    /// The key of Rust type `T` printing as `name`.
    pub fn new<T: Module>(name: impl Into<String>) -> Self {
        Self { type_id: TypeId::of::<T>(), name: name.into() }
    }

    /// The key of `module`.
    pub fn of(module: &dyn Module) -> Self {
        Self { type_id: module.as_any().type_id(), name: module.type_name().to_string() }
    }

    /// The class name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for ModuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Display for ModuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The tables besides the static one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Swap {
    /// Float to QAT modules (`prepare_qat`; PyTorch's `DEFAULT_QAT_MODULE_MAPPINGS`).
    Qat,
    /// Float to dynamically quantized modules (`quantize_dynamic`;
    /// `DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS`).
    Dynamic,
}

/// Quantizes an observed float module with its qconfig and output parameters.
type StaticFn = Arc<dyn Fn(&dyn Module, &QConfig, PerTensor) -> GraphResult<Box<dyn Module>> + Send + Sync>;
/// Swaps a float module for its QAT or dynamic form, given its qconfig.
type SwapFn = Arc<dyn Fn(&dyn Module, &QConfig) -> GraphResult<Box<dyn Module>> + Send + Sync>;
/// Builds the activation post-process `prepare` attaches to a module, given its qconfig.
type PostFn = Arc<dyn Fn(&dyn Module, &QConfig) -> GraphResult<Box<dyn Module>> + Send + Sync>;
/// Records a module's qconfig (or its absence) in it, at prepare.
type MarkFn = Arc<dyn Fn(&mut dyn Module, Option<&QConfig>) + Send + Sync>;
/// The module's replacement at convert, if `prepare` marked it for one.
type TakeFn = Arc<dyn Fn(&dyn Module) -> GraphResult<Option<Box<dyn Module>>> + Send + Sync>;

/// An entry of the static table.
#[derive(Clone)]
enum StaticEntry {
    /// Observed at prepare, quantized at convert with the observer's output parameters.
    Observed(StaticFn),
    /// Not observed: marked at prepare, swapped at convert if marked.
    Unobserved { mark: MarkFn, take: TakeFn },
}

/// The module mappings of the workflow (see the [module documentation](self)).
/// [`Mappings::default`] is [`get_default_static_quant_module_mappings`]; a crate with modules
/// of its own registers them on a copy and calls [`prepare_with`](crate::workflow::prepare_with),
/// [`convert_with`](crate::workflow::convert_with) or
/// [`quantize_with`](crate::workflow::quantize_with).
#[derive(Clone)]
pub struct Mappings {
    static_table: BTreeMap<ModuleKey, StaticEntry>,
    qat: BTreeMap<ModuleKey, SwapFn>,
    dynamic: BTreeMap<ModuleKey, SwapFn>,
    post_process: Option<PostFn>,
}

impl fmt::Debug for Mappings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mappings")
            .field("static", &self.static_table.keys().collect::<Vec<_>>())
            .field("qat", &self.qat.keys().collect::<Vec<_>>())
            .field("dynamic", &self.dynamic.keys().collect::<Vec<_>>())
            .field("post_process", &self.post_process.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// `module` as the `F` its key says it is (an error, not a panic, if a key was registered for
/// another type).
fn typed<'a, F: Module>(module: &'a dyn Module, key: &str) -> GraphResult<&'a F> {
    module.downcast_ref::<F>().ok_or_else(|| GraphError::Workflow {
        step: "convert",
        reason: format!(
            "the mapping entry {key} is for {}, but the module is another type",
            std::any::type_name::<F>()
        ),
    })
}

impl Mappings {
    /// Empty tables: nothing is observed or swapped.
    pub fn empty() -> Self {
        Self {
            static_table: BTreeMap::new(),
            qat: BTreeMap::new(),
            dynamic: BTreeMap::new(),
            post_process: None,
        }
    }

    /// `prepare` observes float modules of type `F` named `name`; `convert` replaces each by
    /// `swap(float, qconfig, output parameters)`.
    pub fn register_static<F: Module>(
        &mut self,
        name: &str,
        swap: impl Fn(&F, &QConfig, PerTensor) -> GraphResult<Box<dyn Module>> + Send + Sync + 'static,
    ) -> &mut Self {
        let key = name.to_string();
        let swap: StaticFn = Arc::new(move |m, qconfig, out_q| swap(typed::<F>(m, &key)?, qconfig, out_q));
        self.static_table.insert(ModuleKey::new::<F>(name), StaticEntry::Observed(swap));
        self
    }

    /// Modules of type `F` named `name` get no observer: `prepare` calls `mark(module, qconfig)`
    /// and `convert` replaces the module by `take(module)` when that is `Some` (PyTorch's
    /// `DeQuantStub` and `Dropout`, swapped only when they have a qconfig).
    pub fn register_unobserved<F: Module>(
        &mut self,
        name: &str,
        mark: impl Fn(&mut F, Option<&QConfig>) + Send + Sync + 'static,
        take: impl Fn(&F) -> GraphResult<Option<Box<dyn Module>>> + Send + Sync + 'static,
    ) -> &mut Self {
        let key = name.to_string();
        let mark: MarkFn = Arc::new(move |m, qconfig| {
            if let Some(m) = m.as_any_mut().downcast_mut::<F>() {
                mark(m, qconfig);
            }
        });
        let take: TakeFn = Arc::new(move |m| take(typed::<F>(m, &key)?));
        self.static_table.insert(ModuleKey::new::<F>(name), StaticEntry::Unobserved { mark, take });
        self
    }

    /// Adds to the QAT or dynamic table: modules of type `F` named `name` with a qconfig become
    /// `swap(module, qconfig)`.
    pub fn register_swap<F: Module>(
        &mut self,
        table: Swap,
        name: &str,
        swap: impl Fn(&F, &QConfig) -> GraphResult<Box<dyn Module>> + Send + Sync + 'static,
    ) -> &mut Self {
        let key = name.to_string();
        let swap: SwapFn = Arc::new(move |m, qconfig| swap(typed::<F>(m, &key)?, qconfig));
        self.table_mut(table).insert(ModuleKey::new::<F>(name), swap);
        self
    }

    /// `prepare` gives each observed module `build(module, qconfig)` as its
    /// `activation_post_process` instead of an observer of `qconfig.activation` (QAT attaches fake
    /// quantizers this way). The module built must be an
    /// [`ActivationPostProcess`](crate::workflow::ActivationPostProcess).
    pub fn set_activation_post_process(
        &mut self,
        build: impl Fn(&dyn Module, &QConfig) -> GraphResult<Box<dyn Module>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.post_process = Some(Arc::new(build));
        self
    }

    /// The activation post-process set by
    /// [`set_activation_post_process`](Mappings::set_activation_post_process) for `module`, if
    /// one is set (else `prepare` attaches an observer).
    pub fn activation_post_process(
        &self,
        module: &dyn Module,
        qconfig: &QConfig,
    ) -> Option<GraphResult<Box<dyn Module>>> {
        self.post_process.as_ref().map(|build| build(module, qconfig))
    }

    /// Removes `key` from every table (e.g. to keep a type float whatever its qconfig).
    pub fn remove(&mut self, key: &ModuleKey) -> &mut Self {
        self.static_table.remove(key);
        self.qat.remove(key);
        self.dynamic.remove(key);
        self
    }

    fn table_mut(&mut self, table: Swap) -> &mut BTreeMap<ModuleKey, SwapFn> {
        match table {
            Swap::Qat => &mut self.qat,
            Swap::Dynamic => &mut self.dynamic,
        }
    }

    /// The keys of the static table, sorted.
    pub fn static_keys(&self) -> impl Iterator<Item = &ModuleKey> {
        self.static_table.keys()
    }

    /// The keys of the QAT or dynamic table, sorted.
    pub fn swap_keys(&self, table: Swap) -> impl Iterator<Item = &ModuleKey> {
        match table {
            Swap::Qat => self.qat.keys(),
            Swap::Dynamic => self.dynamic.keys(),
        }
    }

    /// True if `prepare` puts an output observer on `module` (it has an observed static entry).
    pub fn is_observed(&self, module: &dyn Module) -> bool {
        matches!(self.static_table.get(&ModuleKey::of(module)), Some(StaticEntry::Observed(_)))
    }

    /// Marks an unobserved static module with its qconfig; false if `module` has no such entry.
    pub fn mark(&self, module: &mut dyn Module, qconfig: Option<&QConfig>) -> bool {
        match self.static_table.get(&ModuleKey::of(module)) {
            Some(StaticEntry::Unobserved { mark, .. }) => {
                mark(module, qconfig);
                true
            }
            _ => false,
        }
    }

    /// The replacement of a marked unobserved module, if it has an entry and was marked.
    pub fn take(&self, module: &dyn Module) -> GraphResult<Option<Box<dyn Module>>> {
        match self.static_table.get(&ModuleKey::of(module)) {
            Some(StaticEntry::Unobserved { take, .. }) => take(module),
            _ => Ok(None),
        }
    }

    /// The quantized module for an observed float module.
    pub fn quantize(
        &self,
        float: &dyn Module,
        qconfig: &QConfig,
        out_q: PerTensor,
    ) -> GraphResult<Box<dyn Module>> {
        match self.static_table.get(&ModuleKey::of(float)) {
            Some(StaticEntry::Observed(swap)) => swap(float, qconfig, out_q),
            _ => Err(GraphError::Workflow {
                step: "convert",
                reason: format!(
                    "{} has no quantized counterpart in the mapping; register one with \
                     Mappings::register_static, or give it qconfig None so that it stays float",
                    float.type_name()
                ),
            }),
        }
    }

    /// The QAT or dynamic form of `module`, if the table has it.
    pub fn swap(
        &self,
        table: Swap,
        module: &dyn Module,
        qconfig: &QConfig,
    ) -> Option<GraphResult<Box<dyn Module>>> {
        let t = match table {
            Swap::Qat => &self.qat,
            Swap::Dynamic => &self.dynamic,
        };
        t.get(&ModuleKey::of(module)).map(|swap| swap(module, qconfig))
    }
}

impl Default for Mappings {
    /// [`get_default_static_quant_module_mappings`].
    fn default() -> Self {
        get_default_static_quant_module_mappings()
    }
}

fn boxed<M: Module>(m: GraphResult<M>) -> GraphResult<Box<dyn Module>> {
    Ok(Box::new(m?))
}

/// The quantized form of a fused module.
fn quantize_fused(fused: &nn::Fused, qconfig: &QConfig, out_q: PerTensor) -> GraphResult<Box<dyn Module>> {
    let base = fused.base();
    let expect = |what: &str| GraphError::Workflow {
        step: "convert",
        reason: format!("the first module of {} is not the library's {what}", fused.kind().type_name()),
    };
    let act = if fused.kind().is_relu6() { QuantizedAct::Relu6 } else { QuantizedAct::Relu };
    let weight = &qconfig.weight;
    match fused.kind() {
        nn::FusedKind::ConvReLU(_) | nn::FusedKind::ConvReLU6(_) => {
            let conv = base.downcast_ref::<nn::Conv>().ok_or_else(|| expect("Conv"))?;
            boxed(QuantizedConv::from_float(conv, act, weight, out_q))
        }
        nn::FusedKind::LinearReLU | nn::FusedKind::LinearReLU6 => {
            let linear = base.downcast_ref::<nn::Linear>().ok_or_else(|| expect("Linear"))?;
            boxed(QuantizedLinear::from_float(linear, act, weight, out_q))
        }
        nn::FusedKind::BNReLU(_) => {
            let bn = base.downcast_ref::<nn::BatchNorm>().ok_or_else(|| expect("BatchNorm"))?;
            boxed(QuantizedBatchNorm::from_float(bn, true, out_q))
        }
        kind @ (nn::FusedKind::ConvBn(_) | nn::FusedKind::ConvBnReLU(_) | nn::FusedKind::LinearBn1d) => {
            Err(GraphError::Workflow {
                step: "convert",
                reason: format!(
                    "{} keeps its batch norm for quantization-aware training; prepare it with prepare_qat (its QAT form \
                 folds the batch norm), or fuse with fuse_modules in eval mode for post-training quantization",
                    kind.type_name()
                ),
            })
        }
    }
}

/// PyTorch's `DEFAULT_STATIC_QUANT_MODULE_MAPPINGS` for the modules of this crate, plus the fused
/// ReLU6 forms: `QuantStub` to `Quantize`, `DeQuantStub` to `DeQuantize`, `FloatFunctional` to
/// `QFunctional`, `Conv1d/2d/3d`, `Linear`, `BatchNorm2d/3d` and their fused ReLU (and ReLU6)
/// forms to the quantized layers, `ReLU6`, `Hardswish`, `ELU`, `LeakyReLU` and `Dropout` to the
/// quantized activations. Other modules (ReLU, pooling, Hardsigmoid, ...) stay and run on
/// quantized values.
///
/// ```
/// use qgraph::mappings::{ModuleKey, get_default_static_quant_module_mappings};
/// use qgraph::nn;
/// let mappings = get_default_static_quant_module_mappings();
/// assert!(mappings.is_observed(&nn::Linear::new(4, 2, true)));
/// assert!(!mappings.is_observed(&nn::ReLU::new()));
/// assert!(mappings.static_keys().any(|k| k == &ModuleKey::new::<nn::Conv>("Conv2d")));
/// ```
pub fn get_default_static_quant_module_mappings() -> Mappings {
    let mut m = Mappings::empty();
    m.register_static::<QuantStub>("QuantStub", |_, _, out_q| boxed(Quantize::new(out_q)));
    m.register_static::<FloatFunctional>("FloatFunctional", |_, _, out_q| boxed(QFunctional::new(out_q)));
    for name in ["Conv1d", "Conv2d", "Conv3d"] {
        m.register_static::<nn::Conv>(name, |conv, qconfig, out_q| {
            boxed(QuantizedConv::from_float(conv, QuantizedAct::None, &qconfig.weight, out_q))
        });
    }
    m.register_static::<nn::Linear>("Linear", |linear, qconfig, out_q| {
        boxed(QuantizedLinear::from_float(linear, QuantizedAct::None, &qconfig.weight, out_q))
    });
    for name in ["BatchNorm2d", "BatchNorm3d"] {
        m.register_static::<nn::BatchNorm>(name, |bn, _, out_q| {
            boxed(QuantizedBatchNorm::from_float(bn, false, out_q))
        });
    }
    for kind in [
        nn::FusedKind::ConvReLU(1),
        nn::FusedKind::ConvReLU(2),
        nn::FusedKind::ConvReLU(3),
        nn::FusedKind::ConvReLU6(1),
        nn::FusedKind::ConvReLU6(2),
        nn::FusedKind::ConvReLU6(3),
        nn::FusedKind::LinearReLU,
        nn::FusedKind::LinearReLU6,
        nn::FusedKind::BNReLU(2),
        nn::FusedKind::BNReLU(3),
    ] {
        m.register_static::<nn::Fused>(&kind.type_name(), quantize_fused);
    }
    m.register_static::<nn::ReLU6>("ReLU6", |_, _, _| boxed(Ok(qa::ReLU6::new())));
    m.register_static::<nn::Hardswish>("Hardswish", |_, _, out_q| boxed(qa::Hardswish::new(out_q)));
    m.register_static::<nn::ELU>("ELU", |elu, _, out_q| boxed(qa::ELU::new(out_q, elu.alpha())));
    m.register_static::<nn::LeakyReLU>("LeakyReLU", |relu, _, out_q| {
        boxed(qa::LeakyReLU::new(out_q, relu.negative_slope()))
    });
    m.register_unobserved::<DeQuantStub>(
        "DeQuantStub",
        |stub, qconfig| stub.qconfig = qconfig.cloned(),
        |stub| Ok(stub.qconfig.is_some().then(|| Box::new(DeQuantize::new()) as Box<dyn Module>)),
    );
    m.register_unobserved::<nn::Dropout>(
        "Dropout",
        |dropout, qconfig| dropout.swap_at_convert = qconfig.is_some(),
        |dropout| {
            let quantized = || qa::Dropout::new(dropout.p()).map(|q| q.with_inplace(dropout.inplace()));
            dropout.swap_at_convert.then(|| boxed(quantized())).transpose()
        },
    );
    m
}

/// PyTorch's `DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS` for the modules of this crate: what
/// [`quantize_dynamic`](crate::workflow::quantize_dynamic) swaps. `Linear` and the fused
/// `LinearReLU` become `DynamicQuantizedLinear(ReLU)`; `Embedding` and `EmbeddingBag` become their weight-only quantized forms (quint8 or quint4x2, as the qconfig's weight observer
/// says).
///
/// ```
/// use qgraph::mappings::{ModuleKey, Swap, get_default_dynamic_quant_module_mappings};
/// use qgraph::nn;
/// let mappings = get_default_dynamic_quant_module_mappings();
/// assert!(mappings.swap_keys(Swap::Dynamic).any(|k| k == &ModuleKey::new::<nn::EmbeddingBag>("EmbeddingBag")));
/// ```
pub fn get_default_dynamic_quant_module_mappings() -> Mappings {
    let mut m = Mappings::empty();
    register_linear_dynamic(&mut m);
    register_embedding_dynamic(&mut m);
    register_rnn_dynamic(&mut m);
    m
}

/// The dynamic entries of `Linear` (to `DynamicQuantizedLinear`) and the fused `LinearReLU` (to
/// `DynamicQuantizedLinearReLU`).
fn register_linear_dynamic(m: &mut Mappings) {
    m.register_swap::<nn::Linear>(Swap::Dynamic, "Linear", |linear, qconfig| {
        boxed(DynamicQuantizedLinear::from_float(linear, qconfig, false))
    });
    m.register_swap::<nn::Fused>(Swap::Dynamic, &nn::FusedKind::LinearReLU.type_name(), |fused, qconfig| {
        boxed(DynamicQuantizedLinear::from_fused(fused, qconfig))
    });
}

/// The dynamic entries of the recurrent modules (`nnqd.LSTM`, `GRU` and the cells).
fn register_rnn_dynamic(m: &mut Mappings) {
    m.register_swap::<nn::LSTM>(Swap::Dynamic, "LSTM", |f, q| boxed(DynamicQuantizedLSTM::from_float(f, q)));
    m.register_swap::<nn::GRU>(Swap::Dynamic, "GRU", |f, q| boxed(DynamicQuantizedGRU::from_float(f, q)));
    m.register_swap::<nn::LSTMCell>(Swap::Dynamic, "LSTMCell", |f, q| {
        boxed(DynamicQuantizedLSTMCell::from_float(f, q))
    });
    m.register_swap::<nn::GRUCell>(Swap::Dynamic, "GRUCell", |f, q| {
        boxed(DynamicQuantizedGRUCell::from_float(f, q))
    });
    m.register_swap::<nn::RNNCell>(Swap::Dynamic, "RNNCell", |f, q| {
        boxed(DynamicQuantizedRNNCell::from_float(f, q))
    });
}

/// The dynamic entries of `Embedding` and `EmbeddingBag`.
fn register_embedding_dynamic(m: &mut Mappings) {
    m.register_swap::<nn::Embedding>(Swap::Dynamic, "Embedding", |emb, qconfig| {
        boxed(QuantizedEmbedding::from_float(emb, &qconfig.weight))
    });
    m.register_swap::<nn::EmbeddingBag>(Swap::Dynamic, "EmbeddingBag", |bag, qconfig| {
        boxed(QuantizedEmbeddingBag::from_float(bag, &qconfig.weight))
    });
}
