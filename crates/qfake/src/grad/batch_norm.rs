//! Training-mode batch norm (`aten::native_batch_norm` with `training=True` on CPU) and its
//! backward (`aten::native_batch_norm_backward`), plus the backward of a frozen (eval-mode)
//! batch norm.

use ndarray::ArrayD;

use super::check::{array, bad, check_rank, check_shape, to_vec};
use super::conv::{ConvGrads, ConvNeeds};
use crate::QFakeResult;

const CONTEXT: &str = "qfake::grad::batch_norm";

/// What the backward of [`batch_norm_train`] needs: the batch mean and `1 / sqrt(var + eps)`
/// per channel (ATen's `save_mean`, `save_invstd`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormSaved {
    /// The batch mean per channel.
    pub mean: Vec<f32>,
    /// `1 / sqrt(biased batch variance + eps)` per channel.
    pub invstd: Vec<f32>,
}

/// Which gradients the batch-norm backward computes (ATen's `output_mask`): input, weight
/// (gamma), bias (beta), as for a convolution.
pub type BatchNormNeeds = ConvNeeds;

/// The gradients of the batch-norm backward (input's shape, `[C]`, `[C]`); `None` where not
/// asked for.
pub type BatchNormGrads = ConvGrads;

/// The momentum of `nn.BatchNorm*(momentum=None)`: increments `num_batches_tracked` and returns
/// `1 / num_batches_tracked`, so the running statistics become the cumulative average (PyTorch's
/// `_BatchNorm.forward`).
///
/// ```
/// let mut tracked = 0;
/// assert_eq!(qfake::grad::cumulative_momentum(&mut tracked), 1.0);
/// assert_eq!(qfake::grad::cumulative_momentum(&mut tracked), 0.5);
/// ```
pub fn cumulative_momentum(num_batches_tracked: &mut u64) -> f64 {
    *num_batches_tracked += 1;
    1.0 / *num_batches_tracked as f64
}

/// `[N, C, rest...]` as (batch, channels, elements per image and channel).
fn layout(input: &[usize]) -> QFakeResult<(usize, usize, usize)> {
    check_rank(CONTEXT, "input shape ([N, C], [N, C, L], [N, C, H, W] or [N, C, D, H, W])", input, 2..=5)?;
    Ok((input[0], input[1], input[2..].iter().product()))
}

/// Checks an optional per-channel parameter.
fn check_param(what: &'static str, p: Option<&ArrayD<f32>>, c: usize) -> QFakeResult<Vec<f32>> {
    match p {
        Some(p) => {
            check_shape(CONTEXT, what, p.shape(), &[c])?;
            Ok(to_vec(p))
        }
        None => Ok(Vec::new()),
    }
}

/// The mean and the sum of squared deviations of each channel, as ATen's
/// `batch_norm_cpu_collect_stats_kernel` computes them on one thread: per channel, a double sum
/// of the elements in memory order, the mean rounded to f32, then a double sum of the f32
/// squares `(x - mean)^2`. Inputs with one element per image and channel (`[N, C]`) take ATen's
/// channels-last path: f32 running sums over the rows (the variance terms fused,
/// `fma(x - mean, x - mean, acc)`), widened to double at the end.
fn collect_stats(x: &[f32], n: usize, c: usize, image: usize) -> (Vec<f32>, Vec<f32>) {
    let count = (n * image) as f64;
    let mut mean = vec![0.0f32; c];
    let mut var_sum = vec![0.0f32; c];
    if image == 1 && n > 1 {
        let mut sum = vec![0.0f32; c];
        for row in x.chunks(c) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        for (m, &s) in mean.iter_mut().zip(&sum) {
            *m = (s as f64 / count) as f32;
        }
        let mut acc = vec![0.0f32; c];
        for row in x.chunks(c) {
            for ((a, &v), &m) in acc.iter_mut().zip(row).zip(&mean) {
                *a = (v - m).mul_add(v - m, *a);
            }
        }
        for (vs, &a) in var_sum.iter_mut().zip(&acc) {
            *vs = a as f64 as f32;
        }
        return (mean, var_sum);
    }
    for ch in 0..c {
        let planes = || (0..n).flat_map(move |b| x[(b * c + ch) * image..(b * c + ch + 1) * image].iter());
        let sum: f64 = planes().fold(0.0, |s, &v| s + v as f64);
        let m = (sum / count) as f32;
        let vs: f64 = planes().fold(0.0, |s, &v| s + ((v - m) * (v - m)) as f64);
        mean[ch] = m;
        var_sum[ch] = vs as f32;
    }
    (mean, var_sum)
}

