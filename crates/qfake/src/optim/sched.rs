//! Learning-rate schedulers: PyTorch's `torch.optim.lr_scheduler` classes with their exact
//! sequences (the recursive `get_lr()` forms, computed in f64 as Python does) and their
//! `state_dict` (`last_epoch`, `_step_count`, `_last_lr`, `base_lrs`), for one parameter group.

use serde::{Deserialize, Serialize};

use super::optimizer::Optimizer;
use crate::fake_quantize::{QFakeResult, invalid};

const CONTEXT: &str = "LrScheduler";

/// How `OneCycleLR` moves between two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Anneal {
    /// `"cos"`: `end + (start - end) / 2 * (cos(pi * pct) + 1)`.
    #[serde(rename = "cos")]
    Cos,
    /// `"linear"`: `(end - start) * pct + start`.
    #[serde(rename = "linear")]
    Linear,
}

impl Anneal {
    fn at(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            Anneal::Cos => {
                let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            Anneal::Linear => (end - start) * pct + start,
        }
    }
}

/// A schedule and its parameters, under PyTorch's class and argument names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheduler")]
pub enum Schedule {
    /// `StepLR(step_size, gamma)`: the lr times `gamma` every `step_size` epochs.
    #[serde(rename = "StepLR")]
    Step {
        /// Epochs between decays (positive).
        step_size: i64,
        /// The decay factor.
        gamma: f64,
    },
    /// `MultiStepLR(milestones, gamma)`: the lr times `gamma^n` at an epoch listed `n` times.
    #[serde(rename = "MultiStepLR")]
    MultiStep {
        /// The epochs of the decays (repeats count).
        milestones: Vec<i64>,
        /// The decay factor.
        gamma: f64,
    },
    /// `ExponentialLR(gamma)`: the lr times `gamma` every epoch.
    #[serde(rename = "ExponentialLR")]
    Exponential {
        /// The decay factor.
        gamma: f64,
    },
    /// `CosineAnnealingLR(T_max, eta_min)`: half a cosine from the base lr to `eta_min` over
    /// `T_max` epochs, then back up (PyTorch's recursive form).
    #[serde(rename = "CosineAnnealingLR")]
    CosineAnnealing {
        /// Epochs of half a period (positive).
        #[serde(rename = "T_max")]
        t_max: i64,
        /// The minimum lr.
        eta_min: f64,
    },
    /// `LinearLR(start_factor, end_factor, total_iters)`: the lr scaled by a factor going
    /// linearly from `start_factor` to `end_factor` over `total_iters` epochs.
    #[serde(rename = "LinearLR")]
    Linear {
        /// The first factor, in (0, 1].
        start_factor: f64,
        /// The last factor, in [0, 1].
        end_factor: f64,
        /// Epochs of the ramp.
        total_iters: i64,
    },
    /// `OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy, cycle_momentum,
    /// base_momentum, max_momentum, div_factor, final_div_factor, three_phase)`: up from
    /// `max_lr / div_factor` to `max_lr`, then down to `max_lr / div_factor / final_div_factor`
    /// (with `three_phase`, back to the start first), the momentum cycling the other way.
    #[serde(rename = "OneCycleLR")]
    OneCycle {
        /// The peak lr.
        max_lr: f64,
        /// Steps of the whole cycle (positive); stepping beyond it is an error.
        total_steps: i64,
        /// The fraction of the steps spent going up, in [0, 1].
        pct_start: f64,
        /// `anneal_strategy`.
        anneal_strategy: Anneal,
        /// Whether the optimizer's momentum (SGD's, Adam's beta1) cycles.
        cycle_momentum: bool,
        /// The momentum at the peak lr.
        base_momentum: f64,
        /// The momentum at the lowest lr.
        max_momentum: f64,
        /// `initial_lr = max_lr / div_factor`.
        div_factor: f64,
        /// `min_lr = initial_lr / final_div_factor`.
        final_div_factor: f64,
        /// Three phases (up, down to the start, down to the minimum) instead of two.
        three_phase: bool,
    },
}

