//! Training of qgraph's float layers: convolution, linear, batch norm, activations, pooling and
//! dropout.

use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayD, Zip};
use qgraph::nn::{
    AdaptiveAvgPool2d, BatchNorm, Conv, Dropout, Hardsigmoid, Hardswish, Linear, MaxPool, ReLU, ReLU6,
    Sigmoid, Tanh,
};
use qgraph::{Module, Value};

use super::{BackPass, Backprop, Pass, Saved, Train, unsave};
use crate::fake_quantize::{QFakeResult, invalid};
use crate::grad::{self, ConvNeeds};

pub(super) fn register(backprop: &mut Backprop) {
    backprop
        .register::<Conv>()
        .register::<Linear>()
        .register::<BatchNorm>()
        .register::<ReLU>()
        .register::<ReLU6>()
        .register::<Hardswish>()
        .register::<Hardsigmoid>()
        .register::<Sigmoid>()
        .register::<Tanh>()
        .register::<MaxPool<2>>()
        .register::<AdaptiveAvgPool2d>()
        .register::<Dropout>();
}

impl Train for Conv {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float(self.type_name())?;
        let out = self.forward(Value::Float(x.clone()))?;
        Ok((out, Box::new(x)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let x = unsave::<ArrayD<f32>>(saved, "Conv")?;
        let g = grad.into_float(self.type_name())?;
        let needs = ConvNeeds { input: true, weight: true, bias: self.bias().is_some() };
        let grads = grad::conv_backward(&x, self.weight(), self.options(), &g, needs)?;
        pass.add_grad("weight", grads.weight.expect("asked for"));
        if let Some(b) = grads.bias {
            pass.add_grad("bias", b);
        }
        Ok(Value::Float(grads.input.expect("asked for")))
    }
}

impl Train for Linear {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float(self.type_name())?;
        let out = self.forward(Value::Float(x.clone()))?;
        Ok((out, Box::new(x)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let x = unsave::<ArrayD<f32>>(saved, "Linear")?;
        let g = grad.into_float(self.type_name())?;
        let grads = grad::linear_backward(&x, self.weight(), &g, self.bias().is_some())?;
        pass.add_grad("weight", grads.weight);
        if let Some(gb) = grads.bias {
            pass.add_grad("bias", gb);
        }
        Ok(Value::Float(grads.input))
    }
}

/// What batch norm's training forward keeps.
struct BatchNormRun {
    input: ArrayD<f32>,
    batch: Option<grad::BatchNormSaved>,
}

impl Train for BatchNorm {
    /// Batch statistics (and a running-statistics update) in training mode, running statistics
    /// in eval mode.
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float(self.type_name())?;
        if !self.training() {
            let out = self.forward(Value::Float(x.clone()))?;
            return Ok((out, Box::new(BatchNormRun { input: x, batch: None })));
        }
        let (momentum, eps) = (self.options().momentum, self.options().eps);
        let (weight, bias) = (self.weight().cloned(), self.bias().cloned());
        let (mut mean, mut var) = (self.running_mean().clone(), self.running_var().clone());
        let (out, saved) =
            grad::batch_norm_train(&x, weight.as_ref(), bias.as_ref(), &mut mean, &mut var, momentum, eps)?;
        self.set_params(mean, var, weight.zip(bias))?;
        Ok((Value::Float(out), Box::new(BatchNormRun { input: x, batch: Some(saved) })))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let run = unsave::<BatchNormRun>(saved, "BatchNorm")?;
        let g = grad.into_float(self.type_name())?;
        let grads = match &run.batch {
            Some(saved) => grad::batch_norm_backward(&run.input, self.weight(), saved, &g)?,
            None => grad::batch_norm_eval_backward(
                &run.input,
                self.weight(),
                self.running_mean(),
                self.running_var(),
                self.options().eps,
                &g,
            )?,
        };
        if let (Some(gw), Some(gb)) = (grads.weight, grads.bias) {
            pass.add_grad("weight", gw);
            pass.add_grad("bias", gb);
        }
        Ok(Value::Float(grads.input))
    }
}

/// An elementwise activation's training forward (keeping its input and output) and backward
/// (`derivative(input, output)` times the output gradient).
macro_rules! activation_train {
    ($ty:ty, $derivative:expr) => {
        impl Train for $ty {
            fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
                let x = input.into_float(self.type_name())?;
                let y = self.forward(Value::Float(x.clone()))?.into_float(self.type_name())?;
                Ok((Value::Float(y.clone()), Box::new((x, y))))
            }

            fn train_backward(
                &self,
                saved: Saved,
                grad: Value,
                _pass: &mut BackPass<'_>,
            ) -> QFakeResult<Value> {
                let (x, y) = *unsave::<(ArrayD<f32>, ArrayD<f32>)>(saved, "activation")?;
                let mut g = grad.into_float(self.type_name())?;
                if g.shape() != x.shape() {
                    return Err(invalid(
                        stringify!($ty),
                        "gradient shape",
                        g.shape(),
                        "must be the output's",
                    ));
                }
                let derivative: fn(f32, f32) -> f32 = $derivative;
                Zip::from(&mut g).and(&x).and(&y).for_each(|g, &x, &y| *g *= derivative(x, y));
                Ok(Value::Float(g))
            }
        }
    };
}

