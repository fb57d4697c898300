//! Quantization-aware training modules (`torch.ao.nn.qat`, `torch.ao.nn.intrinsic.qat`), the QAT
//! qconfigs, and `prepare_qat` / `convert` on qgraph's workflow.
//!
//! A QAT qconfig is a qgraph [`QConfig`](qgraph::qconfig::QConfig) (the observers) plus the fake quantizer classes that wrap
//! them ([`QatQConfig`], PyTorch's `FakeQuantize.with_args(observer=...)`). [`prepare_qat`] swaps
//! float layers (and `fuse_modules_qat`'s fused ones) for their QAT forms, whose weights pass
//! through a `weight_fake_quant`, and gives every module with a qconfig a fake-quantizing
//! `activation_post_process`; [`convert`] turns the trained model into the quantized modules
//! post-training quantization makes, with the parameters the fake quantizers chose.

/// The `Module` methods a QAT module forwards to the float module it wraps (field `$inner`): the
/// printout, the parameters, and train / eval mode (also kept in the QAT module's `training`).
macro_rules! delegate_to_float {
    ($inner:tt) => {
        fn extra_repr(&self) -> String {
            self.$inner.extra_repr()
        }

        fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
            self.$inner.params()
        }

        fn params_mut(&mut self) -> Vec<(&'static str, &mut ArrayD<f32>)> {
            self.$inner.params_mut()
        }

        fn training(&self) -> bool {
            self.training
        }

        fn set_training(&mut self, training: bool) {
            self.training = training;
            self.$inner.set_training(training);
        }
    };
}

pub(crate) mod bn_fold;
pub(crate) mod conv;
pub(crate) mod embedding;
pub(crate) mod linear;
pub(crate) mod linear_bn;
mod qconfig;

pub use conv::{QatConv, QatConvKind};
pub use embedding::{QatEmbedding, QatEmbeddingBag};
pub use linear::QatLinear;
pub use linear_bn::QatLinearBn;
pub use qconfig::{
    FakeQuantKind, FakeQuantKinds, QatQConfig, default_embedding_qat_qconfig,
    default_embedding_qat_qconfig_4bit, default_qat_qconfig, default_qat_qconfig_v2, get_default_qat_qconfig,
};

use qgraph::io::Loaders;
use qgraph::mappings::{Mappings, Swap};
use qgraph::nn::{self, FusedKind};
use qgraph::quantized::{QuantizedAct, QuantizedConv, QuantizedLinear};
use qgraph::{GraphError, Module, QConfigMapping};

use crate::fake_quantize::{FakeQuantModule, QFakeResult};

/// qgraph's default mappings plus QAT: float `Conv{1,2,3}d`, `Linear` and the fused
/// `ConvBn{n}d`, `ConvBnReLU{n}d`, `ConvReLU{n}d`, `LinearReLU` become their QAT forms at
/// `prepare_qat` (PyTorch's `DEFAULT_QAT_MODULE_MAPPINGS`), observed modules get an
/// `activation_post_process` fake quantizer of `kinds.activation`, and the QAT modules become the
/// quantized ones at convert (as in `DEFAULT_STATIC_QUANT_MODULE_MAPPINGS`).
pub fn qat_mappings(kinds: FakeQuantKinds) -> Mappings {
    let mut m = Mappings::default();
    for dims in 1..=3 {
        // PyTorch's table has Conv2d / Conv3d and ConvReLU2d / ConvReLU3d, and the batch-norm
        // forms in every rank: a Conv1d stays float (observed, then quantized at convert).
        if dims > 1 {
            m.register_swap::<nn::Conv>(Swap::Qat, &format!("Conv{dims}d"), move |conv, qconfig| {
                Ok(Box::new(QatConv::from_conv(conv, qconfig, kinds.weight)?))
            });
        }
        let fused: &[FusedKind] = if dims > 1 {
            &[FusedKind::ConvReLU(dims), FusedKind::ConvBn(dims), FusedKind::ConvBnReLU(dims)]
        } else {
            &[FusedKind::ConvBn(dims), FusedKind::ConvBnReLU(dims)]
        };
        for kind in fused {
            m.register_swap::<nn::Fused>(Swap::Qat, &kind.type_name(), move |f, qconfig| {
                Ok(Box::new(QatConv::from_fused(f, qconfig, kinds.weight)?))
            });
        }
        for kind in [QatConvKind::Conv, QatConvKind::ConvReLU, QatConvKind::ConvBn, QatConvKind::ConvBnReLU] {
            m.register_static::<QatConv>(&kind.type_name(dims), |qat, _, out_q| {
                let (conv, weight) = qat.quantized_weight()?;
                Ok(Box::new(QuantizedConv::with_weight(&conv, qat.kind().quantized_act(), weight, out_q)?))
            });
        }
    }
    m.register_swap::<nn::Linear>(Swap::Qat, "Linear", move |linear, qconfig| {
        Ok(Box::new(QatLinear::from_linear(linear, qconfig, kinds.weight)?))
    });
    m.register_swap::<nn::Fused>(Swap::Qat, &FusedKind::LinearReLU.type_name(), move |f, qconfig| {
        Ok(Box::new(QatLinear::from_fused(f, qconfig, kinds.weight)?))
    });
    m.register_swap::<nn::Fused>(Swap::Qat, &FusedKind::LinearBn1d.type_name(), move |f, qconfig| {
        Ok(Box::new(QatLinearBn::from_fused(f, qconfig, kinds.weight)?))
    });
    m.register_static::<QatLinearBn>("LinearBn1d", |qat, _, out_q| {
        let (linear, weight) = qat.quantized_weight()?;
        Ok(Box::new(QuantizedLinear::with_weight(&linear, QuantizedAct::None, weight, out_q)?))
    });
    for name in ["Linear", "LinearReLU"] {
        m.register_static::<QatLinear>(name, |qat, _, out_q| {
            let (linear, weight) = qat.quantized_weight()?;
            let act = if qat.relu() { QuantizedAct::Relu } else { QuantizedAct::None };
            Ok(Box::new(QuantizedLinear::with_weight(&linear, act, weight, out_q)?))
        });
    }
    m.set_activation_post_process(move |_, qconfig| {
        Ok(Box::new(FakeQuantModule::new(kinds.activation.build(&qconfig.activation, None)?)))
    });
    m
}