/// `F.batch_norm(input, running_mean, running_var, weight, bias, training=True, momentum, eps)`
/// on CPU: normalizes with the batch statistics (biased variance) and updates the running ones,
/// `running = (1 - momentum) * running + momentum * batch` with the unbiased variance (use
/// [`cumulative_momentum`] for `momentum=None`). Returns the output and what the backward
/// needs.
///
/// `input` is `[N, C]`, `[N, C, L]`, `[N, C, H, W]` or `[N, C, D, H, W]`. The statistics, the
/// running update and the output are PyTorch's bits (ATen's `batch_norm_cpu_update_stats_template`
/// and `batch_norm_cpu_contiguous_impl`: `invstd = 1 / sqrt(var + eps)` in double, the output
/// `fma(x, invstd * w, b - mean * invstd * w)`), as on one PyTorch thread.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let x = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0, 3.0]).unwrap();
/// let (mut rm, mut rv) = (ArrayD::zeros(IxDyn(&[1])), ArrayD::ones(IxDyn(&[1])));
/// let (y, saved) = qfake::grad::batch_norm_train(&x, None, None, &mut rm, &mut rv, 0.1, 0.0)?;
/// assert_eq!(y.into_raw_vec_and_offset().0, vec![-1.0, 1.0]);
/// assert_eq!(saved.mean, vec![2.0]);
/// assert_eq!(rm[[0]], 0.2);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn batch_norm_train(
    input: &ArrayD<f32>,
    weight: Option<&ArrayD<f32>>,
    bias: Option<&ArrayD<f32>>,
    running_mean: &mut ArrayD<f32>,
    running_var: &mut ArrayD<f32>,
    momentum: f64,
    eps: f64,
) -> QFakeResult<(ArrayD<f32>, BatchNormSaved)> {
    let (n, c, image) = layout(input.shape())?;
    let w = check_param("weight", weight, c)?;
    let b = check_param("bias", bias, c)?;
    check_shape(CONTEXT, "running_mean", running_mean.shape(), &[c])?;
    check_shape(CONTEXT, "running_var", running_var.shape(), &[c])?;
    if n * image <= 1 {
        return Err(bad(
            CONTEXT,
            "input shape",
            input.shape(),
            "training needs more than one value per channel (use eval mode for a single value)",
        ));
    }
    let x = to_vec(input);
    let (mean, var_sum) = collect_stats(&x, n, c, image);
    let count = (n * image) as f32;
    let unbiased_count = (n * image - 1) as f32;
    let mut invstd = vec![0.0f32; c];
    for ch in 0..c {
        let var = (var_sum[ch] / count) as f64;
        invstd[ch] = if var != 0.0 || eps != 0.0 { (1.0 / (var + eps).sqrt()) as f32 } else { 0.0 };
        // The running update in f32 with the momentum and 1 - momentum rounded to f32; the
        // variance's add is fused (what PyTorch 2.15's results show).
        let (m, keep) = (momentum as f32, (1.0 - momentum) as f32);
        let rm = &mut running_mean[[ch]];
        *rm = mean[ch] * m + *rm * keep;
        let rv = &mut running_var[[ch]];
        *rv = (var_sum[ch] / unbiased_count).mul_add(m, *rv * keep);
    }
    let out = affine(&x, n, c, image, |ch| {
        let alpha = invstd[ch] * w.get(ch).copied().unwrap_or(1.0);
        (alpha, (-mean[ch]).mul_add(alpha, b.get(ch).copied().unwrap_or(0.0)))
    });
    Ok((array(input.shape(), out), BatchNormSaved { mean, invstd }))
}

