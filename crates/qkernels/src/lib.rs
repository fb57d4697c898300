//! Int8 kernels for CPU inference: u8 x i8 GEMM and convolution with i32 accumulation and fused
//! requantization, quantized elementwise ops and pooling, and the f32 kernels float models run on.
//!
//! Every kernel has a scalar tier and vectorised tiers (AVX2, AVX-512, AVX-512 VNNI) chosen at run
//! time, and every tier is tested bit for bit against the scalar oracle in [`qcore`].
//!
//! The kernels themselves arrive with the GEMM/convolution and elementwise work; this crate
//! currently fixes its place in the workspace: above `qcore`, below `qobserve`.

pub use qcore;
