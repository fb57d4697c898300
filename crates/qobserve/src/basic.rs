//! The observers that compute nothing from data: `FixedQParamsObserver`, `PlaceholderObserver`,
//! `NoopObserver` and `RecordingObserver`. They accept any input, NaN and ±Inf included.

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::common::{wrong_spec, wrong_statistics};
use crate::observer::{Counters, RecordedTensor, Statistics};
use crate::{ObserveError, ObserveResult, Observer, ObserverSpec, ObserverState, ObserverStats, QParams};

/// Counts a batch.
fn count(counters: &mut Counters, x: &ArrayViewD<'_, f32>) {
    if !x.is_empty() {
        counters.batches += 1;
        counters.elements += x.len() as u64;
    }
}

/// Implements the parts of [`Observer`] shared by the stateless observers.
macro_rules! stateless_observer {
    ($ty:ty, $qparams:expr) => {
        impl Observer for $ty {
            fn name(&self) -> &'static str {
                Self::NAME
            }
            fn spec(&self) -> ObserverSpec {
                self.spec.clone()
            }
            fn observe(&mut self, x: ArrayViewD<'_, f32>) -> ObserveResult<()> {
                count(&mut self.counters, &x);
                Ok(())
            }
            fn calculate_qparams(&self) -> ObserveResult<QParams> {
                #[allow(clippy::redundant_closure_call)]
                ($qparams)(self)
            }
            fn reset(&mut self) {
                self.counters = Counters::default();
            }
            fn stats(&self) -> ObserverStats {
                ObserverStats { observer: Self::NAME.to_string(), counters: self.counters, range: None }
            }
            fn state(&self) -> ObserverState {
                ObserverState {
                    spec: self.spec.clone(),
                    counters: self.counters,
                    statistics: Statistics::Stateless,
                }
            }
            fn load_state(&mut self, state: &ObserverState) -> ObserveResult<()> {
                state.check_spec(Self::NAME, &self.spec)?;
                match &state.statistics {
                    Statistics::Stateless => {
                        self.counters = state.counters;
                        Ok(())
                    }
                    other => Err(wrong_statistics(Self::NAME, other)),
                }
            }
            fn merge(&mut self, other: &ObserverState) -> ObserveResult<()> {
                state_is_stateless(Self::NAME, &self.spec, other)?;
                self.counters.add(&other.counters);
                Ok(())
            }
        }
    };
}

fn state_is_stateless(
    observer: &'static str,
    spec: &ObserverSpec,
    state: &ObserverState,
) -> ObserveResult<()> {
    state.check_spec(observer, spec)?;
    match &state.statistics {
        Statistics::Stateless => Ok(()),
        other => Err(wrong_statistics(observer, other)),
    }
}

/// PyTorch's `FixedQParamsObserver`: returns the scale (rounded to float32, as PyTorch stores it)
/// and zero point it was given, whatever it observes. Per tensor only.
#[derive(Debug, Clone)]
pub struct FixedQParamsObserver {
    spec: ObserverSpec,
    scale: f32,
    zero_point: i64,
    counters: Counters,
}

impl FixedQParamsObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "FixedQParamsObserver";

    /// Builds from an [`ObserverSpec::FixedQParams`]; checks what PyTorch leaves unchecked: the
    /// scale must be usable, the quant range valid for the dtype and the zero point inside it.
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        let ObserverSpec::FixedQParams { scale, zero_point, dtype, qscheme, quant_min, quant_max } = spec
        else {
            return Err(wrong_spec(Self::NAME, spec));
        };
        if qscheme.is_per_channel() {
            return Err(ObserveError::IncompatibleOptions {
                observer: Self::NAME,
                options: format!("qscheme={qscheme}"),
                reason: "fixed parameters are per tensor; use per_tensor_affine or per_tensor_symmetric",
            });
        }
        let scale32 = *scale as f32;
        qcore::inverse_scale(Self::NAME, f64::from(scale32))?;
        let (qmin, qmax) = qcore::calculate_qmin_qmax(Some(*quant_min), Some(*quant_max), *dtype, false)?;
        if !(qmin..=qmax).contains(zero_point) {
            return Err(ObserveError::InvalidArgument {
                observer: Self::NAME,
                name: "zero_point",
                value: zero_point.to_string(),
                reason: "the zero point must lie in [quant_min, quant_max]",
            });
        }
        Ok(Self {
            spec: spec.clone(),
            scale: scale32,
            zero_point: *zero_point,
            counters: Counters::default(),
        })
    }
}

stateless_observer!(FixedQParamsObserver, |s: &FixedQParamsObserver| Ok(QParams::PerTensor {
    scale: f64::from(s.scale),
    zero_point: s.zero_point,
}));

/// PyTorch's `PlaceholderObserver`: carries a dtype and range to `convert`, observes nothing,
/// and has no parameters to compute.
#[derive(Debug, Clone)]
pub struct PlaceholderObserver {
    spec: ObserverSpec,
    counters: Counters,
}

