//! Float modules (`torch.nn`): they run in f32 on float values, and those that PyTorch runs
//! directly on quantized tensors (ReLU, pooling, flatten, ...) also run on quantized values.

/// `Module::training` and `Module::set_training` for a layer that keeps its mode in a
/// `training: bool` field (defined before the submodules so that they can use it).
macro_rules! training_field {
    () => {
        fn training(&self) -> bool {
            self.training
        }

        fn set_training(&mut self, training: bool) {
            self.training = training;
        }
    };
}

mod batchnorm;
mod conv;
mod fused;
mod init;
mod linear;
pub(crate) mod misc;
mod pool;
mod shape;
pub(crate) mod unary;

pub use batchnorm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormOptions};
pub(crate) use conv::check_weight_bias;
pub use conv::{Conv, Conv1d, Conv2d, Conv3d, ConvBuilder, ConvOptions};
pub use fused::{Fused, FusedKind};
pub use init::manual_seed;
pub use linear::{Linear, LinearOptions};
pub use misc::{Dropout, Loader, Softmax, Upsample, UpsampleMode, unweighted_loader};
pub use pool::{AvgPool2d, MaxPool, MaxPool1d, MaxPool2d, MaxPool3d, Size};
pub use shape::{AdaptiveAvgPool2d, Flatten, Identity};
pub use unary::{ELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh, Threshold};

/// The largest size a module's configuration holds (a kernel size, stride, padding, dilation
/// or output size): 2^31 - 1, as PyTorch's backends keep them in `int`. Files with larger
/// sizes are refused when they load, so that no size arithmetic of a forward can overflow.
pub const MAX_SIZE: usize = qkernels::pool::MAX_WINDOW;

/// Checks every entry of `values` (the argument `what` of `context`) against `min..=MAX_SIZE`.
pub(crate) fn check_sizes(
    context: &'static str,
    what: &'static str,
    values: &[usize],
    min: usize,
) -> crate::GraphResult<()> {
    if values.iter().any(|&v| v < min || v > MAX_SIZE) {
        let range = if min == 0 { "at most 2^31 - 1" } else { "positive and at most 2^31 - 1" };
        return Err(crate::invalid(context, what, values, format!("every entry must be {range}")));
    }
    Ok(())
}

/// Formats `v` as a Python tuple: `(3, 3)`, `(1,)`.
pub(crate) fn py_tuple(v: &[usize]) -> String {
    match v {
        [x] => format!("({x},)"),
        _ => format!("({})", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Python's `True` / `False`.
pub(crate) fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}