/// `fma(x, alpha, beta)` with `(alpha, beta)` of each channel (ATen's vector loop).
fn affine(x: &[f32], n: usize, c: usize, image: usize, coef: impl Fn(usize) -> (f32, f32)) -> Vec<f32> {
    let coefs: Vec<(f32, f32)> = (0..c).map(coef).collect();
    let mut out = vec![0.0f32; x.len()];
    for (i, (o, src)) in out.chunks_mut(image.max(1)).zip(x.chunks(image.max(1))).enumerate() {
        let (alpha, beta) = coefs[i % c];
        for (o, &v) in o.iter_mut().zip(src) {
            *o = v.mul_add(alpha, beta);
        }
    }
    debug_assert_eq!(out.len(), n * c * image);
    out
}

/// Per channel, the sum of `dy` and of `(x - mean) * dy`, in double over the elements in memory
/// order.
fn reductions(x: &[f32], dy: &[f32], mean: &[f32], n: usize, c: usize, image: usize) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ch| {
            let (mut sum, mut dotp) = (0.0f64, 0.0f64);
            for b in 0..n {
                let r = (b * c + ch) * image..(b * c + ch + 1) * image;
                for (&xv, &g) in x[r.clone()].iter().zip(&dy[r]) {
                    sum += g as f64;
                    dotp += ((xv - mean[ch]) * g) as f64;
                }
            }
            (sum, dotp)
        })
        .collect()
}

/// Checks the backward's tensors; returns `(n, c, image)`, the weight (empty for none) and the
/// elements of `input` and `grad_output`.
type Checked = ((usize, usize, usize), Vec<f32>, Vec<f32>, Vec<f32>);

fn check_backward(
    input: &ArrayD<f32>,
    weight: Option<&ArrayD<f32>>,
    grad_output: &ArrayD<f32>,
) -> QFakeResult<Checked> {
    let dims = layout(input.shape())?;
    let w = check_param("weight", weight, dims.1)?;
    check_shape(CONTEXT, "grad_output", grad_output.shape(), input.shape())?;
    Ok((dims, w, to_vec(input), to_vec(grad_output)))
}

/// The backward of [`batch_norm_train`] (`native_batch_norm_backward` with `train=True`):
/// `dx = (dy - mean(dy) - (x - mean) * k) * invstd * w` with
/// `k = sum((x - mean) dy) * invstd^2 / count`, `dweight = sum((x - mean) dy) * invstd`,
/// `dbias = sum(dy)`. ATen's per-element formula, with the sums in double in memory order
/// (ATen sums vector lanes in float first, so the results agree to float rounding).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{BatchNormNeeds, batch_norm_backward, batch_norm_train};
/// let x = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0, 3.0]).unwrap();
/// let (mut rm, mut rv) = (ArrayD::zeros(IxDyn(&[1])), ArrayD::ones(IxDyn(&[1])));
/// let (_, saved) = batch_norm_train(&x, None, None, &mut rm, &mut rv, 0.1, 0.0)?;
/// let dy = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0, 1.0]).unwrap();
/// let g = batch_norm_backward(&x, None, &saved, &dy, BatchNormNeeds::ALL)?;
/// assert_eq!(g.input.unwrap().into_raw_vec_and_offset().0, vec![0.0, 0.0]);
/// assert_eq!(g.bias.unwrap()[[0]], 2.0);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn batch_norm_backward(
    input: &ArrayD<f32>,
    weight: Option<&ArrayD<f32>>,
    saved: &BatchNormSaved,
    grad_output: &ArrayD<f32>,
    needs: BatchNormNeeds,
) -> QFakeResult<BatchNormGrads> {
    let ((n, c, image), w, x, dy) = check_backward(input, weight, grad_output)?;
    if saved.mean.len() != c || saved.invstd.len() != c {
        let lens = (saved.mean.len(), saved.invstd.len());
        return Err(bad(CONTEXT, "saved (mean, invstd) lengths", lens, format!("must be the {c} channels")));
    }
    let sums = reductions(&x, &dy, &saved.mean, n, c, image);
    let count = n * image;
    let mut grads = finish(&sums, &saved.invstd, c, needs);
    if needs.input {
        let mut dx = vec![0.0f32; x.len()];
        for (i, ((o, xs), gs)) in
            dx.chunks_mut(image.max(1)).zip(x.chunks(image.max(1))).zip(dy.chunks(image.max(1))).enumerate()
        {
            let ch = i % c;
            let (sum, dotp) = sums[ch];
            let (mean, invstd, wv) = (saved.mean[ch], saved.invstd[ch], w.get(ch).copied().unwrap_or(1.0));
            let k = (dotp as f32) * invstd * invstd / count as f32;
            let grad_mean = (sum / count as f64) as f32;
            for ((o, &xv), &g) in o.iter_mut().zip(xs).zip(gs) {
                *o = (-(xv - mean)).mul_add(k, g - grad_mean) * invstd * wv;
            }
        }
        grads.input = Some(array(input.shape(), dx));
    }
    Ok(grads)
}

