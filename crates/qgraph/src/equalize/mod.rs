//! Data-free quantization (Nagel et al., "Data-Free Quantization Through Weight Equalization and
//! Bias Correction", ICCV 2019) for float models before `prepare`:
//!
//! - cross-layer equalization, PyTorch's `torch.ao.quantization._equalize` ([`equalize`],
//!   [`cross_layer_equalization`], [`channel_range`], [`converged`]) with its arithmetic, bit for
//!   bit, and beyond it grouped (depthwise) convolutions as the second layer of a pair;
//! - [`find_equalizable_groups`] and the one call [`equalize_model`] for a fused model, with
//!   optional high-bias absorption ([`absorb_high_bias`], empirical: from calibration data);
//! - empirical [`bias_correction`] from calibration data, and [`with_quantized_weights`] (weight
//!   quantization alone, activations in float);
//! - the data-free variants of the paper from batch-norm statistics ([`BnStatistics`], read
//!   before folding): [`absorb_high_bias_from_bn`] / [`absorb_high_biases_from_bn`] with
//!   `c = max(0, β − 3γ)`, and [`analytic_bias_correction`] with `E[x]` of a clipped normal
//!   ([`Activation::mean_of_normal`]);
//! - [`output_agreement`] to measure the result (SQNR against float, top-1 agreement).
//!
//! Equalizing scales output channel `i` of a layer by `1 / s_i` and input channel `i` of the next
//! by `s_i`, which keeps the float function through ReLU (`relu(x / s) = relu(x) / s` for
//! `s > 0`) and evens out the per-channel weight ranges, so that per-tensor weight quantization
//! loses less. Fuse batch norms first (`fuse_modules`, `models::fuse_model`).
//!
//! The data-free pipeline runs in the paper's order: read the batch-norm statistics of the
//! unfused model ([`BnStatistics::from_zoo_model`] or [`BnStatistics::from_fuse_groups`]), fuse
//! (folding the batch norms), equalize ([`equalize_model`]), absorb high biases
//! ([`absorb_high_biases_from_bn`]), correct the biases ([`analytic_bias_correction`]), then
//! prepare, calibrate and convert. The statistics follow the layers through equalization and
//! absorption, so only reading them has to come before fusing.
//!
//! ```
//! use qgraph::nn::{Conv2d, ReLU};
//! use qgraph::{Module, Sequential, Value, eval};
//! let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
//!     Box::new(Conv2d::new(3, 8, [3, 3]).build()?),
//!     Box::new(ReLU::new()),
//!     Box::new(Conv2d::new(8, 4, [1, 1]).build()?),
//! ]));
//! eval(&mut model);
//! let x = Value::from(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, 3, 6, 6]), 0.5f32));
//! let before = model.forward(x.clone())?.into_float("model")?;
//! let groups = qgraph::equalize::equalize_model(&mut model, 1e-4, None)?;
//! assert_eq!(groups, [["0", "2"]]);
//! let after = model.forward(x)?.into_float("model")?;
//! assert!(before.iter().zip(&after).all(|(a, b)| (a - b).abs() <= 1e-5 * a.abs().max(1.0)));
//! # Ok::<(), qgraph::GraphError>(())
//! ```

mod absorb;
mod bias;
mod cle;
mod datafree;
mod layer;
mod measure;
mod pairs;
mod stats;

pub use absorb::absorb_high_bias;
pub use bias::{Correction, bias_correction, with_quantized_weights};
pub use cle::{
    DEFAULT_THRESHOLD, MAX_ITERATIONS, channel_range, converged, cross_layer_equalization, equalize,
    expand_groups,
};
pub use datafree::{absorb_high_bias_from_bn, absorb_high_biases_from_bn, analytic_bias_correction};
pub use measure::{Agreement, output_agreement};
pub use pairs::{equalize_model, find_equalizable_groups};
pub use stats::{Activation, BnStatistics};
