//! Quantized elementwise ops with PyTorch numerics: add, mul, cat, activations, lookup tables.
