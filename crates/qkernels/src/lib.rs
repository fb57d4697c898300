//! Int8 kernels for CPU inference: u8 x i8 GEMM and convolution with i32 accumulation and fused
//! requantization, quantized elementwise ops, pooling and batch norm, layout-converting quantize and
//! dequantize, and the f32 kernels float models run on.
//!
//! Every kernel has a scalar tier and vectorised tiers ([`Isa`]) chosen at run time, and every
//! tier is tested bit for bit against the scalar oracle in [`qcore`].

/// `match isa` over the tiers: `scalar` on the scalar tier (and off x86-64), `avx2` and `avx512`,
/// evaluated in an `unsafe` block, on the vector tiers. Only for code behind a public entry that
/// checked `isa.ensure_supported()`, which is what makes the tier's target features available.
macro_rules! on_tier {
    ($isa:expr, scalar: $scalar:expr, avx2: $avx2:expr, avx512: $avx512:expr $(,)?) => {
        match $isa {
            Isa::Scalar => $scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                debug_assert!($isa.is_supported());
                // SAFETY: every public entry checks `isa.ensure_supported()`: AVX2 and FMA exist.
                unsafe { $avx2 }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => {
                debug_assert!($isa.is_supported());
                // SAFETY: as above; the tier implies AVX-512 F/BW/VL/DQ.
                unsafe { $avx512 }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => $scalar,
        }
    };
}

mod error;
mod isa;
#[cfg(target_arch = "x86_64")]
mod masks;

pub mod conv;
pub mod elementwise;
pub mod float;
pub mod gemm;
pub mod layout;
pub mod norm;
pub mod pool;
pub mod quant;

pub use error::{KernelError, KernelResult};
pub use isa::Isa;
pub use layout::MemoryFormat;
pub use qcore;

/// This crate's README examples, run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;
