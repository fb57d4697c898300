//! The data-free variants of Nagel et al. (2019): high-bias absorption and analytic bias
//! correction from batch-norm statistics ([`BnStatistics`]), with no calibration data.

use ndarray::{ArrayD, IxDyn};

use super::absorb::{absorbable, check_pair, shift_bias};
use super::bias::Correction;
use super::cle::expand_groups;
use super::layer::{self, Accept};
use super::pairs::{Leaf, Token, find_equalizable_groups, tokens};
use super::stats::{Activation, BnStatistics};
use crate::quantized::QuantizedWeight;
use crate::{GraphResult, Module, QConfigMapping};

/// High-bias absorption from batch-norm statistics, for the layer at `first` (a `ConvReLU*d` or
/// `LinearReLU` whose batch norm `stats` holds) into the layer at `second` (its consumer, without
/// padding): with `c = max(0, β − 3γ)` per output channel (`β`, `γ` as
/// [`BnStatistics::current`] gives them, after any equalization), the first bias becomes `b1 − c`
/// and the second `b2 + W2 c` (summed over each input channel's kernel taps, per group), and
/// `stats` records the shift. Returns `c`.
///
/// Since `relu(z − c) = relu(z) − c` wherever `z ≥ c`, the float function is unchanged exactly
/// for inputs whose pre-activation stays at or above `c` in every channel; under the paper's
/// model `z ~ N(β, γ²)` that is all but 0.13% of the values per channel, and below `c` the output
/// differs by at most `c − relu(z)` per channel before `W2`. The first layer's output range
/// shrinks by `c`, which is what per-tensor activation quantization gains.
///
/// Errors: no statistics for `first`, its batch norm was followed by something else than `ReLU`
/// (ReLU6 clips above, so shifting would change the function), the first layer has no ReLU,
/// the second pads, or the channels do not match.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// use qgraph::equalize::{BnStatistics, absorb_high_bias_from_bn};
/// use qgraph::nn::{BatchNorm, BatchNorm2d, Conv2d, ReLU};
/// use qgraph::{Module, Sequential, eval, slot_mut};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
///     Box::new(Conv2d::new(3, 4, [1, 1]).build()?),
///     Box::new(BatchNorm2d::new(4)),
///     Box::new(ReLU::new()),
///     Box::new(Conv2d::new(4, 2, [1, 1]).build()?),
/// ]));
/// eval(&mut model);
/// // β = 5, γ = 1: c = 5 − 3 = 2.
/// let v = |x: f32| ArrayD::from_elem(IxDyn(&[4]), x);
/// let bn = (**slot_mut(&mut model, "1")?).downcast_mut::<BatchNorm>().unwrap();
/// bn.set_params(v(0.0), v(1.0), Some((v(1.0), v(5.0))))?;
/// let groups = [["0", "1", "2"]];
/// let mut stats = BnStatistics::from_fuse_groups(model.as_ref(), &groups)?;
/// qgraph::fuse::fuse_modules(&mut model, &[&["0", "1", "2"]])?;
/// let c = absorb_high_bias_from_bn(&mut model, &mut stats, "0", "3")?;
/// assert!(c.iter().all(|&c| (c - 2.0).abs() < 1e-4));
/// // The statistics follow: β is now 3.
/// assert!(stats.current(model.as_ref(), "0")?.0.iter().all(|&b| (b - 3.0).abs() < 1e-4));
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn absorb_high_bias_from_bn(
    model: &mut Box<dyn Module>,
    stats: &mut BnStatistics,
    first: &str,
    second: &str,
) -> GraphResult<Vec<f32>> {
    const CONTEXT: &str = "absorb_high_bias_from_bn";
    let (base1, base2, _) = check_pair(CONTEXT, model.as_ref(), first, second)?;
    match stats.activation(first) {
        Some(Activation::ReLU) => {}
        other => {
            let why = match other {
                None => {
                    "has no batch-norm statistics; read them (BnStatistics) from the unfused model with its \
                         conv + batch norm + ReLU group"
                        .to_string()
                }
                Some(act) => format!(
                    "is followed by {act:?} after its batch norm; absorption is exact only through ReLU (leave \
                     the pair out)"
                ),
            };
            return Err(crate::invalid(CONTEXT, "first layer", first, why));
        }
    }
    let (beta, gamma) = stats.current(model.as_ref(), first)?;
    let shift: Vec<f32> = beta.iter().zip(&gamma).map(|(b, g)| (b - 3.0 * g).max(0.0) as f32).collect();
    shift_bias(model, &base1, &base2, &shift)?;
    stats.absorb(model.as_ref(), first, &shift)?;
    Ok(shift)
}

/// [`absorb_high_bias_from_bn`] along every pair of the groups [`find_equalizable_groups`] finds
/// in `model` (fused, usually equalized) that it takes: the first layer has statistics with a
/// ReLU, the second does not pad. In execution order; returns each pair and its `c`.
pub fn absorb_high_biases_from_bn(
    model: &mut Box<dyn Module>,
    stats: &mut BnStatistics,
) -> GraphResult<Vec<(String, String, Vec<f32>)>> {
    let groups = find_equalizable_groups(model.as_ref());
    let pairs = if groups.is_empty() { Vec::new() } else { expand_groups(&groups)? };
    let mut out = Vec::new();
    for (first, second) in pairs {
        let relu = stats.activation(&first) == Some(Activation::ReLU);
        if relu && absorbable(model.as_ref(), &first, &second) {
            let shift = absorb_high_bias_from_bn(model, stats, &first, &second)?;
            out.push((first, second, shift));
        }
    }
    Ok(out)
}

