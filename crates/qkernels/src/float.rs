//! f32 kernels for float models (NCHW): GEMM through the gemm crate, convolution, batch norm, activations, pooling, softmax.
