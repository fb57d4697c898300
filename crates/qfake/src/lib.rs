//! Quantization-aware training: QAT versions of the qgraph modules whose weights are
//! fake-quantized with the element rules of [`qcore::fake_quant`] in forward, and the mappings
//! and loaders that add them to qgraph's workflow without changing qgraph.
//!
//! ```
//! use qgraph::nn::Linear;
//! use qgraph::qconfig::default_qconfig;
//! use qgraph::{Module, QConfigMapping, Sequential, prepare_qat_with};
//! let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(4, 2, true))]));
//! let mappings = qfake::qat_mappings();
//! prepare_qat_with(&mut model, &QConfigMapping::global(default_qconfig()), &mappings)?;
//! let observed = model.get("0")?.downcast_ref::<qgraph::workflow::Observed>().expect("observed");
//! assert!(observed.inner().is::<qfake::Linear>());
//! # Ok::<(), qgraph::GraphError>(())
//! ```

mod fake_quantize;
pub mod grad;
mod linear;

pub use fake_quantize::{
    FakeQuantCtx, FakeQuantFlags, FakeQuantGrads, FakeQuantModule, FakeQuantize, FakeQuantizer,
    FixedQParamsFakeQuantize, FusedMovingAvgObsFakeQuantize, LearnableFakeQuantize, LearnedCtx, QFakeResult,
    default_fake_quant, default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant, default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant, default_fused_wt_fake_quant,
    default_per_channel_weight_fake_quant, default_weight_fake_quant,
};
pub use linear::Linear;
pub use qgraph;

use qgraph::io::Loaders;
use qgraph::mappings::{Mappings, Swap};
use qgraph::quantized::{QuantizedAct, QuantizedLinear};

/// qgraph's default mappings plus the QAT modules: `nn.Linear` becomes [`Linear`] at
/// `prepare_qat` (PyTorch's `DEFAULT_QAT_MODULE_MAPPINGS`), and [`Linear`] is observed at prepare
/// and becomes `QuantizedLinear` at convert (its entry in `DEFAULT_STATIC_QUANT_MODULE_MAPPINGS`).
pub fn qat_mappings() -> Mappings {
    let mut mappings = Mappings::default();
    mappings.register_swap::<qgraph::nn::Linear>(Swap::Qat, "Linear", |float, qconfig| {
        Ok(Box::new(Linear::from_float(float, qconfig)?))
    });
    mappings.register_static::<Linear>("Linear", |qat, qconfig, out_q| {
        Ok(Box::new(QuantizedLinear::from_float(qat.float(), QuantizedAct::None, &qconfig.weight, out_q)?))
    });
    mappings
}

/// qgraph's default loaders plus the QAT modules (saved as [`Linear::SAVED_TYPE`]).
pub fn loaders() -> Loaders {
    let mut loaders = Loaders::default();
    loaders.register(Linear::SAVED_TYPE, |record| Ok(Box::new(Linear::from_record(record)?)));
    loaders
}
