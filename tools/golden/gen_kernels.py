"""Golden fixtures for qkernels' GEMM and convolution, produced with PyTorch (x86 build, fbgemm engine).

Run with the interpreter that ../shared/tools/torch-env.sh sets up:

    ~/.torch-ref/bin/python tools/golden/gen_kernels.py

Writes crates/qkernels/tests/fixtures/{gemm_linear,conv}.safetensors. Each file holds tensors named
"<case>/<field>" and, in its metadata, "cases": a JSON list of the cases with their scalar
parameters, and "torch": the PyTorch version, in the one "fixture" metadata entry that
tools/golden/fixtures.py writes and the crate `qtest` reads. Everything is deterministic.

Fields: `x` the u8 input (linear: [M, K]; conv: channels-last [N, *spatial, C]), `w` the qint8
weights' int_repr in PyTorch's layout ([N, K] / [OC, IC/groups, *kernel]), `bias` (f32, optional),
`q` the u8 output's int_repr (linear: [M, N]; conv: channels-last [N, *out_spatial, OC]).

FBGEMM multiplies u8 x s8 pairs with vpmaddubsw into a saturating int16 before widening, so a
full-range activation (up to 255) against a large weight can saturate and differ from the exact
sum. Every case but `linear_full_range` avoids that: 7-bit activations ([0, 127]), or weights in [-64, 63].
"""

import pathlib
import warnings

import torch
import torch.ao.nn.quantized as nnq

from fixtures import Fixture as _Fixture

warnings.filterwarnings("ignore")
torch.backends.quantized.engine = "fbgemm"


def Fixture(name):
    """A qkernels fixture, written in the shared format (tools/golden/fixtures.py)."""
    return _Fixture("qkernels", name)


def weights(shape, per_channel, w_zp, small, gen):
    """qint8 weights of `shape` (output channels first) and their (scales, zero_points)."""
    oc = shape[0]
    lo, hi = (-64, 63) if small else (-128, 127)
    w = torch.randint(lo, hi + 1, shape, dtype=torch.int8, generator=gen)
    if per_channel:
        scales = (torch.rand(oc, generator=gen, dtype=torch.float64) * 0.01 + 0.001)
        zps = torch.zeros(oc, dtype=torch.int64)
        qw = torch._make_per_channel_quantized_tensor(w, scales, zps, 0)
        return qw, scales.tolist(), [0] * oc
    scale = 0.004
    qw = torch._make_per_tensor_quantized_tensor(w, scale, w_zp)
    return qw, [scale], [w_zp]


def gen_linear():
    fx = Fixture("gemm_linear")
    gen = torch.Generator().manual_seed(3)
    configs = [
        # (m, k, n, per_channel, w_zp, relu, bias, small_weights, a_zp, out_zp)
        (13, 67, 35, False, 0, False, True, False, 61, 64),
        (13, 67, 35, True, 0, True, True, False, 3, 100),
        (1, 5, 1, True, 0, False, False, False, 0, 0),
        (3, 8, 5, True, 0, False, True, False, 0, 128),
        (40, 256, 70, True, 0, False, True, True, 128, 128),
        (9, 33, 48, False, 5, False, True, False, 20, 17),
        (17, 130, 33, False, -9, True, False, True, 200, 90),
        (64, 96, 128, True, 0, True, True, False, 64, 0),
    ]
    for ci, (m, k, n, per_channel, w_zp, relu, bias_on, small, a_zp, out_zp) in enumerate(configs):
        a_max = 255 if small else 127
        a = torch.randint(0, a_max + 1, (m, k), dtype=torch.uint8, generator=gen)
        a_scale = 0.02
        qa = torch._make_per_tensor_quantized_tensor(a, a_scale, a_zp)
        qw, w_scales, w_zps = weights((n, k), per_channel, w_zp, small, gen)
        bias = torch.randn(n, generator=gen) * 2.0 if bias_on else None
        packed = torch.ops.quantized.linear_prepack(qw, bias)
        # An output scale that spreads the float result over about 200 steps.
        yf = torch.nn.functional.linear(qa.dequantize(), qw.dequantize(), bias)
        out_scale = max(float(yf.max() - yf.min()) / 200.0, 0.01)
        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        y = op(qa, packed, out_scale, out_zp)
        tensors = dict(x=a, w=qw.int_repr(), q=y.int_repr())
        if bias is not None:
            tensors["bias"] = bias
        fx.case(f"linear_{ci}", {"m": m, "k": k, "n": n, "per_channel": per_channel, "relu": relu,
                "a": [a_scale, a_zp], "w_scales": w_scales, "w_zero_points": w_zps,
                "out": [out_scale, out_zp]}, **tensors)
    # Full-range activations against large weights: vpmaddubsw pairs would saturate (255 * 127 * 2 >
    # 32767). FBGEMM on an AVX-512 VNNI CPU (this machine) uses vpdpbusd and is exact; on an
    # AVX2-only host it would saturate and differ from the exact sum. Recorded with the CPU flag.
    m, k, n = 16, 64, 24
    a = torch.randint(200, 256, (m, k), dtype=torch.uint8, generator=gen)
    w = torch.randint(100, 128, (n, k), dtype=torch.int8, generator=gen)
    qa = torch._make_per_tensor_quantized_tensor(a, 0.01, 0)
    qw = torch._make_per_tensor_quantized_tensor(w, 0.01, 0)
    bias = torch.randn(n, generator=gen)
    y = torch.ops.quantized.linear(qa, torch.ops.quantized.linear_prepack(qw, bias), 1.0, 0)
    vnni = "avx512_vnni" in pathlib.Path("/proc/cpuinfo").read_text()
    fx.case("linear_full_range", {"m": m, "k": k, "n": n, "per_channel": False, "relu": False, "a": [0.01, 0],
            "w_scales": [0.01], "w_zero_points": [0], "out": [1.0, 0], "fbgemm_vnni": vnni},
            x=a, w=qw.int_repr(), q=y.int_repr(), bias=bias)
    fx.save()


