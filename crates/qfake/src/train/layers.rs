//! Training of qgraph's float layers: convolution, linear, batch norm, activations, pooling and
//! dropout.

use std::sync::Mutex;

use ndarray::ArrayD;
use qgraph::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Conv, Dropout, ELU, Hardsigmoid, Hardswish, LeakyReLU, Linear,
    MaxPool, ReLU, ReLU6, Sigmoid, Tanh,
};
use qgraph::{Module, Value};

use super::{BackPass, Backprop, Pass, Saved, Train, unsave};
use crate::fake_quantize::QFakeResult;
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
        .register::<LeakyReLU>()
        .register::<ELU>()
        .register::<MaxPool<1>>()
        .register::<MaxPool<2>>()
        .register::<MaxPool<3>>()
        .register::<AvgPool2d>()
        .register::<AdaptiveAvgPool2d>()
        .register::<Dropout>();
}

/// The inference forward, keeping the input for the backward (a layer whose weight gradient
/// needs it).
fn forward_keeping_input(module: &dyn Module, input: Value) -> QFakeResult<(Value, Saved)> {
    let x = input.into_float(module.type_name())?;
    let out = module.forward(Value::Float(x.clone()))?;
    Ok((out, Box::new(x)))
}

/// Adds the gradients of `weight` and (if the layer has one) `bias`.
fn add_weight_bias(pass: &mut BackPass<'_>, weight: ArrayD<f32>, bias: Option<ArrayD<f32>>) {
    pass.add_grad("weight", weight);
    if let Some(bias) = bias {
        pass.add_grad("bias", bias);
    }
}

impl Train for Conv {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        forward_keeping_input(self, input)
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let x = unsave::<ArrayD<f32>>(saved, "Conv")?;
        let g = grad.into_float(self.type_name())?;
        let needs = ConvNeeds { input: true, weight: true, bias: self.bias().is_some() };
        let grads = grad::conv_backward(&x, self.weight(), self.options(), &g, needs)?;
        add_weight_bias(pass, grads.weight.expect("asked for"), grads.bias);
        Ok(Value::Float(grads.input.expect("asked for")))
    }
}

impl Train for Linear {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        forward_keeping_input(self, input)
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let x = unsave::<ArrayD<f32>>(saved, "Linear")?;
        let g = grad.into_float(self.type_name())?;
        let (gx, gw, gb) = grad::linear_backward(&x, self.weight(), &g, self.bias().is_some())?;
        add_weight_bias(pass, gw, gb);
        Ok(Value::Float(gx))
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
            Some(saved) => grad::batch_norm_backward(&run.input, self.weight(), saved, &g, ConvNeeds::ALL)?,
            None => grad::batch_norm_eval_backward(
                &run.input,
                self.weight(),
                self.running_mean(),
                self.running_var(),
                self.options().eps,
                &g,
                ConvNeeds::ALL,
            )?,
        };
        if self.weight().is_some()
            && let (Some(gw), Some(gb)) = (grads.weight, grads.bias)
        {
            pass.add_grad("weight", gw);
            pass.add_grad("bias", gb);
        }
        Ok(Value::Float(grads.input.expect("asked for")))
    }
}

/// An activation layer's training forward and backward through [`grad::Activation`] (which
/// keeps what ATen's autograd saves: the output of ReLU, sigmoid and tanh, the input otherwise).
macro_rules! activation_train {
    ($ty:ty, $activation:expr) => {
        impl Train for $ty {
            fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
                let activation: fn(&$ty) -> grad::Activation = $activation;
                let x = input.into_float(self.type_name())?;
                let y = activation(self).forward(&x)?;
                let kept = if activation(self).saves_output() { y.clone() } else { x };
                Ok((Value::Float(y), Box::new(kept)))
            }

            fn train_backward(
                &self,
                saved: Saved,
                grad: Value,
                _pass: &mut BackPass<'_>,
            ) -> QFakeResult<Value> {
                let activation: fn(&$ty) -> grad::Activation = $activation;
                let kept = unsave::<ArrayD<f32>>(saved, "activation")?;
                let g = grad.into_float(self.type_name())?;
                Ok(Value::Float(activation(self).backward(&kept, &g)?))
            }
        }
    };
}

activation_train!(ReLU, |_| grad::Activation::Relu);
activation_train!(ReLU6, |_| grad::Activation::Relu6);
activation_train!(Hardswish, |_| grad::Activation::Hardswish);
activation_train!(Hardsigmoid, |_| grad::Activation::Hardsigmoid);
activation_train!(Sigmoid, |_| grad::Activation::Sigmoid);
activation_train!(Tanh, |_| grad::Activation::Tanh);
activation_train!(LeakyReLU, |m| grad::Activation::LeakyRelu { negative_slope: m.negative_slope() as f32 });
activation_train!(ELU, |m| grad::Activation::Elu { alpha: m.alpha() as f32 });

