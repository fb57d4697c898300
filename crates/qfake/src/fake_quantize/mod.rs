//! PyTorch's fake-quantize modules (`torch.ao.quantization.fake_quantize`): forward with observer
//! updates as in training, and the straight-through backward, bit for bit with PyTorch 2.15.
//!
//! Every fake quantizer implements [`FakeQuantizer`], so QAT modules can hold any of them as a
//! `Box<dyn FakeQuantizer>`.

mod base;
mod fixed;
mod learnable;

pub use base::{
    FakeQuantize, default_fake_quant, default_per_channel_weight_fake_quant, default_weight_fake_quant,
};
pub use fixed::{
    FixedQParamsFakeQuantize, default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant,
};
pub use learnable::{LearnableFakeQuantize, LearnedCtx};

use ndarray::ArrayD;
use qgraph::GraphResult;

/// The result type of the fake quantizers (qfake reports errors as qgraph's `GraphError`).
pub type QFakeResult<T> = GraphResult<T>;

/// What [`FakeQuantizer::backward`] needs from the forward pass that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantCtx {
    /// Where the gradient passes straight through (`None`: fake quantization was disabled and the
    /// forward was the identity, so every gradient passes).
    pub mask: Option<ArrayD<bool>>,
    /// The input and parameters of a learnable fake quantization (`None` for the others).
    pub learned: Option<LearnedCtx>,
}

/// The gradients [`FakeQuantizer::backward`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantGrads {
    /// Gradient of the input.
    pub input: ArrayD<f32>,
    /// Gradient of a learned scale (`None` when the scale is not learned).
    pub scale: Option<ArrayD<f32>>,
    /// Gradient of a learned zero point (`None` when it is not learned).
    pub zero_point: Option<ArrayD<f32>>,
}

/// The training interface shared by the fake quantizers.
pub trait FakeQuantizer: std::fmt::Debug + Send + Sync {
    /// The training forward (PyTorch's `forward`): the observer sees `x` when enabled and the
    /// scale and zero point are recomputed; then `x` is fake-quantized when enabled.
    fn forward_train(&mut self, x: &ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, FakeQuantCtx)>;

    /// The gradients for `grad_out`, the gradient of the output of the forward that made `ctx`.
    fn backward(&self, ctx: &FakeQuantCtx, grad_out: &ArrayD<f32>) -> QFakeResult<FakeQuantGrads>;

    /// `enable_fake_quant(enabled)`.
    fn set_fake_quant_enabled(&mut self, enabled: bool);

    /// `enable_observer(enabled)`.
    fn set_observer_enabled(&mut self, enabled: bool);

    /// Whether forward fake-quantizes (`fake_quant_enabled[0] == 1`).
    fn fake_quant_enabled(&self) -> bool;

    /// Whether forward updates the observer (`observer_enabled[0] == 1`).
    fn observer_enabled(&self) -> bool;

    /// `enable_fake_quant()`.
    fn enable_fake_quant(&mut self) {
        self.set_fake_quant_enabled(true);
    }

    /// `disable_fake_quant()`.
    fn disable_fake_quant(&mut self) {
        self.set_fake_quant_enabled(false);
    }

    /// `enable_observer()`.
    fn enable_observer(&mut self) {
        self.set_observer_enabled(true);
    }

    /// `disable_observer()`.
    fn disable_observer(&mut self) {
        self.set_observer_enabled(false);
    }
}

/// The straight-through gradient: `grad_out * mask` (`fake_quantize_per_tensor_affine_cachemask_backward`) (the identity where `mask` is `None`).
pub(crate) fn straight_through(
    context: &'static str,
    ctx: &FakeQuantCtx,
    grad_out: &ArrayD<f32>,
) -> QFakeResult<ArrayD<f32>> {
    let Some(mask) = &ctx.mask else { return Ok(grad_out.clone()) };
    if mask.shape() != grad_out.shape() {
        return Err(invalid(
            context,
            "grad_out shape",
            grad_out.shape(),
            format!("must equal the shape of the forward input, {:?}", mask.shape()),
        ));
    }
    let mut grad = grad_out.clone();
    // PyTorch's `dY * mask` (a masked negative gradient becomes -0.0).
    grad.zip_mut_with(mask, |g, &m| *g *= f32::from(u8::from(m)));
    Ok(grad)
}

/// A [`qgraph::GraphError::InvalidArgument`] naming the module, the argument and the fix.
pub(crate) fn invalid(
    context: &'static str,
    what: &'static str,
    value: impl std::fmt::Debug,
    reason: impl Into<String>,
) -> qgraph::GraphError {
    qgraph::GraphError::InvalidArgument { context, what, value: format!("{value:?}"), reason: reason.into() }
}
