//! The MobileNetV2 setting of the equalization example and of `tests/equalize.rs`: a zoo model
//! whose folded channel ranges differ widely, seeded images, and the per-tensor quantization
//! recipe.

use std::collections::BTreeMap;
use std::error::Error;

use ndarray::{ArrayD, IxDyn};
use qgraph::models::{self, deterministic_state_dict, random_f32s};
use qgraph::qconfig::QConfig;
use qgraph::{Module, QConfigMapping, calibrate, convert, eval, load_state_dict, prepare};

/// The example's and test's error type.
pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// `count` seeded batches `[batch, 3, size, size]` in [-1, 1), seeds `seed`, `seed + 1`, ...
pub fn images(count: u64, seed: u64, batch: usize, size: usize) -> Result<Vec<ArrayD<f32>>> {
    let shape = [batch, 3, size, size];
    let n = shape.iter().product();
    (0..count).map(|i| Ok(ArrayD::from_shape_vec(IxDyn(&shape), random_f32s(n, seed + i))?)).collect()
}

/// `mobilenet_v2(10)` in evaluation mode with `deterministic_state_dict` weights, every batch
/// norm's `weight` (gamma) channel multiplied by `2^(3 u)`, u in [-1, 1) from `random_f32s` (seed
/// 7 + the batch norm's index), so that folded per-channel weight ranges differ by up to 64x as in
/// a trained model; then fused (`models::fuse_model`).
pub fn skewed_mobilenet_v2() -> Result<Box<dyn Module>> {
    let mut model = skewed_mobilenet_v2_unfused()?;
    models::fuse_model(&mut model)?;
    Ok(model)
}

/// [`skewed_mobilenet_v2`] before fusing: its batch norms still in place (the data-free steps
/// read their statistics).
pub fn skewed_mobilenet_v2_unfused() -> Result<Box<dyn Module>> {
    let mut model = models::mobilenet_v2(10)?;
    eval(&mut model);
    let mut state: BTreeMap<String, ArrayD<f32>> = deterministic_state_dict(model.as_ref())?;
    let gammas = state.iter_mut().filter(|(k, v)| k.ends_with(".weight") && v.ndim() == 1);
    for (i, (_, gamma)) in gammas.enumerate() {
        let u = random_f32s(gamma.len(), 7 + i as u64);
        gamma.iter_mut().zip(u).for_each(|(g, u)| *g *= (3.0 * u).exp2());
    }
    load_state_dict(&mut model, state)?;
    Ok(model)
}

/// Prepares a copy of `float` with `qconfig`, calibrates it on `calibration` and converts it.
pub fn quantize(
    float: &dyn Module,
    qconfig: QConfig,
    calibration: &[ArrayD<f32>],
) -> Result<Box<dyn Module>> {
    let mut model = float.clone_module();
    prepare(&mut model, &QConfigMapping::global(qconfig))?;
    calibrate(model.as_ref(), calibration.iter().cloned(), |_, _| {})?;
    convert(&mut model)?;
    Ok(model)
}