/// Max pooling keeps the index of each maximum for its backward.
macro_rules! max_pool_train {
    ($dims:literal) => {
        impl Train for MaxPool<$dims> {
            fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
                let x = input.into_float(self.type_name())?;
                let w = self.window();
                let options = grad::MaxPoolOptions {
                    kernel_size: w.kernel.to_vec(),
                    stride: w.stride.to_vec(),
                    padding: w.padding.to_vec(),
                    dilation: w.dilation.to_vec(),
                    ceil_mode: w.ceil_mode,
                };
                let (out, indices) = grad::max_pool_with_indices(&x, &options)?;
                Ok((Value::Float(out), Box::new((indices, x.shape().to_vec()))))
            }

            fn train_backward(
                &self,
                saved: Saved,
                grad: Value,
                _pass: &mut BackPass<'_>,
            ) -> QFakeResult<Value> {
                let (indices, shape) = *unsave::<(ArrayD<i64>, Vec<usize>)>(saved, "MaxPool")?;
                let g = grad.into_float(self.type_name())?;
                Ok(Value::Float(grad::max_pool_backward(&g, &indices, &shape)?))
            }
        }
    };
}

max_pool_train!(1);
max_pool_train!(2);
max_pool_train!(3);

impl Train for AvgPool2d {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let shape = input.shape()?.to_vec();
        Ok((self.forward(input)?, Box::new(shape)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let shape = unsave::<Vec<usize>>(saved, "AvgPool2d")?;
        let kernel = self.options();
        let divisor_override = kernel
            .divisor_override
            .map(|d| {
                usize::try_from(d).map_err(|_| {
                    crate::fake_quantize::invalid("AvgPool2d", "divisor_override", d, "must be positive")
                })
            })
            .transpose()?;
        let options = grad::AvgPoolOptions {
            kernel_size: kernel.window.kernel.to_vec(),
            stride: kernel.window.stride.to_vec(),
            padding: kernel.window.padding.to_vec(),
            ceil_mode: kernel.window.ceil_mode,
            count_include_pad: kernel.count_include_pad,
            divisor_override,
        };
        Ok(Value::Float(grad::avg_pool_backward(&grad.into_float("AvgPool2d")?, &shape, &options)?))
    }
}

impl Train for AdaptiveAvgPool2d {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let shape = input.shape()?.to_vec();
        Ok((self.forward(input)?, Box::new(shape)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let shape = unsave::<Vec<usize>>(saved, "AdaptiveAvgPool2d")?;
        Ok(Value::Float(grad::adaptive_avg_pool_backward(&grad.into_float("AdaptiveAvgPool2d")?, &shape)?))
    }
}

/// Dropout's mask generator, seeded by [`manual_seed`].
static DROPOUT_RNG: Mutex<Option<grad::DropoutRng>> = Mutex::new(None);

/// Seeds the generator of dropout's masks (PyTorch's generator cannot be reproduced, so masks
/// differ from PyTorch's; training with dropout follows PyTorch in distribution, not bit for bit).
pub fn manual_seed(seed: u64) {
    *DROPOUT_RNG.lock().unwrap_or_else(|p| p.into_inner()) = Some(grad::DropoutRng::new(seed));
}

impl Train for Dropout {
    /// In training mode, each element is kept with probability `1 - p` and scaled by
    /// `1 / (1 - p)`; in eval mode the identity.
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float("Dropout")?;
        if !self.training() || self.p() == 0.0 {
            return Ok((Value::Float(x), Box::new(None::<ArrayD<bool>>)));
        }
        let mut rng = DROPOUT_RNG.lock().unwrap_or_else(|p| p.into_inner());
        let rng = rng.get_or_insert_with(|| grad::DropoutRng::new(0));
        let (y, mask) = grad::dropout_train(&x, self.p(), rng)?;
        Ok((Value::Float(y), Box::new(Some(mask))))
    }

    fn train_backward(&self, saved: Saved, grad: Value, _pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let mask = unsave::<Option<ArrayD<bool>>>(saved, "Dropout")?;
        let g = grad.into_float("Dropout")?;
        Ok(Value::Float(match *mask {
            Some(mask) => grad::dropout_backward(&g, &mask, self.p())?,
            None => g,
        }))
    }
}
