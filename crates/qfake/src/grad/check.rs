//! Argument checks and conversions shared by the gradient functions.

use ndarray::ArrayD;
use qgraph::GraphError;

use crate::QFakeResult;

pub(crate) use crate::fake_quantize::invalid as bad;

/// One spatial axis of a convolution or pooling window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Axis {
    /// Input size.
    pub input: usize,
    /// Kernel (window) size.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Padding on both sides.
    pub pad: usize,
    /// Spacing of the window's elements.
    pub dilation: usize,
    /// Output size.
    pub output: usize,
}

impl Axis {
    /// The axis of size 1 that pads a geometry to more dimensions.
    pub fn unit() -> Axis {
        Axis { input: 1, kernel: 1, stride: 1, pad: 0, dilation: 1, output: 1 }
    }
}

/// An error unless `got == expected` (`what` names the tensor).
pub(crate) fn check_shape(
    context: &'static str,
    what: &'static str,
    got: &[usize],
    expected: &[usize],
) -> QFakeResult<()> {
    if got == expected {
        return Ok(());
    }
    Err(GraphError::Mismatch {
        context,
        reason: format!(
            "{what} has shape {got:?} but must have shape {expected:?}; pass a tensor of that shape"
        ),
    })
}

/// An error unless `shape` has a rank in `ranks` (`what` names the tensor and its layout).
pub(crate) fn check_rank(
    context: &'static str,
    what: &'static str,
    shape: &[usize],
    ranks: std::ops::RangeInclusive<usize>,
) -> QFakeResult<()> {
    if ranks.contains(&shape.len()) {
        return Ok(());
    }
    Err(bad(context, what, shape, format!("needs rank {} to {}", ranks.start(), ranks.end())))
}

/// The elements in standard (row-major) order.
pub(crate) fn to_vec(a: &ArrayD<f32>) -> Vec<f32> {
    match a.as_slice() {
        Some(s) => s.to_vec(),
        None => a.iter().copied().collect(),
    }
}

/// An array of `shape` from row-major `data` of the right length.
pub(crate) fn array(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(ndarray::IxDyn(shape), data).expect("data length matches the shape")
}