/// [`qat_mappings`] plus the embeddings (PyTorch's `get_embedding_qat_module_mappings()` for
/// `prepare_qat` and `get_embedding_static_quant_module_mappings()` for `convert`, which the
/// default tables leave out): `Embedding` and `EmbeddingBag` with a float-qparams weight qconfig
/// ([`default_embedding_qat_qconfig`]) become [`QatEmbedding`] / [`QatEmbeddingBag`], whose
/// table fake quantizer is always a `FakeQuantize` (as `default_embedding_fake_quant`) and which
/// get no activation post-process (their `NoopObserver` keeps the output float); `convert` makes
/// them `QuantizedEmbedding` / `QuantizedEmbeddingBag`. Use with `qgraph::prepare_qat_with` and
/// `qgraph::convert_with`.
///
/// ```
/// use qgraph::nn::{EmbeddingBag, EmbeddingBagMode};
/// use qgraph::{Module, QConfigMapping, Sequential, train};
/// let mut model: Box<dyn Module> =
///     Box::new(Sequential::new(vec![Box::new(EmbeddingBag::new(10, 4, EmbeddingBagMode::Sum)?)]));
/// train(&mut model, true);
/// let qat = qfake::default_embedding_qat_qconfig();
/// let mappings = qfake::qat::embedding_qat_mappings(qat.kinds);
/// qgraph::prepare_qat_with(&mut model, &QConfigMapping::global(qat.qconfig), &mappings)?;
/// assert_eq!(model.get("0.weight_fake_quant")?.type_name(), "FakeQuantize");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn embedding_qat_mappings(kinds: FakeQuantKinds) -> Mappings {
    let mut m = qat_mappings(kinds);
    m.register_swap::<nn::Embedding>(Swap::Qat, "Embedding", |e, qconfig| {
        Ok(Box::new(QatEmbedding::from_float(e, qconfig)?))
    });
    m.register_swap::<nn::EmbeddingBag>(Swap::Qat, "EmbeddingBag", |e, qconfig| {
        Ok(Box::new(QatEmbeddingBag::from_float(e, qconfig)?))
    });
    m.register_unobserved::<QatEmbedding>("Embedding", |_, _| {}, |m| Ok(Some(Box::new(m.quantized()?))));
    m.register_unobserved::<QatEmbeddingBag>(
        "EmbeddingBag",
        |_, _| {},
        |m| Ok(Some(Box::new(m.quantized()?))),
    );
    m
}

/// PyTorch's `prepare_qat(model)` with a global QAT qconfig: see [`prepare_qat_with`].
///
/// ```
/// use qgraph::nn::Linear;
/// use qgraph::{Module, Sequential, train};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(4, 2, true))]));
/// train(&mut model, true);
/// qfake::prepare_qat(&mut model, &qfake::get_default_qat_qconfig("x86")?)?;
/// assert_eq!(model.get("0.weight_fake_quant")?.type_name(), "FusedMovingAvgObsFakeQuantize");
/// assert_eq!(model.get("0.activation_post_process")?.type_name(), "FusedMovingAvgObsFakeQuantize");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn prepare_qat(model: &mut Box<dyn Module>, qconfig: &QatQConfig) -> QFakeResult<usize> {
    prepare_qat_with(model, &QConfigMapping::global(qconfig.qconfig.clone()), qconfig.kinds)
}

