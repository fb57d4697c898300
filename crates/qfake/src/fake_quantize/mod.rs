//! PyTorch's fake-quantize modules (`torch.ao.quantization.fake_quantize`): forward with observer
//! updates as in training, and the straight-through backward, bit for bit with PyTorch 2.15.
//!
//! Every fake quantizer implements [`FakeQuantizer`], so QAT modules can hold any of them as a
//! `Box<dyn FakeQuantizer>`.

mod base;
mod common;
mod fixed;
mod learnable;

pub use base::{
    FakeQuantize, default_fake_quant, default_per_channel_weight_fake_quant, default_weight_fake_quant,
};
pub use common::{FakeQuantCtx, FakeQuantFlags, FakeQuantGrads, FakeQuantizer, LearnedCtx, QFakeResult};
pub use fixed::{
    FixedQParamsFakeQuantize, default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant,
};
pub use learnable::LearnableFakeQuantize;
