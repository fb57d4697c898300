//! Int8 kernels for CPU inference: u8 x i8 GEMM and convolution with i32 accumulation and fused
//! requantization, quantized elementwise ops and pooling, and the f32 kernels float models run on.
//!
//! Every kernel has a scalar tier and vectorised tiers ([`Isa`]) chosen at run time, and every
//! tier is tested bit for bit against the scalar oracle in [`qcore`].

mod error;
mod isa;

pub mod conv;
pub mod elementwise;
pub mod float;
pub mod gemm;
pub mod pool;

pub use error::{KernelError, KernelResult};
pub use isa::Isa;
pub use qcore;