impl Schedule {
    /// `OneCycleLR(max_lr, total_steps)` with PyTorch's defaults: `pct_start` 0.3, cosine
    /// annealing, momentum cycling between 0.85 and 0.95, `div_factor` 25, `final_div_factor`
    /// 1e4, two phases.
    pub fn one_cycle(max_lr: f64, total_steps: i64) -> Self {
        Schedule::OneCycle {
            max_lr,
            total_steps,
            pct_start: 0.3,
            anneal_strategy: Anneal::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }

    /// PyTorch's constructor checks.
    fn validate(&self) -> QFakeResult<()> {
        let bad =
            |what: &'static str, value: String, reason: &str| Err(invalid(CONTEXT, what, value, reason));
        match *self {
            Schedule::Step { step_size, .. } if step_size <= 0 => {
                bad("StepLR step_size", step_size.to_string(), "must be a positive number of epochs")
            }
            Schedule::CosineAnnealing { t_max, .. } if t_max <= 0 => {
                bad("CosineAnnealingLR T_max", t_max.to_string(), "must be a positive number of epochs")
            }
            Schedule::Linear { start_factor, .. } if !(start_factor > 0.0 && start_factor <= 1.0) => {
                bad("LinearLR start_factor", start_factor.to_string(), "must be greater than 0 and at most 1")
            }
            Schedule::Linear { end_factor, .. } if !(0.0..=1.0).contains(&end_factor) => {
                bad("LinearLR end_factor", end_factor.to_string(), "must be between 0 and 1")
            }
            Schedule::OneCycle { total_steps, .. } if total_steps <= 0 => {
                bad("OneCycleLR total_steps", total_steps.to_string(), "must be a positive integer")
            }
            Schedule::OneCycle { pct_start, .. } if !(0.0..=1.0).contains(&pct_start) => {
                bad("OneCycleLR pct_start", pct_start.to_string(), "must be between 0 and 1")
            }
            _ => Ok(()),
        }
    }
}

/// A learning-rate scheduler driving one optimizer's lr (PyTorch's `LRScheduler` on one
/// parameter group). [`new`](LrScheduler::new) takes the optimizer's lr as the base lr and
/// makes the initial step, as PyTorch's constructor; call [`step`](LrScheduler::step) after
/// each `optimizer.step()`. It serializes as PyTorch's `state_dict` (`last_epoch`,
/// `_step_count`, `_last_lr`, `base_lrs` and the schedule's arguments), which
/// [`crate::checkpoint`] saves.
///
/// ```
/// use qfake::optim::{LrScheduler, Optimizer, Schedule, Sgd};
/// let mut sgd = Sgd::new(0.1);
/// let mut sched = LrScheduler::new(Schedule::Step { step_size: 2, gamma: 0.5 }, &mut sgd)?;
/// let mut lrs = vec![sgd.lr()];
/// for _ in 0..4 {
///     sched.step(&mut sgd)?;
///     lrs.push(sgd.lr());
/// }
/// assert_eq!(lrs, [0.1, 0.1, 0.05, 0.05, 0.025]);
/// assert_eq!(sched.last_epoch(), 4);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrScheduler {
    /// The schedule and its arguments.
    #[serde(flatten)]
    schedule: Schedule,
    /// `base_lrs`: the optimizer's lr at construction (`initial_lr`; `max_lr / div_factor` for
    /// `OneCycleLR`).
    base_lrs: Vec<f64>,
    /// `last_epoch`: the index of the last step.
    last_epoch: i64,
    /// `_step_count`: steps taken, the constructor's included.
    #[serde(rename = "_step_count")]
    step_count: i64,
    /// `_last_lr`: the lr the last step set.
    #[serde(rename = "_last_lr")]
    last_lr: Vec<f64>,
}

