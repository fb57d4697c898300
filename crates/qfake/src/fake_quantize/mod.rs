//! PyTorch's fake-quantize modules (`torch.ao.quantization.fake_quantize`): forward with observer
//! updates as in training, and the straight-through backward, bit for bit with PyTorch 2.15.
//!
//! Every fake quantizer implements [`FakeQuantizer`], so QAT modules can hold any of them as a
//! `Box<dyn FakeQuantizer>`.

/// Implements [`FakeQuantizer::backward`], `flags` and `flags_mut` by the `inner` [`FakeQuantize`].
macro_rules! delegate_to_inner_fake_quantize {
    () => {
        fn backward(
            &self,
            ctx: &super::common::FakeQuantCtx,
            grad_out: &ndarray::ArrayD<f32>,
        ) -> super::common::QFakeResult<super::common::FakeQuantGrads> {
            self.inner.backward(ctx, grad_out)
        }

        fn flags(&self) -> &super::common::FakeQuantFlags {
            self.inner.flags()
        }

        fn flags_mut(&mut self) -> &mut super::common::FakeQuantFlags {
            self.inner.flags_mut()
        }
    };
}

mod base;
mod common;
mod fixed;
mod fused;
mod learnable;
mod module;
mod state;

pub(crate) use base::embedding_weight_observer;
pub use base::{
    FakeQuantize, default_embedding_fake_quant, default_embedding_fake_quant_4bit, default_fake_quant,
    default_per_channel_weight_fake_quant, default_weight_fake_quant,
};
pub(crate) use common::invalid;
pub use common::{
    FakeQuantCtx, FakeQuantFlags, FakeQuantGrads, FakeQuantState, FakeQuantizer, LearnedCtx, QFakeResult,
};
pub use fixed::{
    FixedQParamsFakeQuantize, default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant,
};
pub use fused::{
    FusedMovingAvgObsFakeQuantize, default_fused_act_fake_quant, default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
};
pub use learnable::LearnableFakeQuantize;
pub use module::FakeQuantModule;
