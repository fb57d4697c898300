//! Batch normalization in training mode: batch statistics, running-statistics update, and the
//! gradients (also for a batch norm using its running statistics).

use ndarray::{ArrayD, Axis, IxDyn};

use crate::fake_quantize::{QFakeResult, invalid};

/// What [`batch_norm_backward`] needs from the training forward: the batch mean and
/// `1 / sqrt(var + eps)` per channel (biased variance).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormSaved {
    /// Per-channel batch mean.
    pub mean: Vec<f32>,
    /// Per-channel `1 / sqrt(var + eps)`.
    pub invstd: Vec<f32>,
}

fn channels(x: &ArrayD<f32>, context: &'static str) -> QFakeResult<usize> {
    if x.ndim() < 2 {
        return Err(invalid(context, "input rank", x.ndim(), "batch norm takes [N, C, ...]"));
    }
    Ok(x.shape()[1])
}

fn per_channel(x: &ArrayD<f32>, v: Option<&ArrayD<f32>>, c: usize, default: f32) -> Vec<f32> {
    let _ = x;
    v.map_or_else(|| vec![default; c], |v| v.iter().copied().collect())
}

/// `F.batch_norm(training=True)`: normalizes with the batch's statistics (accumulated in f64, as
/// ATen's CPU kernel does for f32) and updates the running ones with `momentum` (unbiased
/// variance), returning the output and what the backward needs.
pub fn batch_norm_train(
    input: &ArrayD<f32>,
    weight: Option<&ArrayD<f32>>,
    bias: Option<&ArrayD<f32>>,
    running_mean: &mut ArrayD<f32>,
    running_var: &mut ArrayD<f32>,
    momentum: f64,
    eps: f64,
) -> QFakeResult<(ArrayD<f32>, BatchNormSaved)> {
    let c = channels(input, "batch_norm")?;
    let count = input.len() / c.max(1);
    if count < 2 {
        return Err(invalid(
            "batch_norm",
            "values per channel",
            count,
            "training needs more than one value per channel",
        ));
    }
    let (w, b) = (per_channel(input, weight, c, 1.0), per_channel(input, bias, c, 0.0));
    let mut out = input.as_standard_layout().into_owned();
    let (mut means, mut invstds) = (Vec::with_capacity(c), Vec::with_capacity(c));
    for (ch, mut plane) in out.axis_iter_mut(Axis(1)).enumerate() {
        let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / count as f64;
        let var_sum: f64 = plane.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum();
        let invstd = 1.0 / (var_sum / count as f64 + eps).sqrt();
        running_mean[ch] = (momentum * mean + (1.0 - momentum) * f64::from(running_mean[ch])) as f32;
        let unbiased = var_sum / (count - 1) as f64;
        running_var[ch] = (momentum * unbiased + (1.0 - momentum) * f64::from(running_var[ch])) as f32;
        let (mean, invstd) = (mean as f32, invstd as f32);
        let alpha = invstd * w[ch];
        let beta = b[ch] - mean * alpha;
        plane.mapv_inplace(|v| v * alpha + beta);
        means.push(mean);
        invstds.push(invstd);
    }
    Ok((out, BatchNormSaved { mean: means, invstd: invstds }))
}

/// The gradients of a batch norm.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormGrads {
    /// Of the input.
    pub input: ArrayD<f32>,
    /// Of the weight (`None` when the layer has none).
    pub weight: Option<ArrayD<f32>>,
    /// Of the bias (`None` when the layer has none).
    pub bias: Option<ArrayD<f32>>,
}

/// The training-mode gradients of input, weight and bias (`None` when there is no weight).
pub fn batch_norm_backward(
    input: &ArrayD<f32>,
    weight: Option<&ArrayD<f32>>,
    saved: &BatchNormSaved,
    grad_output: &ArrayD<f32>,
) -> QFakeResult<BatchNormGrads> {
    let c = channels(input, "batch_norm_backward")?;
    if grad_output.shape() != input.shape() || saved.mean.len() != c {
        return Err(invalid(
            "batch_norm_backward",
            "grad_output shape",
            grad_output.shape(),
            "must be the input's",
        ));
    }
    let count = (input.len() / c) as f32;
    let w = per_channel(input, weight, c, 1.0);
    let mut grad_input = grad_output.as_standard_layout().into_owned();
    let (mut gw, mut gb) = (vec![0f32; c], vec![0f32; c]);
    for (ch, (mut gi, x)) in grad_input.axis_iter_mut(Axis(1)).zip(input.axis_iter(Axis(1))).enumerate() {
        let (mean, invstd) = (saved.mean[ch], saved.invstd[ch]);
        let sum_dy: f32 = gi.sum();
        let dot: f32 = gi.iter().zip(x.iter()).map(|(&g, &v)| g * (v - mean)).sum();
        let k = dot * invstd * invstd / count;
        let grad_mean = sum_dy / count;
        ndarray::Zip::from(&mut gi).and(&x).for_each(|g, &v| {
            *g = (*g - (v - mean) * k - grad_mean) * invstd * w[ch];
        });
        gw[ch] = dot * invstd;
        gb[ch] = sum_dy;
    }
    let vector = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[c]), v).expect("length");
    Ok(BatchNormGrads {
        input: grad_input,
        weight: weight.map(|_| vector(gw)),
        bias: weight.map(|_| vector(gb)),
    })
}

/// The gradients of a batch norm normalizing with its running statistics (eval mode, or frozen).
pub fn batch_norm_eval_backward(
    input: &ArrayD<f32>,
    weight: Option<&ArrayD<f32>>,
    running_mean: &ArrayD<f32>,
    running_var: &ArrayD<f32>,
    eps: f64,
    grad_output: &ArrayD<f32>,
) -> QFakeResult<BatchNormGrads> {
    let c = channels(input, "batch_norm_backward")?;
    let w = per_channel(input, weight, c, 1.0);
    let mut grad_input = grad_output.as_standard_layout().into_owned();
    let (mut gw, mut gb) = (vec![0f32; c], vec![0f32; c]);
    for (ch, (mut gi, x)) in grad_input.axis_iter_mut(Axis(1)).zip(input.axis_iter(Axis(1))).enumerate() {
        let invstd = 1.0 / (running_var[ch] + eps as f32).sqrt();
        let mean = running_mean[ch];
        gb[ch] = gi.sum();
        gw[ch] = gi.iter().zip(x.iter()).map(|(&g, &v)| g * (v - mean) * invstd).sum();
        gi.mapv_inplace(|g| g * invstd * w[ch]);
    }
    let vector = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[c]), v).expect("length");
    Ok(BatchNormGrads {
        input: grad_input,
        weight: weight.map(|_| vector(gw)),
        bias: weight.map(|_| vector(gb)),
    })
}
