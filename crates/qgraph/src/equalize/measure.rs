//! How close a quantized model's outputs are to the float model's: the numbers the equalization
//! example and tests compare before and after.

use ndarray::{ArrayD, IxDyn};

use crate::ns::compute_sqnr;
use crate::{GraphResult, Module, Value};

/// Output agreement of a quantized model with its float model over a set of inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// SQNR of all quantized outputs against the float ones, in dB ([`compute_sqnr`] over the
    /// outputs of every input, concatenated).
    pub sqnr_db: f64,
    /// The fraction of samples whose largest output (top-1 class, last axis) is the same.
    pub top1: f64,
}

/// Runs `float` and `quantized` on each of `inputs` (float outputs `[N, classes]` or any shape
/// whose last axis holds the classes) and compares their outputs.
pub fn output_agreement(
    float: &dyn Module,
    quantized: &dyn Module,
    inputs: &[Value],
) -> GraphResult<Agreement> {
    let (mut reference, mut compared) = (Vec::new(), Vec::new());
    let (mut same, mut samples) = (0usize, 0usize);
    for x in inputs {
        let a = float.forward(x.clone())?.into_float_lossy()?;
        let b = quantized.forward(x.clone())?.into_float_lossy()?;
        if a.shape() != b.shape() {
            return Err(crate::GraphError::Mismatch {
                context: "output_agreement",
                reason: format!("float output {:?} but quantized output {:?}", a.shape(), b.shape()),
            });
        }
        let classes = a.shape().last().copied().unwrap_or(1).max(1);
        let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().copied().collect(), b.iter().copied().collect());
        for (ra, rb) in a.chunks(classes).zip(b.chunks(classes)) {
            same += usize::from(argmax(ra) == argmax(rb));
            samples += 1;
        }
        reference.extend(a);
        compared.extend(b);
    }
    let flat = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("one dimension");
    let sqnr_db = compute_sqnr(&flat(reference), &flat(compared))?;
    Ok(Agreement { sqnr_db, top1: same as f64 / samples.max(1) as f64 })
}

/// The index of the largest value (the first of equal ones).
fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}