impl PlaceholderObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "PlaceholderObserver";

    /// Builds from an [`ObserverSpec::Placeholder`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        match spec {
            ObserverSpec::Placeholder { .. } => {
                Ok(Self { spec: spec.clone(), counters: Counters::default() })
            }
            other => Err(wrong_spec(Self::NAME, other)),
        }
    }
}

stateless_observer!(PlaceholderObserver, |_: &PlaceholderObserver| Err(ObserveError::NoQParams {
    observer: PlaceholderObserver::NAME,
    reason: "it only carries its dtype and range to convert (dynamic quantization computes parameters at run \
             time); use a MinMax or Histogram observer for static quantization",
}));

/// PyTorch's `NoopObserver` (float16 quantization): observes nothing, computes nothing.
#[derive(Debug, Clone)]
pub struct NoopObserver {
    spec: ObserverSpec,
    counters: Counters,
}

impl NoopObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "NoopObserver";

    /// Builds from an [`ObserverSpec::Noop`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        match spec {
            ObserverSpec::Noop { .. } => Ok(Self { spec: spec.clone(), counters: Counters::default() }),
            other => Err(wrong_spec(Self::NAME, other)),
        }
    }
}

stateless_observer!(NoopObserver, |_: &NoopObserver| Err(ObserveError::NoQParams {
    observer: NoopObserver::NAME,
    reason: "it marks float16 quantization, which needs no range; use a MinMax or Histogram observer for int8",
}));

/// PyTorch's `RecordingObserver`: keeps a copy of every observed tensor (for debugging).
#[derive(Debug, Clone)]
pub struct RecordingObserver {
    spec: ObserverSpec,
    tensors: Vec<ArrayD<f32>>,
    counters: Counters,
}

impl RecordingObserver {
    /// PyTorch's class name.
    pub const NAME: &'static str = "RecordingObserver";

    /// Builds from an [`ObserverSpec::Recording`].
    pub fn from_spec(spec: &ObserverSpec) -> ObserveResult<Self> {
        match spec {
            ObserverSpec::Recording { .. } => {
                Ok(Self { spec: spec.clone(), tensors: Vec::new(), counters: Counters::default() })
            }
            other => Err(wrong_spec(Self::NAME, other)),
        }
    }

    /// The recorded tensors, in observation order (PyTorch's `get_tensor_value`).
    pub fn tensor_values(&self) -> &[ArrayD<f32>] {
        &self.tensors
    }

    fn decode(state: &ObserverState) -> ObserveResult<Vec<ArrayD<f32>>> {
        let Statistics::Recording(list) = &state.statistics else {
            return Err(wrong_statistics(Self::NAME, &state.statistics));
        };
        list.iter()
            .map(|t| {
                let values = t.bits.iter().map(|&b| f32::from_bits(b)).collect();
                ArrayD::from_shape_vec(IxDyn(&t.shape), values).map_err(|e| ObserveError::InvalidState {
                    observer: Self::NAME,
                    reason: format!(
                        "a recorded tensor of shape {:?} has {} values: {e}",
                        t.shape,
                        t.bits.len()
                    ),
                })
            })
            .collect()
    }
}

impl Observer for RecordingObserver {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn spec(&self) -> ObserverSpec {
        self.spec.clone()
    }

    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> ObserveResult<()> {
        // PyTorch records every call, empty tensors included.
        self.tensors.push(x.to_owned());
        count(&mut self.counters, &x);
        Ok(())
    }

    fn calculate_qparams(&self) -> ObserveResult<QParams> {
        Err(ObserveError::NoQParams {
            observer: Self::NAME,
            reason: "it only records tensors for debugging; read them with tensor_values()",
        })
    }

    fn reset(&mut self) {
        self.tensors.clear();
        self.counters = Counters::default();
    }

    fn stats(&self) -> ObserverStats {
        ObserverStats { observer: Self::NAME.to_string(), counters: self.counters, range: None }
    }

    fn state(&self) -> ObserverState {
        let list = self
            .tensors
            .iter()
            .map(|t| RecordedTensor {
                shape: t.shape().to_vec(),
                bits: t.iter().map(|v| v.to_bits()).collect(),
            })
            .collect();
        ObserverState {
            spec: self.spec.clone(),
            counters: self.counters,
            statistics: Statistics::Recording(list),
        }
    }

    fn load_state(&mut self, state: &ObserverState) -> ObserveResult<()> {
        state.check_spec(Self::NAME, &self.spec)?;
        self.tensors = Self::decode(state)?;
        self.counters = state.counters;
        Ok(())
    }

    fn merge(&mut self, other: &ObserverState) -> ObserveResult<()> {
        other.check_spec(Self::NAME, &self.spec)?;
        let more = Self::decode(other)?;
        self.tensors.extend(more);
        self.counters.add(&other.counters);
        Ok(())
    }
}
