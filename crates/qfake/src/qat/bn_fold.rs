//! Training-time batch-norm folding shared by the QAT conv-bn and linear-bn modules (PyTorch's
//! `_forward_approximate`): `s = bn.weight / sqrt(bn.running_var + bn.eps)`, the layer runs on
//! `weight_fake_quant(weight * s)` with a zero bias, its output is divided by `s`, the bias is
//! added, then batch norm.

use ndarray::{ArrayD, Axis};
use qgraph::nn::BatchNorm;
use qgraph::{Module, Value};

use crate::fake_quantize::{QFakeResult, invalid};
use crate::grad;

/// The batch-norm part of a folded forward, for its backward.
pub(crate) struct BnRun {
    /// `bn.weight / sqrt(running_var + eps)`, per output channel.
    pub scale_factor: Vec<f32>,
    /// `sqrt(running_var + eps)`.
    pub running_std: Vec<f32>,
    /// The layer's output before the division by the scale factor.
    pub conv: ArrayD<f32>,
    /// Batch norm's input.
    pub bn_input: ArrayD<f32>,
    /// Batch statistics (training mode), or `None` when the running statistics were used.
    pub batch: Option<grad::BatchNormSaved>,
}

/// A batch norm's running mean and variance.
pub(crate) type RunningStats = (ArrayD<f32>, ArrayD<f32>);

/// `(scale_factor, running_std)` of `bn`, which must be affine (`context` names the module).
pub(crate) fn fold_factors(bn: &BatchNorm, context: &'static str) -> QFakeResult<(Vec<f32>, Vec<f32>)> {
    let eps = bn.options().eps as f32;
    let gamma = bn.weight().ok_or_else(|| {
        invalid(context, "bn.affine", false, "batch-norm folding needs an affine batch norm")
    })?;
    let running_std: Vec<f32> = bn.running_var().iter().map(|&v| (v + eps).sqrt()).collect();
    let scale_factor: Vec<f32> = gamma.iter().zip(&running_std).map(|(&g, &s)| g / s).collect();
    Ok((scale_factor, running_std))
}

/// `weight * scale_factor` per output channel (axis 0).
pub(crate) fn scale_weight(weight: &ArrayD<f32>, scale_factor: &[f32]) -> ArrayD<f32> {
    let mut scaled = weight.clone();
    for (mut w, &s) in scaled.axis_iter_mut(Axis(0)).zip(scale_factor) {
        w.mapv_inplace(|v| v * s);
    }
    scaled
}

/// The rest of the folded forward from the layer's output `conv` (`[N, C, ...]`, run with the
/// fake-quantized scaled weight and a zero bias): `conv / s + bias`, then batch norm with batch
/// statistics when `batch_stats` (returning the running statistics this batch gives) or with
/// the running ones.
pub(crate) fn finish_fold(
    bn: &BatchNorm,
    conv: ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    (scale_factor, running_std): (Vec<f32>, Vec<f32>),
    batch_stats: bool,
) -> QFakeResult<(ArrayD<f32>, BnRun, Option<RunningStats>)> {
    let bias: Option<Vec<f32>> = bias.map(|b| b.iter().copied().collect());
    let mut bn_input = conv.clone();
    channel_runs(&mut bn_input, &conv, |c, run, _| {
        let s = scale_factor[c];
        match &bias {
            Some(b) => run.iter_mut().for_each(|v| *v = *v / s + b[c]),
            None => run.iter_mut().for_each(|v| *v /= s),
        }
    });
    let (out, batch, stats) = if batch_stats {
        let (mut mean, mut var) = (bn.running_mean().clone(), bn.running_var().clone());
        let (out, saved) = grad::batch_norm_train(
            &bn_input,
            bn.weight(),
            bn.bias(),
            &mut mean,
            &mut var,
            bn.options().momentum,
            bn.options().eps,
        )?;
        (out, Some(saved), Some((mean, var)))
    } else {
        let mut frozen = bn.clone();
        frozen.set_training(false);
        (frozen.forward(Value::Float(bn_input.clone()))?.into_float("BatchNorm")?, None, None)
    };
    Ok((out, BnRun { scale_factor, running_std, conv, bn_input, batch }, stats))
}

/// The running mean and variance of a batch-norm child, mutable (the training forward updates
/// them); `context` names the module.
pub(crate) fn running_stats_mut<'a>(
    bn: &'a mut dyn Module,
    context: &'static str,
) -> QFakeResult<(&'a mut ArrayD<f32>, &'a mut ArrayD<f32>)> {
    let mut mean = None;
    let mut var = None;
    for (name, x) in bn.params_mut() {
        match name {
            "running_mean" => mean = Some(x),
            "running_var" => var = Some(x),
            _ => {}
        }
    }
    mean.zip(var)
        .ok_or_else(|| invalid(context, "bn", "no running statistics", "give a BatchNorm that tracks them"))
}

/// Calls `f(channel, run, other_run)` on each contiguous run of one channel of `x` and `other`,
/// standard-layout `[N, C, ...]` arrays of one shape (the fast way through per-channel math).
pub(crate) fn channel_runs(
    x: &mut ArrayD<f32>,
    other: &ArrayD<f32>,
    mut f: impl FnMut(usize, &mut [f32], &[f32]),
) {
    assert_eq!(x.shape(), other.shape(), "channel_runs takes arrays of one shape");
    let channels = x.shape().get(1).copied().unwrap_or(1).max(1);
    let run = (x.len() / (x.shape()[0] * channels).max(1)).max(1);
    let other = other.as_standard_layout();
    let (x, other) = (x.as_slice_mut().expect("standard layout"), other.as_slice().expect("standard layout"));
    for (k, (a, b)) in x.chunks_mut(run).zip(other.chunks(run)).enumerate() {
        f(k % channels, a, b);
    }
}
