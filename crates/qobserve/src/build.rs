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

/// Implements [`ObserverSpec::name`] and [`ObserverSpec::build`] from one table of which
/// observer each description builds.
macro_rules! observers {
    ($($variant:ident => $observer:ident),+ $(,)?) => {
        impl ObserverSpec {
            /// The name of the observer this builds, PyTorch's class name where there is one.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => $observer::NAME,)+
                }
            }

            /// Builds a fresh observer, checking the arguments as PyTorch's constructors do (and a
            /// little more: see [`ObserveError`](crate::ObserveError)).
            pub fn build(&self) -> ObserveResult<Box<dyn Observer>> {
                Ok(match self {
                    $(Self::$variant { .. } => Box::new($observer::from_spec(self)?),)+
                })
            }
        }
    };
}

observers! {
    MinMax => MinMaxObserver, MovingAverageMinMax => MovingAverageMinMaxObserver,
    PerChannelMinMax => PerChannelMinMaxObserver,
    MovingAveragePerChannelMinMax => MovingAveragePerChannelMinMaxObserver,
    Histogram => HistogramObserver,
    Placeholder => PlaceholderObserver, FixedQParams => FixedQParamsObserver, Noop => NoopObserver,
    Recording => RecordingObserver,
    Percentile => PercentileCalibrator, Entropy => EntropyCalibrator, Mse => MseCalibrator,
}
