//! `FusedMovingAvgObsFakeQuantize`: the moving-average observer and fake quantization in one op,
//! `torch.fused_moving_avg_obs_fake_quant`, whose parameters come from PyTorch's
//! `quant_utils::ChooseQuantizationParams` rather than the observer's `calculate_qparams`.

use ndarray::ArrayD;
use qcore::QScheme;
use qcore::dynamic::choose_quantization_params;
use qobserve::{ObserveError, ObservedRange, ObserverSpec, UniformArgs};

use super::base::{FakeQuantize, int32_tensor_str};
use super::common::{FakeQuantCtx, FakeQuantizer, QFakeResult, invalid};

const CONTEXT: &str = "FusedMovingAvgObsFakeQuantize";

/// PyTorch's `FusedMovingAvgObsFakeQuantize`: the same moving-average min/max as
/// [`FakeQuantize`] with a moving-average observer, but the scale and zero point are computed by
/// the fused CPU kernel (`FusedObsFakeQuant.cpp`) with `quant_utils::ChooseQuantizationParams`
/// ([`qcore::dynamic::choose_quantization_params`] with
/// `preserve_sparsity` for symmetric schemes), and only when fake quantization is enabled.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qfake::{FakeQuantizer, default_fused_act_fake_quant};
/// let mut fq = default_fused_act_fake_quant()?;
/// let x = ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1.0f32, 0.0, 3.0]).unwrap();
/// fq.forward_train(&x)?;
/// assert_eq!(fq.inner().zero_point(), &[64]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FusedMovingAvgObsFakeQuantize {
    inner: FakeQuantize,
    symmetric: bool,
    reduce_range: bool,
}

impl FusedMovingAvgObsFakeQuantize {
    /// `FusedMovingAvgObsFakeQuantize(observer, quant_min, quant_max, **observer_kwargs)`: the
    /// observer must be a moving-average (per-tensor or per-channel) min/max observer.
    pub fn new(spec: ObserverSpec) -> QFakeResult<Self> {
        let reduce_range = match &spec {
            ObserverSpec::MovingAverageMinMax { args, .. }
            | ObserverSpec::MovingAveragePerChannelMinMax { args, .. } => args.reduce_range,
            other => {
                return Err(invalid(
                    CONTEXT,
                    "observer",
                    other.name(),
                    "the fused observer + fake quant module only works with MovingAverageMinMaxObserver or \
                     MovingAveragePerChannelMinMaxObserver",
                ));
            }
        };
        let inner = FakeQuantize::new(spec)?;
        if inner.is_float_qparams() {
            return Err(invalid(
                CONTEXT,
                "qscheme",
                inner.qscheme(),
                "the fused module's kernel takes integer zero points; use FakeQuantize \
                 (default_embedding_fake_quant) for per_channel_affine_float_qparams",
            ));
        }
        let symmetric = matches!(inner.qscheme(), QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric);
        Ok(Self { inner, symmetric, reduce_range })
    }

    /// The underlying [`FakeQuantize`] (buffers, range, observer).
    pub fn inner(&self) -> &FakeQuantize {
        &self.inner
    }

    pub(crate) fn inner_mut(&mut self) -> &mut FakeQuantize {
        &mut self.inner
    }

    /// `extra_repr()` as PyTorch prints it.
    pub fn extra_repr(&self) -> String {
        let fq = &self.inner;
        let (quant_min, quant_max) = fq.quant_range();
        let flag = |on: bool| qcore::int_tensor_str(&[i64::from(on)]);
        format!(
            "fake_quant_enabled={}, observer_enabled={}, scale={}, zero_point={}, dtype={}, quant_min={quant_min}, \
             quant_max={quant_max}, qscheme={}, reduce_range={}",
            flag(fq.fake_quant_enabled()),
            flag(fq.observer_enabled()),
            qcore::float_tensor_str(fq.scale()),
            int32_tensor_str(fq.zero_point()),
            fq.dtype().torch_name(),
            fq.qscheme().torch_name(),
            if self.reduce_range { "True" } else { "False" },
        )
    }

