//! Inputs shared by the criterion benchmarks: deterministic tensors of the shapes CNNs use.

use ndarray::{Array, ArrayD, IxDyn};

/// A deterministic f32 tensor of `shape` with values spread over [-4, 4), from a fixed LCG.
pub fn activation(shape: &[usize]) -> ArrayD<f32> {
    let mut state = 0x2545_f491_u32;
    Array::from_shape_simple_fn(IxDyn(shape), || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0
    })
}