// PyTorch's `threshold_backward(grad, output, 0)`.
activation_train!(ReLU, |_, y| if y > 0.0 { 1.0 } else { 0.0 });
// `hardtanh_backward(grad, input, 0, 6)`: zero at and beyond the edges.
activation_train!(ReLU6, |x, _| if x > 0.0 && x < 6.0 { 1.0 } else { 0.0 });
// `hardswish_backward`: 0 below -3, x / 3 + 0.5 inside, 1 above 3.
activation_train!(Hardswish, |x, _| if x < -3.0 {
    0.0
} else if x <= 3.0 {
    x / 3.0 + 0.5
} else {
    1.0
});
// `hardsigmoid_backward`: 1/6 strictly inside (-3, 3).
activation_train!(Hardsigmoid, |x, _| if x > -3.0 && x < 3.0 { 1.0 / 6.0 } else { 0.0 });
// `sigmoid_backward(grad, y)`: y (1 - y).
activation_train!(Sigmoid, |_, y| (1.0 - y) * y);
// `tanh_backward(grad, y)`: 1 - y^2.
activation_train!(Tanh, |_, y| 1.0 - y * y);

impl Train for MaxPool<2> {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float(self.type_name())?;
        let w = self.window();
        let (out, indices) =
            grad::max_pool2d_with_indices(&x, w.kernel, w.stride, w.padding, w.dilation, w.ceil_mode)?;
        Ok((Value::Float(out), Box::new((indices, x.shape().to_vec()))))
    }

    fn train_backward(&self, saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let (indices, shape) = *unsave::<(Vec<usize>, Vec<usize>)>(saved, "MaxPool2d")?;
        let g = grad.into_float(self.type_name())?;
        Ok(Value::Float(grad::max_pool2d_backward(&g, &indices, &shape)?))
    }
}

impl Train for AdaptiveAvgPool2d {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let shape = input.shape()?.to_vec();
        Ok((self.forward(input)?, Box::new(shape)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let shape = unsave::<Vec<usize>>(saved, "AdaptiveAvgPool2d")?;
        Ok(Value::Float(grad::adaptive_avg_pool2d_backward(&grad.into_float("AdaptiveAvgPool2d")?, &shape)?))
    }
}

/// The state of dropout's mask generator (xorshift64*), seeded by [`manual_seed`].
static DROPOUT_STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// Seeds the generator of dropout's masks (PyTorch's generator cannot be reproduced, so masks
/// differ from PyTorch's; training with dropout follows PyTorch in distribution, not bit for bit).
pub fn manual_seed(seed: u64) {
    DROPOUT_STATE.store(seed.max(1), Ordering::Relaxed);
}

fn next_uniform() -> f64 {
    let mut x = DROPOUT_STATE.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    DROPOUT_STATE.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

impl Train for Dropout {
    /// In training mode, each element is kept with probability `1 - p` and scaled by
    /// `1 / (1 - p)`; in eval mode the identity.
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float("Dropout")?;
        let p = self.p();
        if !self.training() || p == 0.0 {
            return Ok((Value::Float(x), Box::new(None::<ArrayD<f32>>)));
        }
        let keep = if p >= 1.0 { 0.0 } else { (1.0 / (1.0 - p)) as f32 };
        let mask = x.mapv(|_| if next_uniform() >= p { keep } else { 0.0 });
        Ok((Value::Float(&x * &mask), Box::new(Some(mask))))
    }

    fn train_backward(&self, saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let mask = unsave::<Option<ArrayD<f32>>>(saved, "Dropout")?;
        let g = grad.into_float("Dropout")?;
        Ok(Value::Float(match *mask {
            Some(mask) => &g * &mask,
            None => g,
        }))
    }
}