/// Analytic bias correction (the paper's data-free bias correction) of `model`, a fused float model
/// after equalization and absorption, for the weight quantization `mapping` will give it: every
/// `Conv` or `Linear` (alone or fused) whose input is the output of a layer with batch-norm
/// statistics in `stats` (directly, or through `ReLU`, `ReLU6`, identity or dropout modules)
/// gets `bias −= (W_q − W) E[x]` per output channel. `E[x]` per input channel is the mean of the
/// source layer's activation of `N(β, γ²)` ([`Activation::mean_of_normal`], `β`, `γ` as
/// [`BnStatistics::current`] gives them); `W_q` is the weight quantized and dequantized as
/// `convert` does with the layer's qconfig (`mapping.qconfig_at`); layers `mapping` keeps float
/// are left alone. A layer without a bias gets one. Returns the corrected layers (each layer's
/// correction depends only on its own weight and its source's statistics, so the order does not
/// matter).
///
/// The order of the paper: read the statistics ([`BnStatistics`]), fuse, equalize,
/// [`absorb_high_biases_from_bn`], then correct; then prepare, calibrate and convert (the
/// weights, and so their quantization, are unchanged). The expectation is exact for inputs
/// whose pre-activations follow the batch norm's statistics and are normal; a padded
/// convolution's border outputs see zeros instead of `E[x]`, and errors of earlier layers are not
/// included (as in the paper).
///
/// ```
/// use qgraph::equalize::{BnStatistics, analytic_bias_correction};
/// use qgraph::nn::{BatchNorm2d, Conv2d, ReLU};
/// use qgraph::qconfig::default_qconfig;
/// use qgraph::{Module, QConfigMapping, Sequential, eval};
/// let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
///     Box::new(Conv2d::new(3, 8, [3, 3]).build()?),
///     Box::new(BatchNorm2d::new(8)),
///     Box::new(ReLU::new()),
///     Box::new(Conv2d::new(8, 4, [1, 1]).build()?),
/// ]));
/// eval(&mut model);
/// let stats = BnStatistics::from_fuse_groups(model.as_ref(), &[["0", "1", "2"]])?;
/// qgraph::fuse::fuse_modules(&mut model, &[&["0", "1", "2"]])?;
/// let mapping = QConfigMapping::global(default_qconfig());
/// let corrected = analytic_bias_correction(&mut model, &stats, &mapping)?;
/// assert_eq!(corrected.len(), 1);
/// assert_eq!(corrected[0].path, "3");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn analytic_bias_correction(
    model: &mut Box<dyn Module>,
    stats: &BnStatistics,
    mapping: &QConfigMapping,
) -> GraphResult<Vec<Correction>> {
    let mut out = Vec::new();
    for (path, source, between) in input_sources(model.as_ref()) {
        let Some(act) = stats.activation(&source) else { continue };
        let Some(qconfig) = mapping.qconfig_at(model.as_ref(), &path)? else { continue };
        let base = layer::base_path(model.as_ref(), &path, Accept::AnyFused)?;
        let current = layer::read(model.as_ref(), &base)?;
        let (beta, gamma) = stats.current(model.as_ref(), &source)?;
        let takes = current.groups * current.weight.shape()[1];
        if beta.len() != takes {
            return Err(crate::invalid(
                "analytic_bias_correction",
                "layer",
                &path,
                format!(
                    "takes {takes} input channels but {source}, whose output it reads, has {}; pass the model \
                     the statistics were read from",
                    beta.len()
                ),
            ));
        }
        let act = act.then(between);
        let mean: Vec<f64> = beta.iter().zip(&gamma).map(|(&b, &g)| act.mean_of_normal(b, g)).collect();
        let quantized = QuantizedWeight::from_observer(&current.weight, &qconfig.weight)
            .map_err(|e| e.within_path(&path))?;
        let delta = quantized.dequantize() - &current.weight;
        let shift = layer::constant_input_response(&delta, current.groups, &mean);
        let rows = shift.len();
        let mut bias = current.bias.unwrap_or_else(|| ArrayD::zeros(IxDyn(&[rows])));
        bias.iter_mut().zip(&shift).for_each(|(b, &s)| *b -= s as f32);
        layer::write(model, &base, current.weight, Some(bias))?;
        let max_abs = shift.iter().fold(0.0f64, |m, s| m.max(s.abs())) as f32;
        out.push(Correction { path: base, max_abs });
    }
    Ok(out)
}

/// Bias correction's view of a module: any weighted layer, a mean-keeping pass-through, or a
/// clipping activation.
fn input_leaf(module: &dyn Module) -> Option<Leaf> {
    if layer::base_path(module, "", Accept::AnyFused).is_ok() {
        return Some(Leaf::Layer);
    }
    if !module.children().is_empty() {
        return None;
    }
    match module.type_name() {
        "Identity" | "Dropout" => Some(Leaf::Pass),
        name => Activation::of_type_name(name).map(Leaf::Act),
    }
}

/// Each layer of `model` whose input is another layer's output: `(layer, source, activation
/// modules between them)`; inner stretches (in graphs with branches) before the outer ones.
fn input_sources(model: &dyn Module) -> Vec<(String, String, Activation)> {
    let mut found = Vec::new();
    let mut sink = |stretch: Vec<Token>| {
        let mut previous: Option<(String, Activation)> = None;
        for token in stretch {
            match token {
                Token::Layer(path) => {
                    if let Some((source, act)) = previous.take() {
                        found.push((path.clone(), source, act));
                    }
                    previous = Some((path, Activation::Identity));
                }
                Token::Pass => {}
                Token::Act(a) => previous = previous.map(|(p, act)| (p, act.then(a))),
                Token::Barrier => previous = None,
            }
        }
    };
    let top = tokens(model, "", &input_leaf, &mut sink);
    sink(top);
    found
}
