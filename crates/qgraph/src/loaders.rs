//! The loader registry ([`Loaders`], re-exported as `io::Loaders`): how a saved module is rebuilt,
//! found by the type name its file records ([`Module::saved_type`]). The defaults know every
//! module of this crate; a crate defining its own modules registers them on a copy and loads with
//! [`crate::io::load_with`] / [`crate::io::from_bytes_with`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::container::{Graph, Sequential};
use crate::functional::{FloatFunctional, QFunctional};
use crate::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Conv, Dropout, ELU, Embedding, EmbeddingBag, Flatten, Fused,
    Hardsigmoid, Hardswish, Hardtanh, Identity, LeakyReLU, Linear, MaxPool, ReLU, ReLU6, Sigmoid, Softmax,
    Tanh, Threshold, Upsample,
};
use crate::nn::{GRU, GRUCell, LSTM, LSTMCell, RNN, RNNCell};
use crate::nn::{Permute, Squeeze};
use crate::quantized::{
    DynamicQuantizedGRU, DynamicQuantizedGRUCell, DynamicQuantizedLSTM, DynamicQuantizedLSTMCell,
    DynamicQuantizedLinear, DynamicQuantizedRNNCell, QuantizedBatchNorm, QuantizedConv, QuantizedEmbedding,
    QuantizedEmbeddingBag, QuantizedLinear, activation as qa,
};
use crate::record::Record;
use crate::stubs::{DeQuantStub, DeQuantize, QuantStub, QuantWrapper, Quantize};
use crate::workflow::{Observed, ObservedConfig, ObserverModule};
use crate::{GraphError, GraphResult, Module};

/// A function rebuilding a saved module from its record (configuration, tensors and rebuilt
/// children).
pub type LoadFn = dyn Fn(Record<'_>) -> GraphResult<Box<dyn Module>> + Send + Sync;

/// Loaders by saved type name. [`Loaders::default`] holds every module type of this crate;
/// [`Loaders::register`] and [`Loaders::register_config`] add others (or replace one).
///
/// ```
/// use qgraph::io::Loaders;
/// use qgraph::{GraphResult, Module, Value};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
/// struct Twice;
///
/// impl Module for Twice {
///     fn type_name(&self) -> &str {
///         "Twice"
///     }
///     fn forward(&self, input: Value) -> GraphResult<Value> {
///         Ok(Value::Float(input.into_float("Twice")? * 2.0))
///     }
/// }
///
/// let mut loaders = Loaders::default();
/// loaders.register_config::<Twice>("Twice");
/// let model: Box<dyn Module> = Box::new(Twice);
/// let loaded = qgraph::io::from_bytes_with(&qgraph::io::to_bytes(model.as_ref())?, &loaders)?;
/// assert_eq!(loaded.type_name(), "Twice");
/// assert!(qgraph::io::from_bytes(&qgraph::io::to_bytes(model.as_ref())?).is_err());
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Clone)]
pub struct Loaders {
    by_name: BTreeMap<String, Arc<LoadFn>>,
}

impl fmt::Debug for Loaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

/// Rebuilds a `T` from its configuration alone.
fn load_config<T: Module + DeserializeOwned>(record: Record<'_>) -> GraphResult<Box<dyn Module>> {
    Ok(Box::new(record.config::<T>()?))
}

impl Loaders {
    /// No loaders at all (not even the containers).
    pub fn empty() -> Self {
        Self { by_name: BTreeMap::new() }
    }

    /// Loads modules saved as `name` with `load`, replacing any loader of that name.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        load: impl Fn(Record<'_>) -> GraphResult<Box<dyn Module>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.by_name.insert(name.into(), Arc::new(load));
        self
    }

    /// Loads modules saved as `name` by deserializing their configuration as a `T` (for modules
    /// whose [`Module::config`] is their serde form and that save no tensors or children).
    pub fn register_config<T: Module + DeserializeOwned>(&mut self, name: impl Into<String>) -> &mut Self {
        self.register(name, load_config::<T>)
    }

    /// True if modules saved as `name` can be loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name) || name == Observed::SAVED_TYPE
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Rebuilds the module saved as `name` from `record`. A prepared module ([`Observed::SAVED_TYPE`]) is
    /// rebuilt around its observed module, which is loaded by its own name; any other unknown
    /// name with a `nodes` configuration is a [`Graph`] (a graph saves its model's class name);
    /// anything else is [`GraphError::UnknownModuleType`].
    pub fn build(&self, name: &str, record: Record<'_>) -> GraphResult<Box<dyn Module>> {
        if let Some(load) = self.by_name.get(name) {
            return load(record);
        }
        if name == Observed::SAVED_TYPE {
            return self.build_observed(record);
        }
        if record.config.get("nodes").is_some() {
            return Ok(Box::new(Graph::from_record(record)?));
        }
        Err(GraphError::UnknownModuleType { name: name.to_string(), path: record.path })
    }

    fn build_observed(&self, mut record: Record<'_>) -> GraphResult<Box<dyn Module>> {
        let config: ObservedConfig = record.config()?;
        let post = record.take_child(Observed::POST)?;
        if post.as_post_process().is_none() {
            return Err(record.tensors.mismatch(format!(
                "child `{}` is a {}, not an observer or fake quantizer",
                Observed::POST,
                post.saved_type()
            )));
        }
        let inner = Record { config: config.module.config, ..record };
        let inner = self.build(&config.module.saved_type, inner)?;
        Ok(Box::new(match post.downcast_ref::<ObserverModule>() {
            Some(observer) => Observed::restore(inner, config.qconfig, observer.clone())?,
            None => Observed::with_post_process(inner, config.qconfig, post)?,
        }))
    }
}

