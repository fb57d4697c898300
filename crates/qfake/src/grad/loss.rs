//! `F.cross_entropy` (log-softmax + NLL, with class weights, `ignore_index` and label smoothing)
//! and `F.mse_loss`, each returning the loss and the gradient of its input for a loss gradient
//! of 1 (per element of the loss with `Reduction::None`).

use ndarray::ArrayD;

use super::check::{array, bad, check_shape, to_vec};
use crate::QFakeResult;

const CONTEXT: &str = "qfake::grad::loss";

/// How a loss reduces over the batch (PyTorch's `reduction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean (for cross-entropy: weighted by the targets' class weights).
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// One loss per sample (per element for MSE).
    None,
}

/// The options of `F.cross_entropy`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CrossEntropyOptions {
    /// The reduction.
    pub reduction: Reduction,
    /// Label smoothing in `[0, 1]`.
    pub label_smoothing: f32,
    /// Targets equal to this contribute nothing (PyTorch's default is -100: none).
    pub ignore_index: Option<usize>,
    /// A weight per class.
    pub weight: Option<Vec<f32>>,
}

/// ATen's `log_softmax` of one row: `x - max - log(sum(exp(x - max)))`, the subtractions in
/// that order.
fn log_softmax_row(row: &[f32], out: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m || v.is_nan() { v } else { m });
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v - max - log_sum;
    }
}

/// `F.cross_entropy(logits, targets, weight, ignore_index, reduction, label_smoothing)` for
/// `logits` `[N, C]` and one class per sample: the loss (a scalar for `Mean` / `Sum`, `[N]` for
/// `None`) and the gradient of the logits (for `None`, of the sum of the per-sample losses).
///
/// The loss is `(1 - s) * nll + s / C * smooth` with `nll = -w[t] log p[t]` and
/// `smooth = -sum_c w[c] log p[c]`; `Mean` divides both by the summed weights `w[t]` of the
/// samples not ignored (their count without weights). The gradient of the logits is
/// `g - softmax * sum(g)` for the gradient `g` of the log-probabilities (ATen's
/// `log_softmax_backward`).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{CrossEntropyOptions, cross_entropy};
/// let logits = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![0.0, 0.0]).unwrap();
/// let (loss, grad) = cross_entropy(&logits, &[1], &CrossEntropyOptions::default())?;
/// assert!((loss[[]] - std::f32::consts::LN_2).abs() < 1e-6);
/// assert_eq!(grad.into_raw_vec_and_offset().0, vec![0.5, -0.5]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn cross_entropy(
    logits: &ArrayD<f32>,
    targets: &[usize],
    options: &CrossEntropyOptions,
) -> QFakeResult<(ArrayD<f32>, ArrayD<f32>)> {
    let &[n, c] = logits.shape() else {
        return Err(bad(CONTEXT, "logits shape", logits.shape(), "must be [N, C]"));
    };
    check_shape(CONTEXT, "targets", &[targets.len()], &[n])?;
    if !(0.0..=1.0).contains(&options.label_smoothing) {
        return Err(bad(CONTEXT, "label_smoothing", options.label_smoothing, "must be in [0, 1]"));
    }
    let weight = match &options.weight {
        Some(w) => {
            check_shape(CONTEXT, "weight", &[w.len()], &[c])?;
            w.clone()
        }
        None => vec![1.0; c],
    };
    let ignored = |t: usize| options.ignore_index == Some(t);
    if let Some(&t) = targets.iter().find(|&&t| t >= c && !ignored(t)) {
        return Err(bad(CONTEXT, "target", t, format!("must be a class in 0..{c} or ignore_index")));
    }
    let x = to_vec(logits);
    let mut lp = vec![0.0f32; n * c];
    for (row, out) in x.chunks(c.max(1)).zip(lp.chunks_mut(c.max(1))) {
        log_softmax_row(row, out);
    }
    let s = options.label_smoothing;
    let (smooth, keep) = (s / c as f32, 1.0 - s);
    let mut per_sample = vec![0.0f32; n];
    let mut denom = 0.0f32;
    for (i, &t) in targets.iter().enumerate() {
        if ignored(t) {
            continue;
        }
        denom += weight[t];
        let row = &lp[i * c..(i + 1) * c];
        let nll = -weight[t] * row[t];
        let sm: f32 = -row.iter().zip(&weight).map(|(&l, &w)| l * w).sum::<f32>();
        per_sample[i] = if s > 0.0 { keep * nll + smooth * sm } else { nll };
    }
    let scale = |i: usize| match options.reduction {
        Reduction::Mean => 1.0 / denom,
        Reduction::Sum | Reduction::None => {
            if ignored(targets[i]) {
                0.0
            } else {
                1.0
            }
        }
    };
    let mut grad = vec![0.0f32; n * c];
    for (i, &t) in targets.iter().enumerate() {
        if ignored(t) {
            continue;
        }
        let k = scale(i);
        let g = &mut grad[i * c..(i + 1) * c];
        // Gradient of the log-probabilities, then log_softmax_backward.
        for (j, gj) in g.iter_mut().enumerate() {
            let onehot = if j == t { keep * weight[t] } else { 0.0 };
            let sm = if s > 0.0 { smooth * weight[j] } else { 0.0 };
            *gj = -(onehot + sm) * k;
        }
        let total: f32 = g.iter().sum();
        for (gj, &l) in g.iter_mut().zip(&lp[i * c..(i + 1) * c]) {
            *gj -= l.exp() * total;
        }
    }
    let loss = match options.reduction {
        Reduction::None => array(&[n], per_sample),
        Reduction::Sum => array(&[], vec![per_sample.iter().sum()]),
        Reduction::Mean => array(&[], vec![per_sample.iter().sum::<f32>() / denom]),
    };
    Ok((loss, array(&[n, c], grad)))
}

/// `F.mse_loss(input, target, reduction)`: the loss and the gradient of the input,
/// `norm * (input - target)` with `norm = 2 / numel` for `Mean` and 2 otherwise (ATen's
/// `mse_backward` with a loss gradient of 1).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{Reduction, mse_loss};
/// let x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0, 3.0]).unwrap();
/// let t = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.0, 1.0]).unwrap();
/// let (loss, grad) = mse_loss(&x, &t, Reduction::Mean)?;
/// assert_eq!(loss[[]], 2.5);
/// assert_eq!(grad.into_raw_vec_and_offset().0, vec![1.0, 2.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn mse_loss(
    input: &ArrayD<f32>,
    target: &ArrayD<f32>,
    reduction: Reduction,
) -> QFakeResult<(ArrayD<f32>, ArrayD<f32>)> {
    check_shape(CONTEXT, "target", target.shape(), input.shape())?;
    let (x, t) = (to_vec(input), to_vec(target));
    let norm = if reduction == Reduction::Mean { (2.0 / x.len() as f64) as f32 } else { 2.0 };
    let sq: Vec<f32> = x.iter().zip(&t).map(|(&a, &b)| (a - b) * (a - b)).collect();
    let grad = x.iter().zip(&t).map(|(&a, &b)| norm * (a - b)).collect();
    let loss = match reduction {
        Reduction::None => array(input.shape(), sq),
        Reduction::Sum => array(&[], vec![sq.iter().sum()]),
        Reduction::Mean => array(&[], vec![sq.iter().sum::<f32>() / x.len() as f32]),
    };
    Ok((loss, array(input.shape(), grad)))
}
