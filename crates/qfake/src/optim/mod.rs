//! Optimizers: PyTorch's `torch.optim.SGD` and `Adam` (single-tensor CPU path), updating
//! parameters by `state_dict` name from the [`Gradients`] of a backward pass, and the
//! learning-rate schedulers of `torch.optim.lr_scheduler` ([`LrScheduler`]).

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::fake_quantize::{QFakeResult, invalid};
use crate::train::Gradients;

mod optimizer;
mod sched;

pub use optimizer::Optimizer;
pub use sched::{Anneal, LrScheduler, Schedule};

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

/// `out[i] = op(i, out[i])`: ATen's elementwise CPU loops, whose multiply-adds are fused in the
/// vector body (`vec::fmadd`) and, as PyTorch's x86 build contracts them, in the scalar tail too
/// (checked on tensors of 1, 7, 33, 257 and 432 elements).
fn pointwise(out: &mut ArrayD<f32>, op: impl Fn(usize, f32) -> f32) {
    for (i, v) in out.iter_mut().enumerate() {
        *v = op(i, *v);
    }
}

/// Flat values of a standard-layout array.
fn flat(x: &ArrayD<f32>) -> &[f32] {
    x.as_slice().expect("parameters, gradients and states are kept in standard layout")
}

/// `a.add_(b, alpha)`: `a + alpha * b`, one fused multiply-add in ATen's vector body.
fn add_scaled(a: &mut ArrayD<f32>, b: &ArrayD<f32>, alpha: f32) {
    let b = flat(b);
    pointwise(a, |i, a| b[i].mul_add(alpha, a));
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

    fn momentum(&self) -> f64 {
        self.momentum
    }

    fn set_momentum(&mut self, momentum: f64) {
        self.momentum = momentum;
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

/// `torch.optim.Adam` (and AdamW with [`Adam::decoupled_weight_decay`]): `lr`, `betas`, `eps`,
/// `weight_decay`, `amsgrad`, `maximize`, PyTorch's single-tensor CPU path operation by
/// operation (bias corrections in f64, as Python computes them).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::optim::{Adam, Optimizer};
/// let mut w = ArrayD::from_elem(IxDyn(&[2]), 1.0f32);
/// let grads = [("w".to_string(), ArrayD::from_elem(IxDyn(&[2]), 0.5f32))].into_iter().collect();
/// let mut adam = Adam::new(0.1);
/// adam.step(&mut [("w".to_string(), &mut w)], &grads)?;
/// assert!((w[0] - 0.9).abs() < 1e-6); // the first step moves by lr
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Adam {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
    state: BTreeMap<String, AdamState>,
}

/// One parameter's Adam state.
#[derive(Debug, Clone)]
struct AdamState {
    step: u64,
    exp_avg: ArrayD<f32>,
    exp_avg_sq: ArrayD<f32>,
    max_exp_avg_sq: Option<ArrayD<f32>>,
}

impl Adam {
    /// Adam with learning rate `lr` and PyTorch's defaults (betas 0.9, 0.999, eps 1e-8).
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            amsgrad: false,
            maximize: false,
            state: BTreeMap::new(),
        }
    }

    /// With `betas`.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    /// With `eps`.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// With L2 `weight_decay` added to the gradient (Adam's).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        (self.weight_decay, self.decoupled) = (weight_decay, false);
        self
    }

    /// With decoupled weight decay: `p *= 1 - lr * weight_decay` before the update (AdamW's;
    /// PyTorch's AdamW default is 0.01).
    pub fn decoupled_weight_decay(mut self, weight_decay: f64) -> Self {
        (self.weight_decay, self.decoupled) = (weight_decay, true);
        self
    }

    /// AMSGrad: the denominator from the running maximum of the second moment.
    pub fn amsgrad(mut self, amsgrad: bool) -> Self {
        self.amsgrad = amsgrad;
        self
    }

    /// Maximizes instead of minimizing.
    pub fn maximize(mut self, maximize: bool) -> Self {
        self.maximize = maximize;
        self
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [(String, &mut ArrayD<f32>)], grads: &Gradients) -> QFakeResult<()> {
        let (beta1, beta2) = self.betas;
        for (name, param) in params.iter_mut() {
            let Some(grad) = gradient_of(grads, name, param)? else { continue };
            let mut g =
                if self.maximize { grad.mapv(|g| -g) } else { grad.as_standard_layout().into_owned() };
            if self.weight_decay != 0.0 {
                if self.decoupled {
                    let keep = (1.0 - self.lr * self.weight_decay) as f32;
                    param.mapv_inplace(|p| p * keep);
                } else {
                    add_scaled(&mut g, param, self.weight_decay as f32);
                }
            }
            let amsgrad = self.amsgrad;
            let state = self.state.entry(name.clone()).or_insert_with(|| AdamState {
                step: 0,
                exp_avg: ArrayD::zeros(param.raw_dim()),
                exp_avg_sq: ArrayD::zeros(param.raw_dim()),
                max_exp_avg_sq: amsgrad.then(|| ArrayD::zeros(param.raw_dim())),
            });
            state.step += 1;
            // exp_avg.lerp_(grad, 1 - beta1): ATen's lerp, weight below or above one half.
            let weight = (1.0 - beta1) as f32;
            let gs = flat(&g);
            if weight.abs() < 0.5 {
                pointwise(&mut state.exp_avg, |i, a| weight.mul_add(gs[i] - a, a));
            } else {
                let coeff = weight - 1.0;
                pointwise(&mut state.exp_avg, |i, a| coeff.mul_add(gs[i] - a, gs[i]));
            }
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).
            let (b2, value) = (beta2 as f32, (1.0 - beta2) as f32);
            state.exp_avg_sq.mapv_inplace(|v| v * b2);
            pointwise(&mut state.exp_avg_sq, |i, v| (value * gs[i]).mul_add(gs[i], v));
            let step = state.step as f64;
            let bias_correction1 = 1.0 - beta1.powf(step);
            // Python's `bias_correction2 ** 0.5`.
            let bias_correction2_sqrt = (1.0 - beta2.powf(step)).powf(0.5);
            let step_size = (-(self.lr / bias_correction1)) as f32;
            let (bc2, eps) = (bias_correction2_sqrt as f32, self.eps as f32);
            let second = match state.max_exp_avg_sq.as_mut() {
                Some(max) => {
                    max.zip_mut_with(&state.exp_avg_sq, |m, &v| {
                        *m = if v > *m || v.is_nan() { v } else { *m }
                    });
                    &*max
                }
                None => &state.exp_avg_sq,
            };
            let inv = 1.0 / bc2;
            let denom = second.mapv(|v| v.sqrt() * inv + eps);
            let (avg, den) = (flat(&state.exp_avg), flat(&denom));
            // param.addcdiv_(exp_avg, denom, value=-step_size): not fused (measured).
            pointwise(param, |i, p| p + step_size * (avg[i] / den[i]));
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn momentum(&self) -> f64 {
        self.betas.0
    }

    fn set_momentum(&mut self, momentum: f64) {
        self.betas.0 = momentum;
    }

    fn state(&self) -> Vec<(String, ArrayD<f32>)> {
        let mut out = Vec::new();
        for (name, s) in &self.state {
            out.push((format!("{name}.step"), ArrayD::from_elem(ndarray::IxDyn(&[]), s.step as f32)));
            out.push((format!("{name}.exp_avg"), s.exp_avg.clone()));
            out.push((format!("{name}.exp_avg_sq"), s.exp_avg_sq.clone()));
            if let Some(max) = &s.max_exp_avg_sq {
                out.push((format!("{name}.max_exp_avg_sq"), max.clone()));
            }
        }
        out
    }

    fn load_state(&mut self, state: Vec<(String, ArrayD<f32>)>) -> QFakeResult<()> {
        let mut parts: BTreeMap<String, BTreeMap<String, ArrayD<f32>>> = BTreeMap::new();
        for (key, value) in state {
            let (name, kind) = key.rsplit_once('.').ok_or_else(|| {
                invalid(
                    "Adam",
                    "state entry",
                    &key,
                    "Adam keeps `<parameter>.<step|exp_avg|exp_avg_sq|max_exp_avg_sq>`",
                )
            })?;
            parts.entry(name.to_string()).or_default().insert(kind.to_string(), value);
        }
        let mut states = BTreeMap::new();
        for (name, mut kinds) in parts {
            let missing = |kind: &str| {
                invalid("Adam", "state entry", format!("{name}.{kind}"), "missing; load a state Adam saved")
            };
            let step = kinds.remove("step").ok_or_else(|| missing("step"))?;
            let state = AdamState {
                step: step.iter().next().copied().unwrap_or(0.0) as u64,
                exp_avg: kinds.remove("exp_avg").ok_or_else(|| missing("exp_avg"))?,
                exp_avg_sq: kinds.remove("exp_avg_sq").ok_or_else(|| missing("exp_avg_sq"))?,
                max_exp_avg_sq: kinds.remove("max_exp_avg_sq"),
            };
            if state.max_exp_avg_sq.is_some() != self.amsgrad {
                return Err(invalid(
                    "Adam",
                    "amsgrad",
                    self.amsgrad,
                    format!("the saved state of `{name}` was made with the other setting"),
                ));
            }
            states.insert(name, state);
        }
        self.state = states;
        Ok(())
    }
}
