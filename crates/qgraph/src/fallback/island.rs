//! Float islands: a layer left in float inside a quantized model, with the dequantize before it
//! and the quantize after it that PyTorch's eager mode asks the user to place.

use qkernels::elementwise::PerTensor;

use crate::module::{join, slot_mut};
use crate::workflow::Observed;
use crate::{
    DeQuantStub, DeQuantize, FloatFunctional, GraphResult, Module, QConfigMapping, QuantStub, Quantize,
    Sequential,
};

/// The island's children, in order: `<path>.0` dequantizes, `<path>.1` is the float layer,
/// `<path>.2` quantizes.
pub(super) const FLOAT_CHILD: &str = "1";

/// A layer that can be left in float: its path, its float module (as prepared saw it, fused) and
/// the output parameters its observer chose.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) path: String,
    pub(super) float: Box<dyn Module>,
    pub(super) out_q: PerTensor,
}

/// The observed layers of a calibrated prepared model that can run in float between a
/// dequantize and a quantize: every [`Observed`] module except `QuantStub`s (already the float
/// boundary) and `FloatFunctional`s (several inputs, each quantized with its own parameters: an
/// island would need one dequantize per input, which the eager workflow has no place for).
pub(super) fn candidates(prepared: &dyn Module) -> GraphResult<Vec<Candidate>> {
    let mut out = Vec::new();
    for (path, module) in prepared.named_modules() {
        let Some(observed) = module.downcast_ref::<Observed>() else { continue };
        let inner = observed.inner();
        if inner.is::<QuantStub>() || inner.is::<FloatFunctional>() {
            continue;
        }
        let out_q = observed.post_process().activation_qparams().map_err(|e| e.within_path(&path))?;
        out.push(Candidate { path, float: inner.clone_module(), out_q });
    }
    Ok(out)
}

/// `quantized` (converted from the calibrated model the candidates come from) with each
/// candidate of `float` replaced by `Sequential(DeQuantize, float layer, Quantize)`, the
/// quantize using the parameters the layer's own observer chose.
///
/// This is what [`isolate`] followed by prepare, calibrate and convert gives on the same
/// calibration data: calibration runs the model in float whatever is quantized later, so the
/// island's `QuantStub` sees exactly what the layer's observer saw, and with the same qconfig
/// chooses the same parameters (`tests/fallback.rs` checks the two bit for bit).
pub(super) fn with_islands(quantized: &dyn Module, float: &[&Candidate]) -> GraphResult<Box<dyn Module>> {
    let mut model = quantized.clone_module();
    for candidate in float {
        let island = Sequential::new(vec![
            Box::new(DeQuantize::new()),
            candidate.float.clone_module(),
            Box::new(Quantize::new(candidate.out_q).map_err(|e| e.within_path(&candidate.path))?),
        ]);
        *slot_mut(&mut model, &candidate.path)? = Box::new(island);
    }
    Ok(model)
}

/// Places PyTorch's stubs around each layer of `layers` in a float model so that it can stay float:
/// the layer at `path` becomes `Sequential(DeQuantStub, layer, QuantStub)` (the layer itself at
/// `<path>.1`), and the returned mapping is `mapping` with `set_name("<path>.1", None)`. Prepare,
/// calibrate and convert then give a model that dequantizes before the layer, runs it in float
/// and quantizes its output with parameters observed by the `QuantStub`, which inherits the
/// qconfig the layer would have had.
///
/// qgraph's `prepare` / `convert`, like PyTorch's eager mode, do not place stubs for a module
/// whose qconfig is `None`: such a module in the middle of a quantized model would be given a
/// quantized tensor it cannot take. An error names a path that is not in `model`.
pub fn isolate(
    model: &dyn Module,
    mapping: &QConfigMapping,
    layers: &[String],
) -> GraphResult<(Box<dyn Module>, QConfigMapping)> {
    let mut model = model.clone_module();
    let mut mapping = mapping.clone();
    for path in layers {
        let slot = slot_mut(&mut model, path)?;
        let layer = std::mem::replace(slot, Box::new(Sequential::new(Vec::new())));
        *slot =
            Box::new(Sequential::new(vec![Box::new(DeQuantStub::new()), layer, Box::new(QuantStub::new())]));
        mapping = mapping.set_name(&join(path, FLOAT_CHILD), None);
    }
    Ok((model, mapping))
}
