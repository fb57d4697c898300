//! Empirical bias correction (Nagel et al. 2019, section 4.2, with calibration data): the
//! expected output error that quantizing a layer's weights adds, measured on the float model's
//! inputs to that layer, is subtracted from the layer's float bias before converting again.

use std::collections::{BTreeMap, HashSet};

use ndarray::{ArrayD, Axis, IxDyn};

use super::layer::{self, Accept};
use crate::ns::quantized_state_dict;
use crate::{GraphError, GraphResult, Module, Value, debug};

/// One corrected layer: its path and the largest correction applied to a channel's bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    /// The path of the `Conv` or `Linear` whose bias changed (`features.1.conv.0.0.0`).
    pub path: String,
    /// `max |E[W_q x] − E[W x]|` over its output channels.
    pub max_abs: f32,
}

/// Bias correction of `float` (a fused float model, changed in place) for the weights of
/// `quantized` (the same model after `prepare`, calibration and `convert`): for every layer of
/// `quantized` with int8 weights, the float layer at its path (or part `0` of the fused module
/// there) gets `bias −= E[(W_q − W) x]` per output channel, the mean over `inputs` (run through
/// the float model), batch and positions of the output of the layer with weight `W_q − W` (the
/// dequantized int8 weight minus the float one) and no bias. A layer without a bias gets one.
///
/// This is the empirical variant: it needs calibration data, and it uses the float model's inputs
/// to every layer (the errors of earlier layers and of activation quantization are not
/// included). Prepare, calibrate and convert the corrected float model again: its weights, and so
/// its weight quantization, are unchanged. Returns the corrected layers in the quantized model's
/// order. An error if a quantized weight has no float layer of the same shape at its path.
pub fn bias_correction(
    float: &mut Box<dyn Module>,
    quantized: &dyn Module,
    inputs: &[Value],
) -> GraphResult<Vec<Correction>> {
    let layers: Vec<(String, ArrayD<f32>)> = dequantized_weights(float.as_ref(), quantized)?
        .into_iter()
        .map(|(base, dequantized, weight)| (base, dequantized - &weight))
        .collect();
    let logged = log_inputs(float, layers.iter().map(|(b, _)| b.clone()).collect(), inputs)?;
    let mut out = Vec::new();
    for (base, delta) in layers {
        let Some(seen) = logged.get(&base) else { continue };
        let shift = mean_output(float.as_ref(), &base, delta, seen)?;
        let current = layer::read(float.as_ref(), &base)?;
        let bias = current.bias.unwrap_or_else(|| ArrayD::zeros(IxDyn(&[shift.len()])));
        let max_abs = shift.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let corrected =
            &bias - &ArrayD::from_shape_vec(IxDyn(&[shift.len()]), shift).expect("one per channel");
        layer::write(float, &base, current.weight, Some(corrected))?;
        out.push(Correction { path: base, max_abs });
    }
    Ok(out)
}

/// A layer's float `Conv` / `Linear` path, its int8 weight dequantized, and its float weight.
type LayerWeights = (String, ArrayD<f32>, ArrayD<f32>);

/// For every int8 weight of `quantized`: the path of the float `Conv` or `Linear` at its path in
/// `float` (part `0` of a fused module), the weight dequantized, and the float weight.
fn dequantized_weights(float: &dyn Module, quantized: &dyn Module) -> GraphResult<Vec<LayerWeights>> {
    let mut layers = Vec::new();
    for (key, weight) in quantized_state_dict(quantized)? {
        // `<path>.weight`, or `<path>._packed_params._packed_params` for a quantized Linear.
        let path = key.split("._packed_params").next().unwrap_or(&key);
        let path = path.strip_suffix(".weight").unwrap_or(path);
        let base = layer::base_path(float, path, Accept::AnyFused)?;
        let float_weight = layer::read(float, &base)?.weight;
        let dequantized = weight.dequantize();
        if dequantized.shape() != float_weight.shape() {
            return Err(GraphError::Mismatch {
                context: "bias_correction",
                reason: format!(
                    "{path}: the quantized weight has shape {:?} and the float one {:?}; pass the float model \
                     the quantized one was converted from",
                    dequantized.shape(),
                    float_weight.shape()
                ),
            });
        }
        layers.push((base, dequantized, float_weight));
    }
    Ok(layers)
}

/// A copy of `float` whose conv and linear weights are those of `quantized` (the same model
/// converted), dequantized: the model with weight quantization only, activations in float. It
/// isolates what weight quantization costs (what equalization addresses) from activation
/// quantization. Biases stay float, as in the int8 model.
pub fn with_quantized_weights(float: &dyn Module, quantized: &dyn Module) -> GraphResult<Box<dyn Module>> {
    let mut out = float.clone_module();
    for (base, dequantized, _) in dequantized_weights(float, quantized)? {
        let bias = layer::read(out.as_ref(), &base)?.bias;
        layer::write(&mut out, &base, dequantized, bias)?;
    }
    Ok(out)
}

/// The inputs each layer at `paths` is given when `model` runs on `inputs`, by path.
fn log_inputs(
    model: &mut Box<dyn Module>,
    paths: HashSet<String>,
    inputs: &[Value],
) -> GraphResult<BTreeMap<String, Vec<Value>>> {
    let log = debug::log_inputs(model, |path, _| paths.contains(path))?;
    let run = inputs.iter().try_for_each(|x| model.forward(x.clone()).map(drop));
    debug::remove_loggers(model)?;
    run?;
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (path, value) in log.take() {
        out.entry(path).or_default().push(value);
    }
    Ok(out)
}

/// `E[delta x]` per output channel: the layer at `base` with weight `delta` and no bias, run on
/// `seen`, averaged (in f64) over everything but the channel axis (1 for a conv, the last for a
/// linear layer).
fn mean_output(model: &dyn Module, base: &str, delta: ArrayD<f32>, seen: &[Value]) -> GraphResult<Vec<f32>> {
    let mut probe: Box<dyn Module> = model.get(base)?.clone_module();
    let conv = probe.is::<crate::nn::Conv>();
    layer::write(&mut probe, "", delta, None)?;
    let mut sums: Vec<f64> = Vec::new();
    let mut count = 0usize;
    for x in seen {
        let y = probe.forward(x.clone())?.into_float(probe.type_name())?;
        let axis = if conv { Axis(1) } else { Axis(y.ndim() - 1) };
        if sums.is_empty() {
            sums = vec![0.0; y.len_of(axis)];
        }
        for (c, lane) in y.axis_iter(axis).enumerate() {
            sums[c] += lane.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        count += y.len() / y.len_of(axis).max(1);
    }
    Ok(sums.into_iter().map(|s| (s / count.max(1) as f64) as f32).collect())
}
