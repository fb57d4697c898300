//! Any fake quantizer as a qgraph [`Module`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use qcore::QParams;
use qgraph::workflow::ActivationPostProcess;
use qgraph::{GraphError, GraphResult, Module, PerTensor, Value};

use super::common::{FakeQuantState, FakeQuantizer};

/// A fake quantizer in a qgraph module tree: the `weight_fake_quant` of a QAT module, or the
/// `activation_post_process` `prepare_qat` attaches. qgraph's forward takes `&self`, so the
/// quantizer sits behind a mutex, as `qgraph::workflow::Observed` holds its observer. Forward is
/// PyTorch's in either mode: the observer updates while `observer_enabled`, the output is
/// fake-quantized while `fake_quant_enabled` (disable the observers before evaluating, as
/// PyTorch's QAT recipes do). Prints as the quantizer's PyTorch class.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::{FakeQuantModule, default_weight_fake_quant};
/// use qgraph::{Module, Value};
/// let module = FakeQuantModule::new(Box::new(default_weight_fake_quant()?));
/// let x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![-1.0f32, 0.3]).unwrap();
/// let y = module.forward(Value::Float(x))?.into_float("test")?;
/// assert!((y[0] + 1.0).abs() < 0.01); // fake-quantized with the observed scale, 2 / 255
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug)]
pub struct FakeQuantModule {
    quantizer: Mutex<Box<dyn FakeQuantizer>>,
    calls: AtomicUsize,
    training: bool,
}

/// What a [`FakeQuantModule`] saves.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FakeQuantModuleConfig {
    state: FakeQuantState,
    calls: usize,
}

impl FakeQuantModule {
    /// The name a fake quantizer module is saved under.
    pub const SAVED_TYPE: &'static str = "FakeQuantModule";

    /// Rebuilds a saved fake quantizer module (its observer statistics, parameters and flags).
    pub fn from_record(record: qgraph::record::Record<'_>) -> GraphResult<Self> {
        let c: FakeQuantModuleConfig = record.config()?;
        let module = Self::new(c.state.build()?);
        module.calls.store(c.calls, Ordering::Relaxed);
        Ok(module)
    }

    /// Sets PyTorch's buffers of the quantizer: `scale`, `zero_point`, the observer's
    /// `min_val` / `max_val` (one per tensor, or per channel along the observer's axis),
    /// `fake_quant_enabled` and `observer_enabled` (to resume from a PyTorch QAT `state_dict`).
    pub fn set_buffers(
        &self,
        scale: Vec<f32>,
        zero_point: Vec<f32>,
        (min, max): (Vec<f32>, Vec<f32>),
        (fake_quant_enabled, observer_enabled): (bool, bool),
    ) -> GraphResult<()> {
        let mut quantizer = self.lock();
        let mut state = quantizer.state();
        state.observer.statistics = match (&state.observer.statistics, min.len()) {
            (qobserve::Statistics::MinMax(_), 1) => qobserve::Statistics::MinMax(Some((min[0], max[0]))),
            (qobserve::Statistics::PerChannel(_), _) => {
                let axis = match &state.observer.spec {
                    qobserve::ObserverSpec::MovingAveragePerChannelMinMax { ch_axis, .. }
                    | qobserve::ObserverSpec::PerChannelMinMax { ch_axis, .. } => (*ch_axis).max(0) as usize,
                    _ => 0,
                };
                qobserve::Statistics::PerChannel(Some(qobserve::ChannelRanges { axis, min, max }))
            }
            (other, n) => {
                return Err(super::common::invalid(
                    "FakeQuantModule",
                    "min_val length",
                    n,
                    format!("does not fit the observer's statistics {other:?}"),
                ));
            }
        };
        state.scale = scale;
        state.zero_point = zero_point;
        state.fake_quant_enabled = fake_quant_enabled;
        state.observer_enabled = observer_enabled;
        *quantizer = state.build()?;
        // The buffers hold an observed range: convert may use them.
        self.calls.fetch_max(1, Ordering::Relaxed);
        Ok(())
    }

    /// Wraps `quantizer` (in eval mode).
    pub fn new(quantizer: Box<dyn FakeQuantizer>) -> Self {
        Self { quantizer: Mutex::new(quantizer), calls: AtomicUsize::new(0), training: false }
    }

    /// Fake-quantizes `x` (updating the observer when enabled) and counts the call: the forward of
    /// both inference and training.
    pub fn fake_quantize(
        &self,
        x: &ndarray::ArrayD<f32>,
    ) -> GraphResult<(ndarray::ArrayD<f32>, super::common::FakeQuantCtx)> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.lock().forward_train(x)
    }

    /// The quantizer's learned parameters ([`FakeQuantizer::learned_mut`]), reached without
    /// locking through the exclusive borrow.
    pub fn learned_mut(&mut self) -> Vec<(&'static str, &mut Vec<f32>)> {
        // A panic inside forward leaves parameters that are still a valid state.
        let quantizer = self.quantizer.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        quantizer.learned_mut()
    }

    /// The quantizer, locked (to read its parameters or toggle its flags).
    pub fn lock(&self) -> MutexGuard<'_, Box<dyn FakeQuantizer>> {
        // A panic inside forward leaves parameters that are still a valid state.
        self.quantizer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clone for FakeQuantModule {
    fn clone(&self) -> Self {
        Self {
            quantizer: Mutex::new(self.lock().clone_box()),
            calls: AtomicUsize::new(self.calls.load(Ordering::Relaxed)),
            training: self.training,
        }
    }
}

impl Module for FakeQuantModule {
    fn type_name(&self) -> &str {
        self.lock().type_name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_float(self.type_name())?;
        Ok(Value::Float(self.fake_quantize(&x)?.0))
    }

    fn as_post_process(&self) -> Option<&dyn ActivationPostProcess> {
        Some(self)
    }

    fn saved_type(&self) -> &str {
        Self::SAVED_TYPE
    }

    fn config(&self) -> serde_json::Value {
        let config =
            FakeQuantModuleConfig { state: self.lock().state(), calls: self.calls.load(Ordering::Relaxed) };
        serde_json::to_value(config).expect("plain data")
    }

    fn extra_repr(&self) -> String {
        self.lock().extra_repr()
    }

    fn training(&self) -> bool {
        self.training
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

impl ActivationPostProcess for FakeQuantModule {
    /// The quantizer's `calculate_qparams()`, which must be per tensor (an activation's).
    fn activation_qparams(&self) -> GraphResult<PerTensor> {
        let mut quantizer = self.lock();
        match quantizer.qparams()? {
            QParams::PerTensor { scale, zero_point } => Ok(PerTensor::new(scale, zero_point)),
            other => Err(GraphError::Workflow {
                step: "convert",
                reason: format!(
                    "activation fake quantizer {} gives {:?} parameters; activations are quantized per tensor: use a \
                     per-tensor activation observer in the QAT qconfig",
                    quantizer.type_name(),
                    other.qscheme()
                ),
            }),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}
