//! Training of the QAT modules: the forward updates batch-norm running statistics and the weight
//! fake quantizer's observer; the backward goes through ReLU, batch norm, the division by the
//! folding scale, the convolution and the weight's fake quantization (straight through, or with
//! the gradients of a learnable quantizer's `weight_fake_quant.scale` / `.zero_point`).

use ndarray::{ArrayD, Zip};
use qgraph::nn::BatchNorm;
use qgraph::{Module, Value};

use super::fake_quant::fake_quant_backward;
use super::{BackPass, Backprop, Pass, Saved, Train, unsave};
use crate::fake_quantize::QFakeResult;
use crate::grad::{self, ConvNeeds};
use crate::qat::bn_fold::BnRun;
use crate::qat::bn_fold::channel_runs;
use crate::qat::{QatConv, QatLinear, QatLinearBn};

/// The name of a QAT module's weight fake quantizer (its learned parameters' prefix).
const WFQ: &str = "weight_fake_quant";

pub(super) fn register(backprop: &mut Backprop) {
    backprop.register::<QatConv>().register::<QatLinear>().register::<QatLinearBn>();
}

/// `threshold_backward(grad, output, 0)`: the gradient where the ReLU's output is positive.
fn relu_backward(grad: &mut ArrayD<f32>, output: &ArrayD<f32>) {
    Zip::from(grad).and(output).for_each(|g, &y| {
        if y <= 0.0 {
            *g = 0.0;
        }
    });
}

/// Per-channel sums over every axis but 1 (`[N, C, ...]`).
fn channel_sums(x: &ArrayD<f32>) -> Vec<f32> {
    let channels = x.shape().get(1).copied().unwrap_or(1).max(1);
    let run = (x.len() / (x.shape()[0] * channels).max(1)).max(1);
    let mut sums = vec![0f32; channels];
    let x = x.as_standard_layout();
    for (k, values) in x.as_slice().expect("standard layout").chunks(run).enumerate() {
        sums[k % channels] += values.iter().sum::<f32>();
    }
    sums
}

