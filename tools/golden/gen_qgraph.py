"""Golden fixtures for qgraph, produced with PyTorch 2.15.

    ~/.torch-ref/bin/python tools/golden/gen_qgraph.py

Writes crates/qgraph/tests/fixtures/fusion.safetensors (torch.nn.utils.fusion's conv/linear
batch-norm folding on seeded parameters) and qconfig.safetensors (the observer arguments of
PyTorch's named qconfigs, read from instantiated observers), in the format of
tools/golden/fixtures.py. Deterministic.
"""

import warnings

import torch
import torch.ao.quantization as tq
from fixtures import Fixture
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

warnings.filterwarnings("ignore")
torch.manual_seed(0)


def bn_params(n):
    return dict(rm=torch.randn(n), rv=torch.rand(n) * 2 + torch.tensor([1e-7] + [0.0] * (n - 1)),
                w=torch.randn(n), b=torch.randn(n))


def gen_fusion():
    fx = Fixture("qgraph", "fusion")
    convs = [("conv1d", (8, 3, 5), False), ("conv2d", (16, 4, 3, 3), False), ("conv3d", (6, 2, 3, 3, 3), False),
             ("depthwise", (32, 1, 3, 3), False), ("convT2d", (4, 10, 3, 3), True), ("wide", (32, 16, 3, 3), False)]
    for name, shape, transpose in convs:
        n = shape[1] if transpose else shape[0]
        for bias in [True, False]:
            for affine in [True, False]:
                for eps in [1e-5, 1e-3]:
                    p = bn_params(n)
                    w = torch.randn(shape)
                    b = torch.randn(n) if bias else None
                    bw, bb = (p["w"], p["b"]) if affine else (None, None)
                    fw, fb = fuse_conv_bn_weights(w, b, p["rm"], p["rv"], eps, bw, bb, transpose)
                    tensors = dict(w=w, rm=p["rm"], rv=p["rv"], fused_w=fw.detach(), fused_b=fb.detach())
                    if b is not None:
                        tensors["b"] = b
                    if affine:
                        tensors.update(bn_w=bw, bn_b=bb)
                    fx.case(f"{name}_bias{int(bias)}_affine{int(affine)}_eps{eps}",
                            {"kind": "conv", "transpose": transpose, "eps": eps}, **tensors)
    for name, (out_f, in_f, n) in [("linear", (10, 7, 10)), ("linear_bn1", (5, 3, 1)), ("fc", (64, 96, 64))]:
        for bias in [True, False]:
            p = bn_params(n)
            w = torch.randn(out_f, in_f)
            b = torch.randn(out_f) if bias else None
            fw, fb = fuse_linear_bn_weights(w, b, p["rm"], p["rv"], 1e-5, p["w"], p["b"])
            tensors = dict(w=w, rm=p["rm"], rv=p["rv"], bn_w=p["w"], bn_b=p["b"], fused_w=fw.detach(), fused_b=fb.detach())
            if b is not None:
                tensors["b"] = b
            fx.case(f"{name}_bias{int(bias)}", {"kind": "linear", "transpose": False, "eps": 1e-5}, **tensors)
    fx.save()


def describe(observer_ctor):
    """The arguments an instantiated observer carries, as the Rust ObserverSpec holds them."""
    o = observer_ctor()
    d = {"class": type(o).__name__}
    if hasattr(o, "qscheme") and hasattr(o, "reduce_range"):
        custom = getattr(o, "has_customized_qrange", False)
        d.update(dtype=str(o.dtype).replace("torch.", ""), qscheme=str(o.qscheme).replace("torch.", ""),
                 reduce_range=bool(o.reduce_range), quant_min=o.quant_min if custom else None,
                 quant_max=o.quant_max if custom else None, eps=float(o.eps), is_dynamic=bool(o.is_dynamic))
    if hasattr(o, "ch_axis"):
        d["ch_axis"] = o.ch_axis
    return d


def gen_qconfig():
    fx = Fixture("qgraph", "qconfig")
    named = {f"get_default_qconfig_{b}": tq.get_default_qconfig(b) for b in ["x86", "fbgemm", "qnnpack", "onednn"]}
    named.update({
        "default_qconfig": tq.default_qconfig,
        "default_per_channel_qconfig": tq.default_per_channel_qconfig,
        "default_dynamic_qconfig": tq.default_dynamic_qconfig,
        "default_debug_qconfig": tq.default_debug_qconfig,
        "default_symmetric_qnnpack_qconfig": tq.default_symmetric_qnnpack_qconfig,
        "default_per_channel_symmetric_qnnpack_qconfig": tq.default_per_channel_symmetric_qnnpack_qconfig,
    })
    for name, qconfig in named.items():
        fx.case(name, {"activation": describe(qconfig.activation), "weight": describe(qconfig.weight)})
    fx.save()


if __name__ == "__main__":
    gen_fusion()
    gen_qconfig()
