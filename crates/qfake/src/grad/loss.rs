//! Cross-entropy loss.

use ndarray::{ArrayD, Axis};

use crate::fake_quantize::{QFakeResult, invalid};

/// `F.cross_entropy(logits, targets)` (mean over the batch): the loss and its gradient with
/// respect to `logits` (`[N, C]`). Log-softmax subtracts the row maximum first, as ATen does.
pub fn cross_entropy(logits: &ArrayD<f32>, targets: &[usize]) -> QFakeResult<(f32, ArrayD<f32>)> {
    if logits.ndim() != 2 || logits.shape()[0] != targets.len() || targets.is_empty() {
        return Err(invalid(
            "cross_entropy",
            "logits shape",
            logits.shape(),
            "must be [N, C] with one target per row",
        ));
    }
    let classes = logits.shape()[1];
    if let Some(t) = targets.iter().find(|&&t| t >= classes) {
        return Err(invalid("cross_entropy", "target", t, format!("must be below the {classes} classes")));
    }
    let n = targets.len() as f32;
    let mut grad = logits.as_standard_layout().into_owned();
    let mut total = 0f32;
    for (mut row, &t) in grad.axis_iter_mut(Axis(0)).zip(targets) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        let log_sum = sum.ln();
        total -= row[t] - max - log_sum;
        row.mapv_inplace(|v| (v - max - log_sum).exp() / n);
        row[t] -= 1.0 / n;
    }
    Ok((total / n, grad))
}
