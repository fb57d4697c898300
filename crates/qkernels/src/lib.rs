//! Int8 kernels for CPU inference: u8 x i8 GEMM and convolution with i32 accumulation and fused
//! requantization, quantized elementwise ops, pooling and batch norm, layout-converting quantize and
//! dequantize, and the f32 kernels float models run on.
//!
//! Every kernel has a scalar tier and vectorised tiers ([`Isa`]) chosen at run time, and every
//! tier is tested bit for bit against the scalar oracle in [`qcore`]. Tiers are chosen in one
//! place, `src/dispatch.rs`; all architecture-specific code lives in one folder per architecture
//! (`src/x86/`).

// Off x86-64 the x86 arms of `on_tier!` are compiled out, and with them the only uses of some
// values, helpers and fields.
#![cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, unused_macros, dead_code))]

#[macro_use]
mod dispatch;

mod error;
mod small_copy;
mod util;
#[cfg(target_arch = "x86_64")]
mod x86;

pub mod conv;
pub mod dynamic;
pub mod elementwise;
pub mod embedding;
pub mod float;
pub mod gemm;
pub mod layout;
pub mod norm;
pub mod pool;
pub mod quant;

pub use dispatch::Isa;
pub use error::{KernelError, KernelResult};
pub use layout::MemoryFormat;
pub use qcore;

/// This crate's README examples, run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;