impl Train for QatConv {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float(self.type_name())?;
        let (out, mut run) = self.run(x)?;
        store_updated_stats(run.updated_stats.take(), || self.running_stats_mut())?;
        Ok((Value::Float(out), Box::new(run)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let run = *unsave::<crate::qat::conv::ConvRun>(saved, "QatConv")?;
        let mut g = grad.into_float(self.type_name())?;
        if self.kind().relu() {
            relu_backward(&mut g, &run.output);
        }
        let has_bias = self.conv().bias().is_some();
        let (g_conv, folded) = match (&run.bn, self.bn()) {
            (Some(bn_run), Some(bn)) => {
                let (g_conv, folded) = folded_bn_backward(bn_run, bn, &g, has_bias, pass)?;
                (g_conv, Some((bn_run, folded)))
            }
            _ => (g, None),
        };
        let needs = ConvNeeds { input: true, weight: true, bias: has_bias && folded.is_none() };
        let grads = grad::conv_backward(&run.input, &run.weight, self.conv().options(), &g_conv, needs)?;
        let g_fq = grads.weight.expect("asked for");
        let g_scaled = fake_quant_backward(self.weight_fake_quant(), WFQ, &run.fake_quant, &g_fq, pass)?;
        match folded {
            Some((bn_run, folded)) => {
                folded_weight_backward(g_scaled, self.conv().weight(), bn_run, folded, pass)?
            }
            None => {
                pass.add_grad("weight", g_scaled);
                if let Some(g_bias) = grads.bias {
                    pass.add_grad("bias", g_bias);
                }
            }
        }
        Ok(Value::Float(grads.input.expect("asked for")))
    }
}

/// What the batch-norm part of a folded backward leaves for the weight's part: the gradient of
/// the scale factor so far, and batch norm's `weight` and `bias` gradients.
struct FoldedGrads {
    scale: Vec<f32>,
    gamma: Option<ArrayD<f32>>,
    beta: Option<ArrayD<f32>>,
}

/// The backward of a folded forward's batch-norm part (see `qat::bn_fold`), from the output
/// gradient `g`: adds the layer bias's gradient (when `has_bias`) and returns the gradient of
/// the layer's output (`conv`, before the division by the scale factor).
fn folded_bn_backward(
    bn_run: &BnRun,
    bn: &BatchNorm,
    g: &ArrayD<f32>,
    has_bias: bool,
    pass: &mut BackPass<'_>,
) -> QFakeResult<(ArrayD<f32>, FoldedGrads)> {
    let grad::BatchNormGrads { input: g_in, weight: gamma, bias: beta } = match &bn_run.batch {
        Some(saved) => grad::batch_norm_backward(&bn_run.bn_input, bn.weight(), saved, g, ConvNeeds::ALL)?,
        None => grad::batch_norm_eval_backward(
            &bn_run.bn_input,
            bn.weight(),
            bn.running_mean(),
            bn.running_var(),
            bn.options().eps,
            g,
            ConvNeeds::ALL,
        )?,
    };
    let g_in = g_in.expect("asked for");
    if has_bias {
        pass.add_grad("bias", ndarray::Array1::from(channel_sums(&g_in)).into_dyn());
    }
    // conv_orig = conv / s: d conv = g / s, d s = -sum(g * conv / (s * s)).
    let mut g_conv = g_in.as_standard_layout().into_owned();
    let mut scale = vec![0f32; bn_run.scale_factor.len()];
    channel_runs(&mut g_conv, &bn_run.conv, |c, g, conv| {
        let s = bn_run.scale_factor[c];
        for (g, &v) in g.iter_mut().zip(conv) {
            scale[c] += -*g * v / (s * s);
            *g /= s;
        }
    });
    Ok((g_conv, FoldedGrads { scale, gamma, beta }))
}

/// The rest of a folded backward from the gradient of the scaled weight (`weight * s`, through
/// the fake quantizer): adds the gradients of `weight`, `bn.weight` and `bn.bias`.
fn folded_weight_backward(
    g_scaled: ArrayD<f32>,
    weight: &ArrayD<f32>,
    bn_run: &BnRun,
    folded: FoldedGrads,
    pass: &mut BackPass<'_>,
) -> QFakeResult<()> {
    let FoldedGrads { scale: mut g_scale, gamma, beta } = folded;
    let mut g_weight = g_scaled.as_standard_layout().into_owned();
    let per_channel = weight.len() / bn_run.scale_factor.len().max(1);
    let w = weight.as_slice().expect("parameters are kept in standard layout");
    let gw = g_weight.as_slice_mut().expect("standard layout");
    for (c, (gw, w)) in gw.chunks_mut(per_channel).zip(w.chunks(per_channel)).enumerate() {
        let s = bn_run.scale_factor[c];
        let mut total = 0f32;
        for (g, &w) in gw.iter_mut().zip(w) {
            total += *g * w;
            *g *= s;
        }
        g_scale[c] += total;
    }
    pass.add_grad("weight", g_weight);
    // s = gamma / running_std: d gamma += d s / running_std.
    let mut g_gamma = gamma.ok_or_else(|| {
        crate::fake_quantize::invalid(
            "QAT batch-norm folding",
            "bn.affine",
            false,
            "needs an affine batch norm",
        )
    })?;
    for (g, (&gs, &std)) in g_gamma.iter_mut().zip(g_scale.iter().zip(&bn_run.running_std)) {
        *g += gs / std;
    }
    pass.add_grad("bn.weight", g_gamma);
    if let Some(g_beta) = beta {
        pass.add_grad("bn.bias", g_beta);
    }
    Ok(())
}

impl Train for QatLinear {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float(self.type_name())?;
        let (out, run) = self.run(x)?;
        Ok((Value::Float(out), Box::new(run)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let run = *unsave::<crate::qat::linear::LinearRun>(saved, "QatLinear")?;
        let mut g = grad.into_float(self.type_name())?;
        if self.relu() {
            relu_backward(&mut g, &run.output);
        }
        let has_bias = self.linear().bias().is_some();
        let (g_input, g_weight, g_bias) = grad::linear_backward(&run.input, &run.weight, &g, has_bias)?;
        let g_weight = fake_quant_backward(self.weight_fake_quant(), WFQ, &run.fake_quant, &g_weight, pass)?;
        pass.add_grad("weight", g_weight);
        if let Some(g_bias) = g_bias {
            pass.add_grad("bias", g_bias);
        }
        Ok(Value::Float(g_input))
    }
}

impl Train for QatLinearBn {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let x = input.into_float(self.type_name())?;
        let (out, mut run) = self.run(x)?;
        store_updated_stats(run.updated_stats.take(), || self.running_stats_mut())?;
        Ok((Value::Float(out), Box::new(run)))
    }

    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let run = *unsave::<crate::qat::linear_bn::LinearBnRun>(saved, "LinearBn1d")?;
        let g = grad.into_float(self.type_name())?;
        let has_bias = self.linear().bias().is_some();
        let (g_linear, folded) = folded_bn_backward(&run.bn, self.bn()?, &g, has_bias, pass)?;
        let (g_input, g_weight, _) = grad::linear_backward(&run.input, &run.weight, &g_linear, false)?;
        let g_scaled = fake_quant_backward(self.weight_fake_quant(), WFQ, &run.fake_quant, &g_weight, pass)?;
        folded_weight_backward(g_scaled, self.linear().weight(), &run.bn, folded, pass)?;
        Ok(Value::Float(g_input))
    }
}

/// Stores the running statistics a training forward computed (when batch norm used the batch's
/// statistics) into the module's batch norm, reached through `stats`.
fn store_updated_stats<'a>(
    updated: Option<(ArrayD<f32>, ArrayD<f32>)>,
    stats: impl FnOnce() -> QFakeResult<(&'a mut ArrayD<f32>, &'a mut ArrayD<f32>)>,
) -> QFakeResult<()> {
    if let Some((mean, var)) = updated {
        let (running_mean, running_var) = stats()?;
        *running_mean = mean;
        *running_var = var;
    }
    Ok(())
}
