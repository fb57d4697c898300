//! Int8 convolution on NHWC u8 activations: 1-3 D, stride, padding, dilation, groups, depthwise.