/// The weight and bias gradients from the per-channel sums.
fn finish(sums: &[(f64, f64)], invstd: &[f32], c: usize, needs: BatchNormNeeds) -> BatchNormGrads {
    let weight = needs.weight.then(|| {
        array(&[c], sums.iter().zip(invstd).map(|(&(_, dotp), &s)| (dotp * s as f64) as f32).collect())
    });
    let bias = needs.bias.then(|| array(&[c], sums.iter().map(|&(sum, _)| sum as f32).collect()));
    BatchNormGrads { input: None, weight, bias }
}

/// The backward of a batch norm in eval mode (running statistics, e.g. a frozen BN in QAT):
/// `dx = dy * invstd * w` with `invstd = 1 / sqrt(running_var + eps)` in double rounded to f32
/// (PyTorch's bits), `dweight = sum((x - running_mean) dy) * invstd`, `dbias = sum(dy)` (double
/// sums, equal to PyTorch's to float rounding).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{BatchNormNeeds, batch_norm_eval_backward};
/// let x = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0, 3.0]).unwrap();
/// let (rm, rv) = (ArrayD::zeros(IxDyn(&[1])), ArrayD::from_elem(IxDyn(&[1]), 4.0));
/// let dy = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0, 2.0]).unwrap();
/// let g = batch_norm_eval_backward(&x, None, &rm, &rv, 0.0, &dy, BatchNormNeeds::ALL)?;
/// assert_eq!(g.input.unwrap().into_raw_vec_and_offset().0, vec![0.5, 1.0]);
/// assert_eq!(g.weight.unwrap()[[0]], 3.5);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn batch_norm_eval_backward(
    input: &ArrayD<f32>,
    weight: Option<&ArrayD<f32>>,
    running_mean: &ArrayD<f32>,
    running_var: &ArrayD<f32>,
    eps: f64,
    grad_output: &ArrayD<f32>,
    needs: BatchNormNeeds,
) -> QFakeResult<BatchNormGrads> {
    let ((n, c, image), w, x, dy) = check_backward(input, weight, grad_output)?;
    check_shape(CONTEXT, "running_mean", running_mean.shape(), &[c])?;
    check_shape(CONTEXT, "running_var", running_var.shape(), &[c])?;
    let mean = to_vec(running_mean);
    let invstd: Vec<f32> = running_var.iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect();
    let sums = reductions(&x, &dy, &mean, n, c, image);
    let mut grads = finish(&sums, &invstd, c, needs);
    if needs.input {
        let mut dx = vec![0.0f32; x.len()];
        for (i, (o, gs)) in dx.chunks_mut(image.max(1)).zip(dy.chunks(image.max(1))).enumerate() {
            let ch = i % c;
            let (s, wv) = (invstd[ch], w.get(ch).copied().unwrap_or(1.0));
            for (o, &g) in o.iter_mut().zip(gs) {
                *o = g * s * wv;
            }
        }
        grads.input = Some(array(input.shape(), dx));
    }
    Ok(grads)
}
