//! PyTorch's numeric suite (`torch.ao.ns._numeric_suite`) and a per-layer accuracy report: where
//! an int8 model loses accuracy, layer by layer.
//!
//! | PyTorch | here |
//! |---|---|
//! | `compare_weights(float_sd, q_sd)` | [`compare_weights`] on [`Module::state_dict`](crate::Module) and [`quantized_state_dict`] |
//! | `compare_model_outputs(float, q, x)` (`OutputLogger`) | [`compare_model_outputs`] |
//! | `compare_model_stub(float, q, swap_list, x)` (`Shadow`, `ShadowLogger`) | [`compare_model_stub`] ([`Shadow`]) |
//! | `OutputLogger`, `get_logger_dict` | [`crate::debug::log_outputs`] ([`crate::debug::OutputLog`]), keys `<path>.stats` |
//! | `ShadowLogger` | [`ShadowPair`] (the quantized and float outputs per call) |
//! | `torch.ao.ns.fx.utils.compute_sqnr` | [`compute_sqnr`] |
//!
//! Results are keyed as PyTorch keys them (`features.0.weight`, `features.0.stats`) and matched
//! by PyTorch's `_find_match` rule ([`find_match`]). The loggers are [`crate::debug`]'s; unlike
//! PyTorch, the models are left as they were given (loggers and shadows are removed after the
//! run). Quantized weights and outputs are returned dequantized.
//!
//! [`report()`] runs all of it at once and gives a [`Report`]: per layer, weight SQNR, output SQNR
//! free-running and teacher-forced, the range use of the quantized output and (given the
//! prepared model) the observer and qconfig that chose the range, and the model output's SQNR and
//! top-1 agreement ([`ModelOutput`]); it prints as a table, saves as JSON and draws an SVG plot.

mod output;
mod range;
mod report;
mod sqnr;
mod stub;
mod suite;
mod svg;
mod table;

pub(crate) use output::OutputSum;
pub use output::{ModelOutput, Top1};
pub use range::RangeUse;
pub use report::{Layer, Report, report};
pub(crate) use sqnr::db_text;
pub use sqnr::{SqnrSum, compute_sqnr};
pub use stub::{Shadow, compare_model_stub};
pub use suite::{
    ShadowPair, TensorPair, ValuePair, compare_model_outputs, compare_weights, find_match,
    get_default_compare_output_module_list, quantized_state_dict,
};
