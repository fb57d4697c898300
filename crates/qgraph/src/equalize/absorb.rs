//! High-bias absorption (Nagel et al. 2019, section 4.1.3), empirical variant: what a ReLU layer's
//! pre-activation never goes below on calibration data moves from its bias into the next layer's.

use ndarray::{ArrayD, Axis, IxDyn};

use super::layer::{self, Accept};
use crate::nn::{Conv, Fused};
use crate::{GraphResult, Module, Value, debug};

/// Absorbs the high bias of the layer at `first` (a `ConvReLU*d` or `LinearReLU`) into the layer
/// at `second` (the layer consuming its output; a `Linear` or a convolution without padding):
/// with `c_i = max(0, min z_i)`, the smallest pre-activation of output channel `i` over
/// `inputs` (run through `model`), the first bias becomes `b1 − c` and the second `b2 + W2 c`
/// (summed over each input channel's kernel, per group). Since `relu(z − c) = relu(z) − c`
/// wherever `z ≥ c`, the function is unchanged on the calibration data, and the first layer's
/// output range shrinks by `c`.
///
/// The calibration minimum is the quantity the paper's data-free `c = max(0, β − 3γ)` estimates
/// from the batch norm ([`absorb_high_bias_from_bn`](super::absorb_high_bias_from_bn)). Returns
/// `c`. An error if `first` has no ReLU, `second` pads its input (the padded zeros would not be
/// shifted by `c`), or the channels do not match.
pub fn absorb_high_bias(
    model: &mut Box<dyn Module>,
    first: &str,
    second: &str,
    inputs: &[Value],
) -> GraphResult<Vec<f32>> {
    let (base1, base2, channels) = check_pair("absorb_high_bias", model.as_ref(), first, second)?;
    let conv = model.get(&base1)?.is::<Conv>();
    let log = debug::log_outputs(model, |p, _| p == base1)?;
    let run = inputs.iter().try_for_each(|x| model.forward(x.clone()).map(drop));
    debug::remove_loggers(model)?;
    run?;
    let mut lowest = vec![f32::INFINITY; channels];
    for (_, value) in log.take() {
        let z = value.into_float("absorb_high_bias")?;
        let axis = if conv { Axis(1) } else { Axis(z.ndim() - 1) };
        for (c, lane) in z.axis_iter(axis).enumerate() {
            lowest[c] = lane.iter().fold(lowest[c], |m, &v| m.min(v));
        }
    }
    let shift: Vec<f32> = lowest.iter().map(|&m| if m.is_finite() { m.max(0.0) } else { 0.0 }).collect();
    shift_bias(model, &base1, &base2, &shift)?;
    Ok(shift)
}

/// The bases of a pair high-bias absorption takes and the first layer's output channels: the
/// first layer has a ReLU, the second does not pad and takes the first's channels (errors
/// otherwise, in `context`).
pub(crate) fn check_pair(
    context: &'static str,
    model: &dyn Module,
    first: &str,
    second: &str,
) -> GraphResult<(String, String, usize)> {
    let base1 = layer::base_path(model, first, Accept::Equalizable)?;
    let base2 = layer::base_path(model, second, Accept::Equalizable)?;
    if !model.get(first)?.is::<Fused>() {
        return Err(crate::invalid(
            context,
            "first layer",
            first,
            "has no ReLU; absorption moves what a ReLU layer's output always carries (fuse the ReLU first)",
        ));
    }
    if let Some(padding) = padding(model, &base2) {
        return Err(crate::invalid(
            context,
            "second layer",
            second,
            format!(
                "pads its input by {padding:?}; the padded zeros would not carry the absorbed bias (absorb into \
                 a layer without padding)"
            ),
        ));
    }
    let l1 = layer::read(model, &base1)?;
    let l2 = layer::read(model, &base2)?;
    let channels = l1.weight.shape()[0];
    let takes = l2.groups * l2.weight.shape()[1];
    if channels != takes {
        return Err(crate::invalid(
            context,
            "pair",
            (first, second),
            format!("{first} has {channels} output channels but {second} takes {takes}"),
        ));
    }
    Ok((base1, base2, channels))
}

/// Moves `shift` (per output channel of the layer at `base1`) out of its bias and into the bias
/// of the layer at `base2`: `b1 − c` and `b2 + W2 c`.
pub(crate) fn shift_bias(
    model: &mut Box<dyn Module>,
    base1: &str,
    base2: &str,
    shift: &[f32],
) -> GraphResult<()> {
    let l1 = layer::read(model.as_ref(), base1)?;
    let l2 = layer::read(model.as_ref(), base2)?;
    let channels = shift.len();
    let b1 = l1.bias.unwrap_or_else(|| ArrayD::zeros(IxDyn(&[channels])));
    let b1 = &b1 - &ArrayD::from_shape_vec(IxDyn(&[channels]), shift.to_vec()).expect("one per channel");
    let c: Vec<f64> = shift.iter().map(|&v| f64::from(v)).collect();
    let added = layer::constant_input_response(&l2.weight, l2.groups, &c);
    let mut b2 = l2.bias.clone().unwrap_or_else(|| ArrayD::zeros(IxDyn(&[added.len()])));
    b2.iter_mut().zip(&added).for_each(|(b, &a)| *b += a as f32);
    layer::write(model, base1, l1.weight, Some(b1))?;
    layer::write(model, base2, l2.weight, Some(b2))
}

/// The padding of the convolution at `base`, if it pads.
fn padding(model: &dyn Module, base: &str) -> Option<Vec<usize>> {
    let conv = model.get(base).ok()?.downcast_ref::<Conv>()?;
    conv.options().padding.iter().any(|&p| p != 0).then(|| conv.options().padding.clone())
}

/// True if [`absorb_high_bias`] takes the pair: the first layer has a ReLU, the second no padding.
pub(crate) fn absorbable(model: &dyn Module, first: &str, second: &str) -> bool {
    let fused = model.get(first).is_ok_and(|m| m.is::<Fused>());
    let base = layer::base_path(model, second, Accept::Equalizable);
    fused && base.is_ok_and(|b| padding(model, &b).is_none())
}
