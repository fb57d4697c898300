//! The model's own output compared with the float model's: SQNR and top-1 agreement.

use serde::{Deserialize, Serialize};

use super::sqnr::SqnrSum;
use ndarray::ArrayD;

use crate::{GraphError, GraphResult, Value};

/// Top-1 agreement: rows (the last axis holds the classes) whose largest value is at the same
/// index in both outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Top1 {
    /// Rows whose top-1 index is the same.
    pub agree: usize,
    /// Rows compared.
    pub rows: usize,
    /// The length of the last axis (1 for an output that is not a classifier's).
    pub classes: usize,
}

impl Top1 {
    /// The agreeing fraction of the rows (1 for no rows).
    pub fn fraction(&self) -> f64 {
        if self.rows == 0 { 1.0 } else { self.agree as f64 / self.rows as f64 }
    }
}

/// The model output of a report (`Report::output`): its SQNR against the float model's output
/// over every input, and the top-1 agreement when the output is one tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelOutput {
    /// SQNR (dB) of the output against the float model's (tuples element by element).
    #[serde(with = "super::sqnr::decibels")]
    pub sqnr: Option<f64>,
    /// Top-1 agreement, for an output that is one tensor.
    pub top1: Option<Top1>,
}

/// Accumulates [`ModelOutput`] over the inputs.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputSum {
    sum: Option<SqnrSum>,
    top1: Option<Top1>,
}

impl OutputSum {
    /// Adds one input's outputs; an error naming `context` if they hold different tensors.
    pub(crate) fn add(&mut self, context: &'static str, float: &Value, other: &Value) -> GraphResult<()> {
        let (x, y) = (tensors(float), tensors(other));
        if x.len() != y.len() || x.iter().zip(&y).any(|(a, b)| a.shape() != b.shape()) {
            return Err(GraphError::Mismatch {
                context,
                reason: format!(
                    "the float model's output is {} but the compared model's is {}; compare a model with \
                     its own float original",
                    float.describe(),
                    other.describe()
                ),
            });
        }
        if x.is_empty() {
            return Ok(());
        }
        let sum = self.sum.get_or_insert_default();
        for (a, b) in x.iter().zip(&y) {
            sum.add(a, b)?;
        }
        if let ([a], [b]) = (x.as_slice(), y.as_slice()) {
            let classes = a.shape().last().copied().unwrap_or(1).max(1);
            let top1 = self.top1.get_or_insert(Top1 { agree: 0, rows: 0, classes });
            let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().copied().collect(), b.iter().copied().collect());
            for (ra, rb) in a.chunks(classes).zip(b.chunks(classes)) {
                top1.agree += usize::from(argmax(ra) == argmax(rb));
                top1.rows += 1;
            }
        }
        Ok(())
    }

    /// What was accumulated.
    pub(crate) fn finish(&self) -> ModelOutput {
        ModelOutput { sqnr: self.sum.map(|s| s.db()), top1: self.top1 }
    }
}

/// A value's float tensors: itself, or a tuple's elements; none for indices.
pub(super) fn tensors(value: &Value) -> Vec<ArrayD<f32>> {
    match value {
        Value::Tuple(items) => items.iter().flat_map(tensors).collect(),
        Value::Int(_) => Vec::new(),
        v => v.to_float().into_iter().collect(),
    }
}

/// The index of the largest value (the first of equal ones).
fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use ndarray::IxDyn;

    use super::*;

    #[test]
    fn rows_agree_by_their_first_largest_value() {
        let x = |v: Vec<f32>| Value::Float(ArrayD::from_shape_vec(IxDyn(&[2, 3]), v).unwrap());
        let mut sum = OutputSum::default();
        sum.add("test", &x(vec![1.0, 3.0, 3.0, 5.0, 0.0, 4.0]), &x(vec![1.0, 3.0, 2.0, 4.0, 0.0, 5.0]))
            .unwrap();
        let out = sum.finish();
        assert_eq!(out.top1, Some(Top1 { agree: 1, rows: 2, classes: 3 }));
        // Signal 60, noise 1 + 1 + 1.
        assert!((out.sqnr.unwrap() - 10.0 * 20f64.log10()).abs() < 1e-9);
        let wrong = Value::Float(ArrayD::zeros(IxDyn(&[3, 2])));
        assert!(sum.add("test", &x(vec![0.0; 6]), &wrong).is_err());
    }
}
