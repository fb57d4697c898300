//! Quantized pooling and resampling on NHWC tensors: max / average / adaptive pooling, upsampling.
