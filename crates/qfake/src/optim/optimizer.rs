//! The [`Optimizer`] trait every optimizer implements and every scheduler drives.

use ndarray::ArrayD;

use crate::fake_quantize::QFakeResult;
use crate::train::Gradients;

/// An optimizer: updates parameters in place from their gradients.
pub trait Optimizer {
    /// One step: every parameter with an entry in `grads` is updated (others are skipped, as
    /// PyTorch skips `p.grad is None`).
    fn step(&mut self, params: &mut [(String, &mut ArrayD<f32>)], grads: &Gradients) -> QFakeResult<()>;

    /// The learning rate.
    fn lr(&self) -> f64;

    /// Sets the learning rate (a scheduler's step).
    fn set_lr(&mut self, lr: f64);

    /// The momentum a scheduler may cycle (`OneCycleLR`): SGD's `momentum`, Adam's `beta1`.
    fn momentum(&self) -> f64;

    /// Sets [`momentum`](Optimizer::momentum).
    fn set_momentum(&mut self, momentum: f64);

    /// The per-parameter state tensors by `<parameter>.<buffer>` name (`fc.weight.momentum_buffer`),
    /// to save in a checkpoint.
    fn state(&self) -> Vec<(String, ArrayD<f32>)>;

    /// Resumes from [`state`](Optimizer::state)'s tensors.
    fn load_state(&mut self, state: Vec<(String, ArrayD<f32>)>) -> QFakeResult<()>;
}
