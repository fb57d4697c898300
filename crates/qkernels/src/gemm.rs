//! Int8 GEMM: u8 activations x pre-packed i8 weights, i32 accumulation, fused output pipeline.
