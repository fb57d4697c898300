//! What the observer implementations share: the errors for a description or a saved state made
//! for another observer, and the macro that implements [`Observer`](crate::Observer) by
//! delegating to a core.

use crate::observer::Statistics;
use crate::{ObserveError, ObserverSpec};

/// The error of a `from_spec` given the description of another observer.
pub(crate) fn wrong_spec(observer: &'static str, spec: &ObserverSpec) -> ObserveError {
    ObserveError::InvalidArgument {
        observer,
        name: "spec",
        value: format!("{spec:?}"),
        reason: "this description builds a different observer; use ObserverSpec::build",
    }
}

/// The error of loading or merging a saved state whose statistics this observer does not keep.
pub(crate) fn wrong_statistics(observer: &'static str, statistics: &Statistics) -> ObserveError {
    let kind = match statistics {
        Statistics::Stateless => "no statistics",
        Statistics::MinMax(_) => "min/max statistics",
        Statistics::PerChannel(_) => "per-channel statistics",
        Statistics::Histogram(_) => "a histogram",
        Statistics::AbsHistogram(_) => "an |x| histogram",
        Statistics::Recording(_) => "recorded tensors",
    };
    ObserveError::InvalidState {
        observer,
        reason: format!("it holds {kind}, which this observer does not keep"),
    }
}

/// Implements [`Observer`](crate::Observer) for `$ty`, whose field `$core` has a `spec` field and
/// the methods `observe`, `reset`, `stats`, `state`, `load_state` and `merge`. The other methods
/// are given in the block; without a block, `calculate_qparams` is the core's too.
macro_rules! delegate_observer {
    ($ty:ty, $core:tt) => {
        $crate::common::delegate_observer!($ty, $core, {
            fn calculate_qparams(&self) -> $crate::ObserveResult<$crate::QParams> {
                self.$core.calculate_qparams()
            }
        });
    };
    ($ty:ty, $core:tt, { $($methods:tt)* }) => {
        impl $crate::Observer for $ty {
            fn name(&self) -> &'static str {
                Self::NAME
            }
            fn spec(&self) -> $crate::ObserverSpec {
                self.$core.spec.clone()
            }
            fn observe(&mut self, x: ndarray::ArrayViewD<'_, f32>) -> $crate::ObserveResult<()> {
                self.$core.observe(x)
            }
            fn reset(&mut self) {
                self.$core.reset();
            }
            fn stats(&self) -> $crate::ObserverStats {
                self.$core.stats()
            }
            fn state(&self) -> $crate::ObserverState {
                self.$core.state()
            }
            fn load_state(&mut self, state: &$crate::ObserverState) -> $crate::ObserveResult<()> {
                self.$core.load_state(state)
            }
            fn merge(&mut self, other: &$crate::ObserverState) -> $crate::ObserveResult<()> {
                self.$core.merge(other)
            }
            $($methods)*
        }
    };
}
pub(crate) use delegate_observer;
