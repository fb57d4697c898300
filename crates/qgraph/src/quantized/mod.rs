//! Quantized modules (`torch.ao.nn.quantized`): what `convert` swaps in for observed float modules.

pub mod activation;
mod batchnorm;
mod conv;
mod linear;
mod weighted;

pub use batchnorm::QuantizedBatchNorm;
pub use conv::QuantizedConv;
pub use linear::QuantizedLinear;
pub use weighted::{QuantizedAct, QuantizedWeight};
