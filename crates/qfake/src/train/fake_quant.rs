//! Training of the fake quantizers in the module tree: the straight-through gradient, and the
//! gradients of a learned scale and zero point.

use ndarray::ArrayD;
use qgraph::Value;

use super::{BackPass, Backprop, Pass, Saved, Train, unsave};
use crate::fake_quantize::{FakeQuantCtx, FakeQuantModule, QFakeResult};

pub(super) fn register(backprop: &mut Backprop) {
    backprop.register::<FakeQuantModule>();
}

impl Train for FakeQuantModule {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float("FakeQuantize")?;
        let (y, ctx) = self.fake_quantize(&x)?;
        Ok((Value::Float(y), Box::new(ctx)))
    }

    /// The input's gradient; a learnable quantizer's `scale` and `zero_point` gradients are added
    /// under its path.
    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let ctx = unsave::<FakeQuantCtx>(saved, "FakeQuantize")?;
        let g = grad.into_float("FakeQuantize")?;
        Ok(Value::Float(fake_quant_backward(self, "", &ctx, &g, pass)?))
    }
}

/// The backward of `quantizer`, a module at `prefix` under the running one (`""` for itself,
/// `"weight_fake_quant"` for a QAT module's): returns the input's gradient and adds the learned
/// `scale` and `zero_point` gradients under `<prefix>.scale` / `<prefix>.zero_point`.
pub(super) fn fake_quant_backward(
    quantizer: &FakeQuantModule,
    prefix: &str,
    ctx: &FakeQuantCtx,
    grad: &ArrayD<f32>,
    pass: &mut BackPass<'_>,
) -> QFakeResult<ArrayD<f32>> {
    let grads = quantizer.lock().backward(ctx, grad)?;
    let name = |param: &str| if prefix.is_empty() { param.to_string() } else { format!("{prefix}.{param}") };
    if let Some(scale) = grads.scale {
        pass.add_grad(&name("scale"), scale);
    }
    if let Some(zero_point) = grads.zero_point {
        pass.add_grad(&name("zero_point"), zero_point);
    }
    Ok(grads.input)
}