impl LrScheduler {
    /// The scheduler of `schedule` on `optimizer`: PyTorch's constructor with `last_epoch=-1`
    /// (the base lr is the optimizer's lr, `OneCycleLR` sets its own and the momentum), then
    /// its initial step, which sets the epoch-0 lr.
    pub fn new(schedule: Schedule, optimizer: &mut dyn Optimizer) -> QFakeResult<Self> {
        schedule.validate()?;
        let base = match &schedule {
            Schedule::OneCycle { max_lr, div_factor, cycle_momentum, max_momentum, .. } => {
                if *cycle_momentum {
                    optimizer.set_momentum(*max_momentum);
                }
                max_lr / div_factor
            }
            _ => optimizer.lr(),
        };
        let mut sched =
            Self { schedule, base_lrs: vec![base], last_epoch: -1, step_count: 0, last_lr: vec![base] };
        sched.advance(optimizer, true)?;
        Ok(sched)
    }

    /// `step()`: the next epoch's lr (and momentum, for a cycling `OneCycleLR`) into `optimizer`.
    pub fn step(&mut self, optimizer: &mut dyn Optimizer) -> QFakeResult<()> {
        self.advance(optimizer, false)
    }

    fn advance(&mut self, optimizer: &mut dyn Optimizer, initial: bool) -> QFakeResult<()> {
        self.step_count += 1;
        self.last_epoch += 1;
        let (lr, momentum) = self.next_lr(optimizer.lr(), initial)?;
        optimizer.set_lr(lr);
        if let Some(momentum) = momentum {
            optimizer.set_momentum(momentum);
        }
        self.last_lr = vec![lr];
        Ok(())
    }

    /// `get_lr()` at `last_epoch` from the optimizer's current `lr`, and the momentum
    /// `OneCycleLR` sets; `initial` is PyTorch's `_is_initial` (the constructor's step).
    fn next_lr(&self, lr: f64, initial: bool) -> QFakeResult<(f64, Option<f64>)> {
        let epoch = self.last_epoch;
        let base_lr = self.base_lrs[0];
        let lr = match self.schedule {
            Schedule::Step { step_size, gamma } => {
                if epoch == 0 || epoch % step_size != 0 {
                    lr
                } else {
                    lr * gamma
                }
            }
            Schedule::MultiStep { ref milestones, gamma } => {
                let n = milestones.iter().filter(|&&m| m == epoch).count();
                if n == 0 { lr } else { lr * gamma.powf(n as f64) }
            }
            Schedule::Exponential { gamma } => {
                if initial {
                    lr
                } else {
                    lr * gamma
                }
            }
            Schedule::CosineAnnealing { t_max, eta_min } => {
                use std::f64::consts::PI;
                let t = t_max as f64;
                let e = epoch as f64;
                if initial {
                    lr
                } else if self.step_count == 1 && epoch > 0 {
                    eta_min + (base_lr - eta_min) * (1.0 + (e * PI / t).cos()) / 2.0
                } else if (epoch - 1 - t_max).rem_euclid(2 * t_max) == 0 {
                    lr + (base_lr - eta_min) * (1.0 - (PI / t).cos()) / 2.0
                } else {
                    (1.0 + (PI * e / t).cos()) / (1.0 + (PI * (e - 1.0) / t).cos()) * (lr - eta_min) + eta_min
                }
            }
            Schedule::Linear { start_factor, end_factor, total_iters } => {
                if epoch == 0 {
                    lr * start_factor
                } else if initial || epoch > total_iters {
                    lr
                } else {
                    let ramp = end_factor - start_factor;
                    lr * (1.0 + ramp / (total_iters as f64 * start_factor + (epoch - 1) as f64 * ramp))
                }
            }
            Schedule::OneCycle { .. } => return self.one_cycle(),
        };
        Ok((lr, None))
    }