/// `prepare_qat(model)` with a qconfig per module (`mapping`) and the fake quantizer classes
/// `kinds`: swaps layers for their QAT forms, then attaches fake-quantizing activation
/// post-processes (qgraph's `prepare_qat_with` on [`qat_mappings`]). The model should be in
/// training mode, as PyTorch asserts. Returns the number of post-processes attached.
pub fn prepare_qat_with(
    model: &mut Box<dyn Module>,
    mapping: &QConfigMapping,
    kinds: FakeQuantKinds,
) -> QFakeResult<usize> {
    if !model.named_modules().iter().any(|(_, m)| m.training()) {
        return Err(GraphError::Workflow {
            step: "prepare_qat",
            reason: "the model is in eval mode; prepare_qat needs train(&mut model, true) first, as PyTorch asserts".into(),
        });
    }
    qgraph::prepare_qat_with(model, mapping, &qat_mappings(kinds))
}

/// `convert(model)` of a QAT model: every QAT module becomes its quantized counterpart (batch
/// norm folded with its running statistics, weights quantized with the parameters of the
/// `weight_fake_quant` after it sees the final weight, as PyTorch's `from_float` does), with the
/// output parameters of its `activation_post_process`.
pub fn convert(model: &mut Box<dyn Module>, kinds: FakeQuantKinds) -> QFakeResult<()> {
    qgraph::convert_with(model, &qat_mappings(kinds))
}

/// qgraph's default loaders plus the QAT modules and fake quantizers.
pub fn loaders() -> Loaders {
    let mut loaders = Loaders::default();
    loaders.register(QatConv::SAVED_TYPE, |record| Ok(Box::new(QatConv::from_record(record)?)));
    loaders.register(QatLinear::SAVED_TYPE, |record| Ok(Box::new(QatLinear::from_record(record)?)));
    loaders.register(QatEmbedding::SAVED_TYPE, |record| Ok(Box::new(QatEmbedding::from_record(record)?)));
    loaders
        .register(QatEmbeddingBag::SAVED_TYPE, |record| Ok(Box::new(QatEmbeddingBag::from_record(record)?)));
    loaders.register(QatLinearBn::SAVED_TYPE, |record| Ok(Box::new(QatLinearBn::from_record(record)?)));
    loaders
        .register(FakeQuantModule::SAVED_TYPE, |record| Ok(Box::new(FakeQuantModule::from_record(record)?)));
    loaders
}

/// `freeze_bn_stats` on every QAT conv-bn module of the tree (PyTorch's
/// `model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)`): batch norm uses and keeps its
/// running statistics from now on. As PyTorch's function, it leaves `LinearBn1d` alone: call
/// [`QatLinearBn::freeze_bn_stats`] on it.
pub fn freeze_bn_stats(model: &mut Box<dyn Module>) {
    visit::<QatConv>(model.as_mut(), &mut |m| m.freeze_bn_stats());
}

/// `update_bn_stats` on every QAT conv-bn module (undoes [`freeze_bn_stats`]).
pub fn update_bn_stats(model: &mut Box<dyn Module>) {
    visit::<QatConv>(model.as_mut(), &mut |m| m.update_bn_stats());
}

/// `model.apply(disable_observer)` / `enable_observer`: every fake quantizer's observer.
pub fn set_observers_enabled(model: &mut Box<dyn Module>, enabled: bool) {
    visit::<FakeQuantModule>(model.as_mut(), &mut |m| m.lock().set_observer_enabled(enabled));
}

/// `model.apply(disable_fake_quant)` / `enable_fake_quant`: every fake quantizer.
pub fn set_fake_quant_enabled(model: &mut Box<dyn Module>, enabled: bool) {
    visit::<FakeQuantModule>(model.as_mut(), &mut |m| m.lock().set_fake_quant_enabled(enabled));
}

/// Calls `f` on every module of type `M` in the tree (inside prepared modules too).
fn visit<M: Module>(model: &mut dyn Module, f: &mut dyn FnMut(&mut M)) {
    if let Some(m) = model.downcast_mut::<M>() {
        f(m);
    }
    if let Some(observed) = model.downcast_mut::<qgraph::workflow::Observed>() {
        visit(observed.inner_mut(), f);
        if let Some(post) = observed.child_slot(qgraph::workflow::Observed::POST) {
            visit(post.as_mut(), f);
        }
        return;
    }
    let names: Vec<String> = model.children().into_iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        if let Some(child) = model.child_slot(&name) {
            visit(child.as_mut(), f);
        }
    }
}
