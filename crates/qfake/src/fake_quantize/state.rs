//! Rebuilding a fake quantizer from its saved [`FakeQuantState`], so a QAT model resumes training
//! where it stopped.

use super::base::FakeQuantize;
use super::common::{FakeQuantState, FakeQuantizer, QFakeResult, invalid};
use super::fixed::FixedQParamsFakeQuantize;
use super::fused::FusedMovingAvgObsFakeQuantize;
use super::learnable::LearnableFakeQuantize;

impl FakeQuantState {
    /// Rebuilds the fake quantizer this state was taken from.
    pub fn build(&self) -> QFakeResult<Box<dyn FakeQuantizer>> {
        let spec = self.observer.spec.clone();
        let observer = self.observer.build()?;
        let restore = |fq: &mut FakeQuantize, observer| {
            fq.restore(observer, self.scale.clone(), self.integer_zero_points(), self.flags());
            fq.restore_float_zero_point(self.zero_point.clone());
        };
        Ok(match self.class.as_str() {
            "FakeQuantize" => {
                let mut fq = FakeQuantize::new(spec)?;
                restore(&mut fq, observer);
                Box::new(fq)
            }
            "FusedMovingAvgObsFakeQuantize" => {
                let mut fq = FusedMovingAvgObsFakeQuantize::new(spec)?;
                restore(fq.inner_mut(), observer);
                Box::new(fq)
            }
            "FixedQParamsFakeQuantize" => {
                let mut fq = FixedQParamsFakeQuantize::new(spec)?;
                restore(fq.inner_mut(), observer);
                Box::new(fq)
            }
            "_LearnableFakeQuantize" => {
                let (lo, hi) = self.quant_range;
                let channels = (self.scale.len() > 1
                    || spec.args().is_some_and(|a| a.qscheme.is_per_channel()))
                .then_some(self.scale.len());
                let mut fq =
                    LearnableFakeQuantize::new(spec, lo, hi, 1.0, 0.0, channels, self.use_grad_scaling)?;
                fq.set_qparams(self.scale.clone(), self.zero_point.clone())?;
                fq.restore(observer, self.flags());
                Box::new(fq)
            }
            other => {
                return Err(invalid(
                    "FakeQuantState",
                    "class",
                    other,
                    "not a fake quantizer of this library (FakeQuantize, FusedMovingAvgObsFakeQuantize, \
                     FixedQParamsFakeQuantize, _LearnableFakeQuantize)",
                ));
            }
        })
    }
}