    /// `OneCycleLR.get_lr()`: the phase holding `last_epoch`, annealed from its start to its end.
    fn one_cycle(&self) -> QFakeResult<(f64, Option<f64>)> {
        let Schedule::OneCycle {
            max_lr,
            total_steps,
            pct_start,
            anneal_strategy,
            cycle_momentum,
            base_momentum,
            max_momentum,
            div_factor,
            final_div_factor,
            three_phase,
        } = self.schedule
        else {
            unreachable!("called for OneCycleLR only")
        };
        let step = self.last_epoch;
        if step > total_steps {
            return Err(invalid(
                CONTEXT,
                "OneCycleLR step",
                step,
                format!("tried to step {step} times; the specified number of total steps is {total_steps}"),
            ));
        }
        let initial_lr = max_lr / div_factor;
        let min_lr = initial_lr / final_div_factor;
        let total = total_steps as f64;
        // (end_step, start_lr, end_lr, start_momentum, end_momentum)
        let phases: Vec<(f64, f64, f64, f64, f64)> = if three_phase {
            vec![
                (pct_start * total - 1.0, initial_lr, max_lr, max_momentum, base_momentum),
                (2.0 * pct_start * total - 2.0, max_lr, initial_lr, base_momentum, max_momentum),
                (total - 1.0, initial_lr, min_lr, max_momentum, max_momentum),
            ]
        } else {
            vec![
                (pct_start * total - 1.0, initial_lr, max_lr, max_momentum, base_momentum),
                (total - 1.0, max_lr, min_lr, base_momentum, max_momentum),
            ]
        };
        let mut start_step = 0.0;
        let step_f = step as f64;
        for (i, &(end_step, start_lr, end_lr, start_m, end_m)) in phases.iter().enumerate() {
            if step_f <= end_step || i == phases.len() - 1 {
                if end_step == start_step {
                    return Err(invalid(
                        CONTEXT,
                        "OneCycleLR phases",
                        format!("pct_start {pct_start}, total_steps {total_steps}"),
                        "give a phase of at least one step (PyTorch divides by zero here)",
                    ));
                }
                let pct = (step_f - start_step) / (end_step - start_step);
                let lr = anneal_strategy.at(start_lr, end_lr, pct);
                let momentum = cycle_momentum.then(|| anneal_strategy.at(start_m, end_m, pct));
                return Ok((lr, momentum));
            }
            start_step = end_step;
        }
        unreachable!("the last phase always matches")
    }

    /// `last_epoch`: the index of the last step (0 after construction).
    pub fn last_epoch(&self) -> i64 {
        self.last_epoch
    }

    /// `get_last_lr()[0]`: the lr the last step set.
    pub fn last_lr(&self) -> f64 {
        self.last_lr[0]
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// `state_dict()`: PyTorch's entries (`last_epoch`, `_step_count`, `_last_lr`, `base_lrs`,
    /// the schedule's arguments, `scheduler` naming the class) as JSON.
    pub fn state_dict(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    /// `load_state_dict(state)`: resumes the schedule from [`state_dict`](Self::state_dict)'s
    /// entries (all of them, the schedule's arguments included, as PyTorch updates `__dict__`).
    pub fn load_state_dict(&mut self, state: &serde_json::Value) -> QFakeResult<()> {
        *self = Self::from_state_dict(state)?;
        Ok(())
    }

    /// The scheduler a [`state_dict`](Self::state_dict) describes (checked as the constructor
    /// checks its arguments).
    pub fn from_state_dict(state: &serde_json::Value) -> QFakeResult<Self> {
        let loaded: Self = serde_json::from_value(state.clone()).map_err(|e| {
            invalid(
                CONTEXT,
                "state_dict",
                state.to_string(),
                format!("is not a scheduler's state ({e}); give what LrScheduler::state_dict made"),
            )
        })?;
        loaded.schedule.validate()?;
        if loaded.base_lrs.len() != 1 || loaded.last_lr.len() != 1 {
            return Err(invalid(
                CONTEXT,
                "base_lrs / _last_lr lengths",
                (loaded.base_lrs.len(), loaded.last_lr.len()),
                "one parameter group is supported: give one value each",
            ));
        }
        Ok(loaded)
    }
}