def gen_conv():
    fx = Fixture("conv")
    gen = torch.Generator().manual_seed(5)
    modules = {1: (nnq.Conv1d, nnq.ConvReLU1d if hasattr(nnq, "ConvReLU1d") else None),
               2: (nnq.Conv2d, None), 3: (nnq.Conv3d, None)}
    import torch.ao.nn.intrinsic.quantized as nniq
    relu_modules = {1: nniq.ConvReLU1d, 2: nniq.ConvReLU2d, 3: nniq.ConvReLU3d}
    configs = [
        # name, rank, batch, c, oc, spatial, kernel, stride, padding, dilation, groups, mode, per_channel, relu, bias, small
        ("conv2d_3x3", 2, 1, 8, 16, (9, 10), 3, 1, 1, 1, 1, "zeros", True, False, True, False),
        ("conv2d_3x3_s2_relu", 2, 2, 16, 24, (11, 9), 3, 2, 1, 1, 1, "zeros", True, True, True, False),
        ("conv2d_1x1", 2, 1, 32, 40, (7, 7), 1, 1, 0, 1, 1, "zeros", True, False, True, True),
        ("conv2d_1x1_s2", 2, 1, 24, 16, (8, 8), 1, 2, 0, 1, 1, "zeros", False, False, True, False),
        ("conv2d_7x7_s2_c3", 2, 1, 3, 16, (20, 20), 7, 2, 3, 1, 1, "zeros", True, True, True, False),
        ("conv2d_dilated", 2, 1, 6, 10, (12, 12), 3, 1, 2, 2, 1, "zeros", False, False, False, False),
        ("conv2d_groups", 2, 1, 16, 32, (8, 8), 3, 1, 1, 1, 4, "zeros", True, False, True, False),
        ("conv2d_reflect", 2, 1, 8, 8, (7, 9), 3, 1, 1, 1, 1, "reflect", True, True, True, False),
        ("conv2d_dw3x3", 2, 1, 32, 32, (10, 10), 3, 1, 1, 1, 32, "zeros", True, False, True, False),
        ("conv2d_dw3x3_s2", 2, 1, 48, 48, (13, 13), 3, 2, 1, 1, 48, "zeros", True, True, True, False),
        ("conv2d_dw5x5", 2, 1, 24, 24, (11, 11), 5, 1, 2, 1, 24, "zeros", True, False, True, True),
        ("conv2d_per_tensor", 2, 1, 8, 12, (6, 6), 3, 1, 1, 1, 1, "zeros", False, True, True, False),
        ("conv1d_k5", 1, 2, 8, 12, (30,), 5, 2, 2, 1, 1, "zeros", True, False, True, False),
        ("conv1d_dw3", 1, 1, 16, 16, (25,), 3, 1, 1, 1, 16, "zeros", True, False, True, False),
        ("conv3d_3x3x3", 3, 1, 4, 8, (5, 6, 6), 3, 1, 1, 1, 1, "zeros", True, False, True, False),
        ("conv3d_s2_relu", 3, 1, 8, 8, (6, 7, 5), 3, 2, 1, 1, 1, "zeros", False, True, True, False),
    ]
    for (name, rank, batch, c, oc, spatial, k, s, p, d, groups, mode, per_channel, relu, bias_on, small) in configs:
        a_max = 255 if small else 127
        a_scale, a_zp = 0.03, 50 if small else 11
        x = torch.randint(0, a_max + 1, (batch, c, *spatial), dtype=torch.uint8, generator=gen)
        qx = torch._make_per_tensor_quantized_tensor(x, a_scale, a_zp)
        w_shape = (oc, c // groups, *([k] * rank))
        qw, w_scales, w_zps = weights(w_shape, per_channel, 0, small, gen)
        bias = torch.randn(oc, generator=gen) * 2.0 if bias_on else None
        cls = relu_modules[rank] if relu else modules[rank][0]
        mod = cls(c, oc, k, stride=s, padding=p, dilation=d, groups=groups, bias=bias_on, padding_mode=mode)
        mod.set_weight_bias(qw, bias)
        out_scale = 0.015 * (c // groups * k ** rank) ** 0.5
        out_zp = 70
        mod.scale, mod.zero_point = out_scale, out_zp
        memfmt = {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d}[rank]
        y = mod(qx.contiguous(memory_format=memfmt))
        to_last = lambda t: t.permute(0, *range(2, t.dim()), 1)
        tensors = dict(x=to_last(x), w=qw.int_repr(), q=to_last(y.int_repr()))
        if bias is not None:
            tensors["bias"] = bias
        fx.case(name, {"rank": rank, "batch": batch, "in_channels": c, "out_channels": oc,
                       "input": list(spatial), "kernel": [k] * rank, "stride": [s] * rank,
                       "padding": [p] * rank, "dilation": [d] * rank, "groups": groups,
                       "padding_mode": mode, "per_channel": per_channel, "relu": relu,
                       "a": [a_scale, a_zp], "w_scales": w_scales, "w_zero_points": w_zps,
                       "out": [out_scale, out_zp]}, **tensors)
    fx.save()


if __name__ == "__main__":
    gen_linear()
    gen_conv()