    /// The kernel's `choose_qparams_fake_quant`: parameters from the running range.
    fn choose_qparams(&mut self) -> QFakeResult<()> {
        let (qmin, qmax) = self.inner.quant_range();
        let not_observed = || ObserveError::NotObserved { observer: CONTEXT, detail: "" };
        let pairs: Vec<(f32, f32)> = match self.inner.observer().stats().range.ok_or_else(not_observed)? {
            ObservedRange::PerTensor { min, max } => vec![(min, max)],
            ObservedRange::PerChannel { min, max, .. } => min.into_iter().zip(max).collect(),
        };
        let (scale, zero_point) = pairs
            .iter()
            .map(|&(lo, hi)| choose_quantization_params(lo, hi, qmin, qmax, self.symmetric))
            .map(|(s, z)| (s as f32, z))
            .unzip();
        self.inner.set_qparams(scale, zero_point);
        Ok(())
    }
}

impl FakeQuantizer for FusedMovingAvgObsFakeQuantize {
    fn qparams(&mut self) -> QFakeResult<qcore::QParams> {
        self.inner.calculate_qparams()
    }

    fn quant_range(&self) -> (i64, i64) {
        self.inner.quant_range()
    }

    fn state(&self) -> super::common::FakeQuantState {
        self.inner.state_as("FusedMovingAvgObsFakeQuantize")
    }

    fn type_name(&self) -> &'static str {
        "FusedMovingAvgObsFakeQuantize"
    }

    fn extra_repr(&self) -> String {
        FusedMovingAvgObsFakeQuantize::extra_repr(self)
    }

    fn clone_box(&self) -> Box<dyn FakeQuantizer> {
        Box::new(self.clone())
    }

    fn forward_train(&mut self, x: &ArrayD<f32>) -> QFakeResult<(ArrayD<f32>, FakeQuantCtx)> {
        if self.inner.observer_enabled() {
            self.inner.observer_mut().observe(x.view())?;
        }
        if !self.inner.fake_quant_enabled() {
            return Ok((x.clone(), FakeQuantCtx { mask: None, learned: None }));
        }
        self.choose_qparams()?;
        let (out, mask) = self.inner.fake_quantize(x)?;
        Ok((out, FakeQuantCtx { mask: Some(mask), learned: None }))
    }

    delegate_to_inner_fake_quantize!();
}

/// `default_fused_act_fake_quant`: moving-average min/max, quint8 0..255, per tensor affine.
pub fn default_fused_act_fake_quant() -> QFakeResult<FusedMovingAvgObsFakeQuantize> {
    let args = UniformArgs::per_tensor().quant_range(0, 255);
    FusedMovingAvgObsFakeQuantize::new(ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args })
}

/// `default_fused_wt_fake_quant`: moving-average min/max, qint8 -128..127, per tensor symmetric.
pub fn default_fused_wt_fake_quant() -> QFakeResult<FusedMovingAvgObsFakeQuantize> {
    let args = UniformArgs::per_tensor()
        .dtype(qcore::QDType::QInt8)
        .qscheme(QScheme::PerTensorSymmetric)
        .quant_range(-128, 127);
    FusedMovingAvgObsFakeQuantize::new(ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args })
}

/// `default_fused_per_channel_wt_fake_quant`: moving-average per-channel min/max (ch_axis 0),
/// qint8 -128..127, per channel symmetric.
pub fn default_fused_per_channel_wt_fake_quant() -> QFakeResult<FusedMovingAvgObsFakeQuantize> {
    let args = UniformArgs::per_channel()
        .dtype(qcore::QDType::QInt8)
        .qscheme(QScheme::PerChannelSymmetric)
        .quant_range(-128, 127);
    FusedMovingAvgObsFakeQuantize::new(ObserverSpec::MovingAveragePerChannelMinMax {
        averaging_constant: 0.01,
        ch_axis: 0,
        args,
    })
}
