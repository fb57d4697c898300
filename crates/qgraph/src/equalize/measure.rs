//! How close a quantized model's outputs are to the float model's: the numbers the equalization
//! example and tests compare before and after.

use crate::ns::OutputSum;
use crate::{GraphResult, Module, Value};

/// Output agreement of a quantized model with its float model over a set of inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// SQNR of all quantized outputs against the float ones, in dB ([`crate::ns::compute_sqnr`]
    /// over the outputs of every input, laid end to end).
    pub sqnr_db: f64,
    /// The fraction of samples whose largest output (top-1 class, last axis) is the same.
    pub top1: f64,
}

/// Runs `float` and `quantized` on each of `inputs` (float outputs `[N, classes]` or any shape
/// whose last axis holds the classes) and compares their outputs (as
/// [`ns::report`](crate::ns::report) compares the model output).
pub fn output_agreement(
    float: &dyn Module,
    quantized: &dyn Module,
    inputs: &[Value],
) -> GraphResult<Agreement> {
    let mut sum = OutputSum::default();
    for x in inputs {
        sum.add("output_agreement", &float.forward(x.clone())?, &quantized.forward(x.clone())?)?;
    }
    let output = sum.finish();
    Ok(Agreement {
        sqnr_db: output.sqnr.unwrap_or(f64::NAN),
        top1: output.top1.map_or(1.0, |t| t.fraction()),
    })
}
