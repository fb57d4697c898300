//! Any fake quantizer as a qgraph [`Module`].

use std::sync::{Mutex, MutexGuard};

use qgraph::{GraphResult, Module, Value};

use super::common::FakeQuantizer;

/// A fake quantizer in a qgraph module tree. qgraph's forward takes `&self`, so the quantizer sits
/// behind a mutex, as `qgraph::workflow::Observed` holds its observer. In training mode forward is
/// [`FakeQuantizer::forward_train`] (the observer updates while enabled); in eval mode (the
/// default, as every qgraph module) it fake-quantizes with the current parameters and leaves the
/// observer alone. Prints as the quantizer's PyTorch class.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::{FakeQuantModule, default_weight_fake_quant};
/// use qgraph::{Module, Value};
/// let mut module = FakeQuantModule::new(Box::new(default_weight_fake_quant()?));
/// module.set_training(true);
/// let x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![-1.0f32, 0.3]).unwrap();
/// let y = module.forward(Value::Float(x))?.into_float("test")?;
/// assert!((y[0] + 1.0).abs() < 0.01); // fake-quantized with the observed scale, 2 / 255
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug)]
pub struct FakeQuantModule {
    quantizer: Mutex<Box<dyn FakeQuantizer>>,
    training: bool,
}

impl FakeQuantModule {
    /// Wraps `quantizer` (in eval mode).
    pub fn new(quantizer: Box<dyn FakeQuantizer>) -> Self {
        Self { quantizer: Mutex::new(quantizer), training: false }
    }

    /// The quantizer, locked (to read its parameters or toggle its flags).
    pub fn lock(&self) -> MutexGuard<'_, Box<dyn FakeQuantizer>> {
        // A panic inside forward leaves parameters that are still a valid state.
        self.quantizer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clone for FakeQuantModule {
    fn clone(&self) -> Self {
        Self { quantizer: Mutex::new(self.lock().clone_box()), training: self.training }
    }
}

impl Module for FakeQuantModule {
    fn type_name(&self) -> &str {
        self.lock().type_name()
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let mut quantizer = self.lock();
        let x = input.into_float(quantizer.type_name())?;
        if self.training {
            return Ok(Value::Float(quantizer.forward_train(&x)?.0));
        }
        let observing = quantizer.observer_enabled();
        quantizer.set_observer_enabled(false);
        let out = quantizer.forward_train(&x);
        quantizer.set_observer_enabled(observing);
        Ok(Value::Float(out?.0))
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
