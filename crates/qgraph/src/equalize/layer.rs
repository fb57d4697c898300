//! The weighted layers equalization and bias correction change: a `Conv`, a `Linear`, or a fused
//! module (`ConvReLU2d`, `LinearReLU`, ...) whose part `0` is one, found by dotted path.

use ndarray::ArrayD;

use crate::nn::{Conv, Fused, FusedKind, Linear};
use crate::{GraphResult, Module, slot_mut};

/// What the layer computes with: its weight (`[out, in / groups, ...]`), bias and groups.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    /// `[out_channels, in_channels / groups, *kernel]` or `[out_features, in_features]`.
    pub(crate) weight: ArrayD<f32>,
    /// `[out_channels]`, if the layer has one.
    pub(crate) bias: Option<ArrayD<f32>>,
    /// The convolution's groups (1 for a linear layer).
    pub(crate) groups: usize,
}

/// Which fused modules a caller accepts around the conv or linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    /// PyTorch's `_equalize` types: a conv or linear alone or fused with `ReLU` only.
    Equalizable,
    /// Any fused module whose part `0` is a conv or linear (bias correction).
    AnyFused,
}

/// True if `kind` is a conv or linear followed by `ReLU` (the activation CLE commutes with).
fn relu_kind(kind: FusedKind) -> bool {
    matches!(kind, FusedKind::ConvReLU(_) | FusedKind::LinearReLU)
}

/// The path of the `Conv` or `Linear` holding the weight of the module at `path`: `path` itself,
/// or `path.0` for a fused module; an error naming the module and what is accepted otherwise.
pub(crate) fn base_path(model: &dyn Module, path: &str, accept: Accept) -> GraphResult<String> {
    let module = model.get(path)?;
    if module.is::<Conv>() || module.is::<Linear>() {
        return Ok(path.to_string());
    }
    if let Some(fused) = module.downcast_ref::<Fused>() {
        let base = fused.base();
        let ok_kind = accept == Accept::AnyFused || relu_kind(fused.kind());
        if ok_kind && (base.is::<Conv>() || base.is::<Linear>()) {
            return Ok(if path.is_empty() { "0".to_string() } else { format!("{path}.0") });
        }
    }
    let accepted = match accept {
        Accept::Equalizable => {
            "Conv1d, Conv2d, Conv3d, Linear, ConvReLU1d/2d/3d or LinearReLU (a ReLU6 or a batch norm between \
             the layers changes the function when channels are rescaled: fuse batch norms first)"
        }
        Accept::AnyFused => "a Conv, a Linear or a fused module around one",
    };
    Err(crate::invalid(
        "equalize",
        "module",
        path,
        format!("is a {}; expected {accepted}", module.type_name()),
    ))
}

/// The weights of the `Conv` or `Linear` at `base` (a [`base_path`]).
pub(crate) fn read(model: &dyn Module, base: &str) -> GraphResult<Weights> {
    let module = model.get(base)?;
    if let Some(conv) = module.downcast_ref::<Conv>() {
        return Ok(Weights {
            weight: conv.weight().clone(),
            bias: conv.bias().cloned(),
            groups: conv.options().groups,
        });
    }
    match module.downcast_ref::<Linear>() {
        Some(linear) => {
            Ok(Weights { weight: linear.weight().clone(), bias: linear.bias().cloned(), groups: 1 })
        }
        None => Err(crate::invalid("equalize", "module", base, "is not a Conv or Linear")),
    }
}

/// Replaces the weight and bias of the `Conv` or `Linear` at `base`.
pub(crate) fn write(
    model: &mut Box<dyn Module>,
    base: &str,
    weight: ArrayD<f32>,
    bias: Option<ArrayD<f32>>,
) -> GraphResult<()> {
    let slot = slot_mut(model, base)?;
    if let Some(conv) = (**slot).downcast_mut::<Conv>() {
        return conv.set_weight_bias(weight, bias);
    }
    match (**slot).downcast_mut::<Linear>() {
        Some(linear) => linear.set_weight_bias(weight, bias),
        None => Err(crate::invalid("equalize", "module", base, "is not a Conv or Linear")),
    }
}

/// `Σ_j Σ_taps weight[o, j, taps] · v[g·(in / groups) + j]` for each output `o` of a (possibly
/// grouped) layer weight `[out, in / groups, ...]` (`g` the group of `o`), in f64: the layer's
/// output, without bias, for an input constant at `v` per channel (away from padding).
pub(crate) fn constant_input_response(weight: &ArrayD<f32>, groups: usize, v: &[f64]) -> Vec<f64> {
    let per_group = weight.shape()[1];
    let rows_per_group = weight.shape()[0] / groups.max(1);
    weight
        .axis_iter(ndarray::Axis(0))
        .enumerate()
        .map(|(o, row)| {
            let g = o / rows_per_group.max(1);
            row.axis_iter(ndarray::Axis(0))
                .enumerate()
                .map(|(j, kernel)| v[g * per_group + j] * kernel.iter().map(|&w| f64::from(w)).sum::<f64>())
                .sum()
        })
        .collect()
}
