//! `F.dropout` in training mode with a seedable generator.

use ndarray::ArrayD;

use super::check::{array, bad, to_vec};
use crate::QFakeResult;

const CONTEXT: &str = "qfake::grad::dropout";

/// A small seedable generator for dropout masks (xorshift64*). PyTorch's CPU generator
/// (mt19937 behind `bernoulli_`) is not reproduced, so masks differ from PyTorch's for the same
/// seed; their distribution is the same (each element kept with probability `1 - p`).
#[derive(Debug, Clone)]
pub struct DropoutRng(u64);

impl DropoutRng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// A uniform value in `[0, 1)` with 24 random bits.
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u32 << 24) as f32
    }
}

/// `F.dropout(input, p, training=True)`: each element kept with probability `1 - p` and scaled
/// by `1 / (1 - p)`, else 0. Returns the output and the mask (true where kept); the backward is
/// [`dropout_backward`]. `p = 1` zeroes everything, `p = 0` keeps everything.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::grad::{DropoutRng, dropout_train};
/// let x = ArrayD::from_elem(IxDyn(&[1000]), 1.0);
/// let (y, mask) = dropout_train(&x, 0.5, &mut DropoutRng::new(7))?;
/// let kept = mask.iter().filter(|&&m| m).count();
/// assert!((400..600).contains(&kept));
/// assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn dropout_train(
    input: &ArrayD<f32>,
    p: f64,
    rng: &mut DropoutRng,
) -> QFakeResult<(ArrayD<f32>, ArrayD<bool>)> {
    if !(0.0..=1.0).contains(&p) {
        return Err(bad(CONTEXT, "p", p, "dropout probability has to be between 0 and 1"));
    }
    let mask: Vec<bool> = (0..input.len()).map(|_| p < 1.0 && rng.next_f32() as f64 >= p).collect();
    let mask = ArrayD::from_shape_vec(input.raw_dim(), mask).expect("one flag per element");
    let out = dropout_backward(input, &mask, p)?;
    Ok((out, mask))
}

/// The backward of [`dropout_train`] (and its forward given the mask): `grad * mask / (1 - p)`,
/// 0 everywhere for `p = 1`. The scale is `1 / (1 - p)` in f32 and multiplies, as ATen's
/// `_dropout_impl` (`input * noise` with `noise = bernoulli(1 - p) / (1 - p)`).
pub fn dropout_backward(grad_output: &ArrayD<f32>, mask: &ArrayD<bool>, p: f64) -> QFakeResult<ArrayD<f32>> {
    super::check::check_shape(CONTEXT, "mask", mask.shape(), grad_output.shape())?;
    if !(0.0..=1.0).contains(&p) {
        return Err(bad(CONTEXT, "p", p, "dropout probability has to be between 0 and 1"));
    }
    let scale = if p < 1.0 { (1.0 / (1.0 - p)) as f32 } else { 0.0 };
    let g = to_vec(grad_output);
    let out = g.iter().zip(mask.iter()).map(|(&v, &m)| if m { v * scale } else { 0.0 }).collect();
    Ok(array(grad_output.shape(), out))
}
