//! `FixedQParamsFakeQuantize`: fake quantization with a fixed scale and zero point.

use ndarray::ArrayD;
use qcore::QScheme;
use qobserve::{ObserverSpec, defaults};

use super::base::{FakeQuantize, flag_str, int32_tensor_str};
use super::common::{FakeQuantCtx, FakeQuantizer, QFakeResult, invalid};

/// PyTorch's `FixedQParamsFakeQuantize`: a [`FakeQuantize`] whose observer is a
/// `FixedQParamsObserver`, so its scale and zero point are the observer's from the start and
/// never change (sigmoid, tanh and other fixed-range outputs). Per tensor only.
///
/// ```
/// use qfake::default_fixed_qparams_range_0to1_fake_quant;
/// let fq = default_fixed_qparams_range_0to1_fake_quant()?;
/// assert_eq!((fq.inner().scale(), fq.inner().zero_point()), (&[1.0f32 / 256.0][..], &[0i64][..]));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FixedQParamsFakeQuantize {
    inner: FakeQuantize,
}

impl FixedQParamsFakeQuantize {
    /// `FixedQParamsFakeQuantize(observer=FixedQParamsObserver.with_args(...))`.
    pub fn new(spec: ObserverSpec) -> QFakeResult<Self> {
        let ObserverSpec::FixedQParams { scale, zero_point, qscheme, .. } = spec else {
            return Err(invalid(
                "FixedQParamsFakeQuantize",
                "observer",
                spec.name(),
                "must be a FixedQParamsObserver (ObserverSpec::FixedQParams)",
            ));
        };
        if !matches!(qscheme, QScheme::PerTensorAffine | QScheme::PerTensorSymmetric) {
            return Err(invalid(
                "FixedQParamsFakeQuantize",
                "qscheme",
                qscheme,
                "only per tensor quantization is supported",
            ));
        }
        let mut inner = FakeQuantize::new(spec)?;
        inner.set_qparams(vec![scale as f32], vec![zero_point]);
        Ok(Self { inner })
    }

    /// The underlying [`FakeQuantize`] (scale, zero point, range, observer).
    pub fn inner(&self) -> &FakeQuantize {
        &self.inner
    }

    pub(crate) fn inner_mut(&mut self) -> &mut FakeQuantize {
        &mut self.inner
    }

    /// `calculate_qparams()`: the fixed scale and zero point.
    pub fn calculate_qparams(&self) -> (f32, i64) {
        (self.inner.scale()[0], self.inner.zero_point()[0])
    }

    /// `extra_repr()` as PyTorch prints it.
    pub fn extra_repr(&self) -> String {
        let fq = &self.inner;
        let (quant_min, quant_max) = fq.quant_range();
        format!(
            "fake_quant_enabled={}, observer_enabled={}, scale={}, zero_point={}, dtype={}, quant_min={quant_min}, \
             quant_max={quant_max}, qscheme={}",
            flag_str(fq.fake_quant_enabled()),
            flag_str(fq.observer_enabled()),
            qcore::float_tensor_str(fq.scale()),
            int32_tensor_str(fq.zero_point()),
            fq.dtype().torch_name(),
            fq.qscheme().torch_name(),
        )
    }
}

impl FakeQuantizer for FixedQParamsFakeQuantize {
    fn qparams(&mut self) -> QFakeResult<qcore::QParams> {
        let (scale, zero_point) = self.calculate_qparams();
        Ok(qcore::QParams::PerTensor { scale: f64::from(scale), zero_point })
    }

    fn quant_range(&self) -> (i64, i64) {
        self.inner.quant_range()
    }

    fn state(&self) -> super::common::FakeQuantState {
        self.inner.state_as("FixedQParamsFakeQuantize")
    }

    fn type_name(&self) -> &'static str {
        "FixedQParamsFakeQuantize"
    }

    fn extra_repr(&self) -> String {
        FixedQParamsFakeQuantize::extra_repr(self)
    }

    fn clone_box(&self) -> Box<dyn FakeQuantizer> {
        Box::new(self.clone())
    }

    fn forward_train(&mut self, x: &ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, FakeQuantCtx)> {
        // The observer returns the same fixed parameters, so the observer step changes nothing.
        self.inner.forward_train(x)
    }

    delegate_to_inner_fake_quantize!();
}

/// `default_fixed_qparams_range_neg1to1_fake_quant`: scale 2/256, zero point 128, quint8 0..255.
pub fn default_fixed_qparams_range_neg1to1_fake_quant() -> QFakeResult<FixedQParamsFakeQuantize> {
    FixedQParamsFakeQuantize::new(defaults::default_fixed_qparams_range_neg1to1_observer())
}

/// `default_fixed_qparams_range_0to1_fake_quant`: scale 1/256, zero point 0, quint8 0..255.
pub fn default_fixed_qparams_range_0to1_fake_quant() -> QFakeResult<FixedQParamsFakeQuantize> {
    FixedQParamsFakeQuantize::new(defaults::default_fixed_qparams_range_0to1_observer())
}
