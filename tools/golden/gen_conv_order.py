"""Golden fixtures for qkernels::float::conv2d_onednn: PyTorch 2.15's float conv2d outputs, whose
summation order (oneDNN's jit:avx512_core direct kernel on an AVX-512 CPU) that kernel copies.

    ~/.torch-ref/bin/python tools/golden/gen_conv_order.py

Writes crates/qkernels/tests/fixtures/conv_order.safetensors. One thread, default backend flags
(oneDNN enabled, as the QAT fixtures are made). Every case has two or more images and a kernel
larger than 1x1, so PyTorch runs oneDNN (a single small image or an unstrided 1x1 kernel runs
ATen's own im2col + MKL path instead; 1x1 and depthwise layers run other oneDNN kernels). The
order depends on the CPU: on a CPU without AVX-512, oneDNN's AVX2 kernel blocks channels by 8 and
the fixture would no longer match; the CPU it was made on is recorded in the metadata.

Cases (x: input, w: weight, b: bias when present, y: F.conv2d(x, w, b, stride, padding,
groups); values standard normal, seeded): the digits QAT model's three convolutions at batch 2
(1 -> 16 channels on 8x8, 16 -> 32 on 8x8, 32 -> 64 on 4x4, 3x3, padding 1, zero bias as
`_forward_approximate` passes it), then 3 input channels, 24 (a partial block), 48 with stride 2,
a 5x5 kernel over 32 channels, groups 2 (32 channels per group) and 4 (8 per group), no bias.
"""

import torch
import torch.nn.functional as F
from fixtures import Fixture

torch.set_num_threads(1)

# name: (batch, in_channels, out_channels, size, kernel, stride, padding, groups, bias)
CASES = {
    "digits_conv1": (2, 1, 16, 8, 3, 1, 1, 1, "zero"),
    "digits_conv2": (2, 16, 32, 8, 3, 1, 1, 1, "zero"),
    "digits_conv3": (2, 32, 64, 4, 3, 1, 1, 1, "zero"),
    "ic3": (2, 3, 16, 9, 3, 1, 1, 1, "random"),
    "ic24_partial_block": (2, 24, 16, 7, 3, 1, 1, 1, "random"),
    "ic48_stride2": (2, 48, 16, 9, 3, 2, 1, 1, "random"),
    "ic32_k5": (2, 32, 16, 10, 5, 1, 2, 1, "random"),
    "groups2": (2, 64, 32, 6, 3, 1, 1, 2, "random"),
    "groups4": (2, 32, 32, 6, 3, 1, 1, 4, "random"),
    "no_bias": (2, 40, 24, 5, 3, 1, 0, 1, None),
}


def main():
    assert torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    fx = Fixture("qkernels", "conv_order")
    for seed, (name, (n, c, o, size, k, stride, pad, groups, bias)) in enumerate(CASES.items()):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, c, size, size, generator=gen)
        w = torch.randn(o, c // groups, k, k, generator=gen)
        b = {"zero": torch.zeros(o), "random": torch.randn(o, generator=gen), None: None}[bias]
        with torch.no_grad():
            y = F.conv2d(x, w, b, stride=stride, padding=pad, groups=groups)
        tensors = {"x": x, "w": w, "y": y} | ({} if b is None else {"b": b})
        fx.case(name, {"stride": stride, "padding": pad, "groups": groups}, **tensors)
    fx.save()


if __name__ == "__main__":
    main()