/// Registers `<$ty>::from_record` under each name.
macro_rules! from_record {
    ($loaders:ident: $($ty:ty => [$($name:literal),+ $(,)?]),+ $(,)?) => {
        $($(
            $loaders.register($name, |r| Ok(Box::new(<$ty>::from_record(r)?) as Box<dyn Module>));
        )+)+
    };
}

/// Registers `$ty` by its configuration under each name.
macro_rules! from_config {
    ($loaders:ident: $($ty:ty => $name:literal),+ $(,)?) => {
        $($loaders.register_config::<$ty>($name);)+
    };
}

impl Default for Loaders {
    /// Every module type of this crate: containers, stubs, float, fused and quantized modules,
    /// observers and prepared modules.
    fn default() -> Self {
        let mut l = Loaders::empty();
        from_record!(l:
            Sequential => ["Sequential"],
            QuantWrapper => ["QuantWrapper"],
            Quantize => ["Quantize"],
            QFunctional => ["QFunctional"],
            AdaptiveAvgPool2d => ["AdaptiveAvgPool2d"],
            Conv => ["Conv1d", "Conv2d", "Conv3d"],
            Linear => ["Linear"],
            BatchNorm => ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"],
            Fused => [
                "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "ConvReLU6_1d", "ConvReLU6_2d", "ConvReLU6_3d",
                "LinearReLU", "LinearReLU6", "BNReLU2d", "BNReLU3d", "ConvBn1d", "ConvBn2d", "ConvBn3d",
                "ConvBnReLU1d", "ConvBnReLU2d", "ConvBnReLU3d",
            ],
            QuantizedConv => [
                "QuantizedConv1d", "QuantizedConv2d", "QuantizedConv3d",
                "QuantizedConvReLU1d", "QuantizedConvReLU2d", "QuantizedConvReLU3d",
                "QuantizedConvReLU6_1d", "QuantizedConvReLU6_2d", "QuantizedConvReLU6_3d",
            ],
            QuantizedLinear => ["QuantizedLinear", "QuantizedLinearReLU", "QuantizedLinearReLU6"],
            QuantizedBatchNorm => [
                "QuantizedBatchNorm2d", "QuantizedBatchNorm3d", "QuantizedBNReLU2d", "QuantizedBNReLU3d",
            ],
            Dropout => ["Dropout"],
            Upsample => ["Upsample"],
            MaxPool<1> => ["MaxPool1d"],
            MaxPool<2> => ["MaxPool2d"],
            MaxPool<3> => ["MaxPool3d"],
            AvgPool2d => ["AvgPool2d"],
            qa::Hardswish => ["QuantizedHardswish"],
            qa::ELU => ["QuantizedELU"],
            qa::LeakyReLU => ["QuantizedLeakyReLU"],
            ObserverModule => ["ObserverModule"],
            LSTM => ["LSTM"],
            GRU => ["GRU"],
            RNN => ["RNN"],
            LSTMCell => ["LSTMCell"],
            GRUCell => ["GRUCell"],
            RNNCell => ["RNNCell"],
            Embedding => ["Embedding"],
            EmbeddingBag => ["EmbeddingBag"],
            QuantizedEmbedding => ["QuantizedEmbedding"],
            QuantizedEmbeddingBag => ["QuantizedEmbeddingBag"],
            DynamicQuantizedLinear => ["DynamicQuantizedLinear", "DynamicQuantizedLinearReLU"],
            DynamicQuantizedLSTM => ["DynamicQuantizedLSTM"],
            DynamicQuantizedGRU => ["DynamicQuantizedGRU"],
            DynamicQuantizedLSTMCell => ["DynamicQuantizedLSTMCell"],
            DynamicQuantizedGRUCell => ["DynamicQuantizedGRUCell"],
            DynamicQuantizedRNNCell => ["DynamicQuantizedRNNCell"],
            Permute => ["Permute"],
        );
        from_config!(l:
            QuantStub => "QuantStub",
            DeQuantStub => "DeQuantStub",
            DeQuantize => "DeQuantize",
            FloatFunctional => "FloatFunctional",
            Identity => "Identity",
            Flatten => "Flatten",
            Squeeze => "Squeeze",
            ReLU => "ReLU",
            ReLU6 => "ReLU6",
            Hardtanh => "Hardtanh",
            Hardswish => "Hardswish",
            Hardsigmoid => "Hardsigmoid",
            Threshold => "Threshold",
            Sigmoid => "Sigmoid",
            Tanh => "Tanh",
            LeakyReLU => "LeakyReLU",
            ELU => "ELU",
            Softmax => "Softmax",
            qa::ReLU6 => "QuantizedReLU6",
            qa::Dropout => "QuantizedDropout",
        );
        l
    }
}
