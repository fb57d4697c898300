//! Optimizers: PyTorch's `torch.optim.SGD` and `Adam` (single-tensor CPU path), updating
//! parameters by `state_dict` name from the [`Gradients`] of a backward pass.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Zip};

use crate::fake_quantize::{QFakeResult, invalid};
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

    /// The per-parameter state tensors by `<parameter>.<buffer>` name (`fc.weight.momentum_buffer`),
    /// to save in a checkpoint.
    fn state(&self) -> Vec<(String, ArrayD<f32>)>;

    /// Resumes from [`state`](Optimizer::state)'s tensors.
    fn load_state(&mut self, state: Vec<(String, ArrayD<f32>)>) -> QFakeResult<()>;
}

/// `torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov, maximize)`.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::optim::{Optimizer, Sgd};
/// let mut w = ArrayD::from_elem(IxDyn(&[2]), 1.0f32);
/// let grads = [("w".to_string(), ArrayD::from_elem(IxDyn(&[2]), 0.5f32))].into_iter().collect();
/// let mut sgd = Sgd::new(0.1).momentum(0.9);
/// sgd.step(&mut [("w".to_string(), &mut w)], &grads)?;
/// assert_eq!(w[0], 0.95);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sgd {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    maximize: bool,
    momentum_buffers: BTreeMap<String, ArrayD<f32>>,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
            momentum_buffers: BTreeMap::new(),
        }
    }

    /// With `momentum`.
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// With `dampening` of the momentum.
    pub fn dampening(mut self, dampening: f64) -> Self {
        self.dampening = dampening;
        self
    }

    /// With L2 `weight_decay`.
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Nesterov momentum.
    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// Maximizes instead of minimizing.
    pub fn maximize(mut self, maximize: bool) -> Self {
        self.maximize = maximize;
        self
    }
}

/// `a.add_(b, alpha)`: `a + alpha * b` with one rounding, as ATen's vectorized CPU kernel
/// (`vec::fmadd`).
fn add_scaled(a: &mut ArrayD<f32>, b: &ArrayD<f32>, alpha: f32) {
    Zip::from(a).and(b).for_each(|a, &b| *a = b.mul_add(alpha, *a));
}

fn gradient_of<'g>(
    grads: &'g Gradients,
    name: &str,
    param: &ArrayD<f32>,
) -> QFakeResult<Option<&'g ArrayD<f32>>> {
    match grads.get(name) {
        Some(g) if g.shape() != param.shape() => Err(invalid(
            "optimizer",
            "gradient shape",
            g.shape(),
            format!("the gradient of `{name}` must have the parameter's shape {:?}", param.shape()),
        )),
        other => Ok(other),
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [(String, &mut ArrayD<f32>)], grads: &Gradients) -> QFakeResult<()> {
        for (name, param) in params.iter_mut() {
            let Some(grad) = gradient_of(grads, name, param)? else { continue };
            let mut d = if self.maximize { grad.mapv(|g| -g) } else { grad.clone() };
            if self.weight_decay != 0.0 {
                add_scaled(&mut d, param, self.weight_decay as f32);
            }
            if self.momentum != 0.0 {
                let buf = match self.momentum_buffers.get_mut(name.as_str()) {
                    Some(buf) => {
                        buf.mapv_inplace(|b| b * self.momentum as f32);
                        add_scaled(buf, &d, (1.0 - self.dampening) as f32);
                        buf.clone()
                    }
                    None => {
                        self.momentum_buffers.insert(name.clone(), d.clone());
                        d.clone()
                    }
                };
                if self.nesterov {
                    add_scaled(&mut d, &buf, self.momentum as f32);
                } else {
                    d = buf;
                }
            }
            add_scaled(param, &d, -self.lr as f32);
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn state(&self) -> Vec<(String, ArrayD<f32>)> {
        self.momentum_buffers.iter().map(|(k, v)| (format!("{k}.momentum_buffer"), v.clone())).collect()
    }

    fn load_state(&mut self, state: Vec<(String, ArrayD<f32>)>) -> QFakeResult<()> {
        let mut buffers = BTreeMap::new();
        for (key, value) in state {
            let name = key.strip_suffix(".momentum_buffer").ok_or_else(|| {
                invalid("Sgd", "state entry", &key, "SGD keeps `<parameter>.momentum_buffer` entries only")
            })?;
            buffers.insert(name.to_string(), value);
        }
        self.momentum_buffers = buffers;
        Ok(())
    }
}
