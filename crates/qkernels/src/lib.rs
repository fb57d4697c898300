//! Int8 kernels for CPU inference: u8 x i8 GEMM and convolution with i32 accumulation and fused
//! requantization, quantized elementwise ops, pooling and batch norm, layout-converting quantize and
//! dequantize, and the f32 kernels float models run on.
//!
//! Every kernel has a scalar tier and vectorised tiers ([`Isa`]) chosen at run time, and every
//! tier is tested bit for bit against the scalar oracle in [`qcore`].

mod error;
mod isa;
#[cfg(target_arch = "x86_64")]
mod masks;

pub mod conv;
pub mod elementwise;
pub mod float;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod quant;

pub use error::{KernelError, KernelResult};
pub use isa::Isa;
pub use qcore;
