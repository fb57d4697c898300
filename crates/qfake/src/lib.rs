//! Quantization-aware training: PyTorch's fake quantizers, QAT modules (batch norm folded at
//! every step), `prepare_qat` and `convert` on qgraph's workflow, a layer-wise backward pass over
//! the module tree, and the optimizers that train it.
//!
//! ```
//! use qgraph::nn::Linear;
//! use qgraph::{Module, Sequential, train};
//! let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(4, 2, true))]));
//! train(&mut model, true);
//! qfake::prepare_qat(&mut model, &qfake::get_default_qat_qconfig("x86")?)?;
//! let observed = model.get("0")?.downcast_ref::<qgraph::workflow::Observed>().expect("observed");
//! assert!(observed.inner().is::<qfake::QatLinear>());
//! # Ok::<(), qgraph::GraphError>(())
//! ```

pub mod checkpoint;
mod fake_quantize;
pub mod grad;
pub mod optim;
pub mod qat;
pub mod train;

pub use fake_quantize::{
    FakeQuantCtx, FakeQuantFlags, FakeQuantGrads, FakeQuantModule, FakeQuantState, FakeQuantize,
    FakeQuantizer, FixedQParamsFakeQuantize, FusedMovingAvgObsFakeQuantize, LearnableFakeQuantize,
    LearnedCtx, QFakeResult, default_embedding_fake_quant, default_embedding_fake_quant_4bit,
    default_fake_quant, default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant, default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant, default_fused_wt_fake_quant,
    default_per_channel_weight_fake_quant, default_weight_fake_quant,
};
pub use qat::{
    FakeQuantKind, FakeQuantKinds, QatConv, QatConvKind, QatEmbedding, QatEmbeddingBag, QatLinear,
    QatLinearBn, QatQConfig, convert, default_embedding_qat_qconfig, default_embedding_qat_qconfig_4bit,
    default_qat_qconfig, default_qat_qconfig_v2, freeze_bn_stats, get_default_qat_qconfig, loaders,
    prepare_qat, prepare_qat_with, qat_mappings,
};
pub use qgraph;
