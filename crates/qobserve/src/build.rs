//! Building observers from their descriptions: the one place that knows every observer, above
//! all of them.

use crate::basic::{FixedQParamsObserver, NoopObserver, PlaceholderObserver, RecordingObserver};
use crate::calibrators::{EntropyCalibrator, MseCalibrator, PercentileCalibrator};
use crate::histogram::HistogramObserver;
use crate::minmax::{
    MinMaxObserver, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
};
use crate::{ObserveResult, Observer, ObserverSpec};

impl ObserverSpec {
    /// The name of the observer this builds, PyTorch's class name where there is one.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MinMax { .. } => MinMaxObserver::NAME,
            Self::MovingAverageMinMax { .. } => MovingAverageMinMaxObserver::NAME,
            Self::PerChannelMinMax { .. } => PerChannelMinMaxObserver::NAME,
            Self::MovingAveragePerChannelMinMax { .. } => MovingAveragePerChannelMinMaxObserver::NAME,
            Self::Histogram { .. } => HistogramObserver::NAME,
            Self::Placeholder { .. } => PlaceholderObserver::NAME,
            Self::FixedQParams { .. } => FixedQParamsObserver::NAME,
            Self::Noop { .. } => NoopObserver::NAME,
            Self::Recording { .. } => RecordingObserver::NAME,
            Self::Percentile { .. } => PercentileCalibrator::NAME,
            Self::Entropy { .. } => EntropyCalibrator::NAME,
            Self::Mse { .. } => MseCalibrator::NAME,
        }
    }

    /// Builds a fresh observer, checking the arguments as PyTorch's constructors do (and a
    /// little more: see [`ObserveError`](crate::ObserveError)).
    pub fn build(&self) -> ObserveResult<Box<dyn Observer>> {
        Ok(match self {
            Self::MinMax { .. } => Box::new(MinMaxObserver::from_spec(self)?),
            Self::MovingAverageMinMax { .. } => Box::new(MovingAverageMinMaxObserver::from_spec(self)?),
            Self::PerChannelMinMax { .. } => Box::new(PerChannelMinMaxObserver::from_spec(self)?),
            Self::MovingAveragePerChannelMinMax { .. } => {
                Box::new(MovingAveragePerChannelMinMaxObserver::from_spec(self)?)
            }
            Self::Histogram { .. } => Box::new(HistogramObserver::from_spec(self)?),
            Self::Placeholder { .. } => Box::new(PlaceholderObserver::from_spec(self)?),
            Self::FixedQParams { .. } => Box::new(FixedQParamsObserver::from_spec(self)?),
            Self::Noop { .. } => Box::new(NoopObserver::from_spec(self)?),
            Self::Recording { .. } => Box::new(RecordingObserver::from_spec(self)?),
            Self::Percentile { .. } => Box::new(PercentileCalibrator::from_spec(self)?),
            Self::Entropy { .. } => Box::new(EntropyCalibrator::from_spec(self)?),
            Self::Mse { .. } => Box::new(MseCalibrator::from_spec(self)?),
        })
    }
}
