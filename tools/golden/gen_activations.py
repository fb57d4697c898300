"""Golden fixtures for qgraph's unweighted modules, produced with PyTorch 2.15.

    ~/.torch-ref/bin/python tools/golden/gen_activations.py

Writes crates/qgraph/tests/fixtures/activations.safetensors in the format of
tools/golden/fixtures.py: for each module (activations, pooling, dropout, upsample, softmax and
the quantized activations of torch.ao.nn.quantized), its constructor arguments and `str(module)`,
a float input `x` with the module's float output `y`, and the module applied to
`torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)` in channels-last memory (the
layout quantized convolutions produce, and the one qgraph stores): input `xq` and output `yq`
(int_repr, NCHW order) with the output parameters. Engine fbgemm. Deterministic.

Also writes crates/qgraph/tests/fixtures/activations_added.safetensors (`added_fixture`), for
the activations the mapping audit added, nn.Hardsigmoid and nn.Threshold: the module cases above,
float outputs on special and dense inputs (compared bit for bit), and the quantized kernels on
every input byte through their vector body and scalar tail for several input parameters; for
Hardsigmoid also short (all-tail) lengths, a parallel_for split and qint8.
"""

import warnings

import torch
import torch.ao.nn.quantized as nnq
import torch.nn as nn
from fixtures import Fixture

warnings.filterwarnings("ignore")
torch.manual_seed(0)
torch.backends.quantized.engine = "fbgemm"

QPARAMS = [(0.05, 100), (0.0213, 7)]


def float_cases():
    """(name, kind, kwargs, shape): modules built as getattr(nn, kind)(**kwargs)."""
    act = [
        ("relu", "ReLU", {}), ("relu6", "ReLU6", {}), ("hardtanh", "Hardtanh", {}),
        ("hardtanh_wide", "Hardtanh", {"min_val": -2.5, "max_val": 3.25}), ("hardswish", "Hardswish", {}),
        ("sigmoid", "Sigmoid", {}), ("tanh", "Tanh", {}), ("leaky_relu", "LeakyReLU", {}),
        ("leaky_relu_02", "LeakyReLU", {"negative_slope": 0.2}), ("elu", "ELU", {}),
        ("elu_05", "ELU", {"alpha": 0.5}), ("dropout", "Dropout", {"p": 0.3}),
        ("softmax", "Softmax", {"dim": 1}), ("softmax_last", "Softmax", {"dim": -1}),
    ]
    for name, kind, kw in act:
        yield name, kind, kw, (1, 19, 5, 4)
    yield "maxpool1d", "MaxPool1d", {"kernel_size": 3}, (2, 6, 11)
    yield "maxpool1d_pad", "MaxPool1d", {"kernel_size": 4, "stride": 2, "padding": 2, "dilation": 1,
                                         "ceil_mode": True}, (1, 5, 12)
    yield "maxpool2d", "MaxPool2d", {"kernel_size": 2}, (1, 19, 8, 6)
    yield "maxpool2d_full", "MaxPool2d", {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 1],
                                          "dilation": [1, 2], "ceil_mode": True}, (1, 7, 9, 8)
    yield "maxpool2d_s2p1", "MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (1, 19, 9, 9)
    yield "maxpool3d", "MaxPool3d", {"kernel_size": 2}, (1, 4, 4, 6, 5)
    yield "maxpool3d_full", "MaxPool3d", {"kernel_size": [3, 2, 2], "stride": 1, "padding": [1, 0, 1],
                                          "dilation": [1, 2, 1], "ceil_mode": False}, (1, 3, 5, 6, 4)
    yield "avgpool2d", "AvgPool2d", {"kernel_size": 2}, (1, 19, 8, 6)
    yield "avgpool2d_pad", "AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (1, 21, 9, 7)
    yield "avgpool2d_nopad", "AvgPool2d", {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 1],
                                           "ceil_mode": True, "count_include_pad": False}, (1, 17, 8, 7)
    yield "avgpool2d_div", "AvgPool2d", {"kernel_size": 3, "stride": 1, "padding": 1,
                                         "divisor_override": 5}, (1, 18, 6, 5)
    yield "up_nearest2", "Upsample", {"scale_factor": 2.0}, (1, 19, 4, 5)
    yield "up_nearest3", "Upsample", {"scale_factor": [3.0, 2.0]}, (1, 5, 3, 4)
    yield "up_nearest_size", "Upsample", {"size": [7, 9]}, (1, 5, 4, 5)
    yield "up_nearest_size1", "Upsample", {"size": 6}, (1, 5, 4, 5)
    yield "up_bilinear2", "Upsample", {"scale_factor": 2.0, "mode": "bilinear"}, (1, 19, 4, 5)
    yield "up_bilinear_ac", "Upsample", {"scale_factor": 2.0, "mode": "bilinear", "align_corners": True}, (1, 19, 4, 5)
    yield "up_bilinear_size", "Upsample", {"size": [7, 9], "mode": "bilinear"}, (1, 21, 4, 5)


def quantized_cases():
    """(name, kind, kwargs, float kind): modules built as getattr(nnq, kind)(**kwargs)."""
    yield "q_relu6", "ReLU6", {}
    yield "q_hardswish", "Hardswish", {"scale": 0.031, "zero_point": 60}
    yield "q_elu", "ELU", {"scale": 0.027, "zero_point": 70, "alpha": 0.5}
    yield "q_leaky_relu", "LeakyReLU", {"scale": 0.04, "zero_point": 20, "negative_slope": 0.1}
    yield "q_dropout", "Dropout", {"p": 0.5}


def quantized_input(x, scale, zp):
    xq = torch.quantize_per_tensor(x, scale, zp, torch.quint8)
    return xq.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else xq


def run_quant(m, xq):
    try:
        return m(xq)
    except (RuntimeError, NotImplementedError):
        return None


def float_module_cases(fx, name, kind, kw, shape):
    """The float module getattr(nn, kind)(**kw) on a random input of `shape`, in float and on the
    input quantized with each of QPARAMS: cases name_0, name_1."""
    m = getattr(nn, kind)(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}).eval()
    x = torch.randn(shape) * 3
    y = m(x.clone())  # clones: an inplace module overwrites its input
    for i, (s, zp) in enumerate(QPARAMS):
        xq = quantized_input(x, s, zp)
        yq = run_quant(m, quantized_input(x, s, zp))  # a copy of xq, in the same memory format
        params = {"kind": kind, "quantized": False, "args": kw, "str": str(m), "scale": s, "zero_point": zp}
        tensors = dict(x=x, y=y.contiguous(), xq=xq.int_repr().contiguous())
        if yq is None:
            params["quant_error"] = True
        else:
            params.update(quant_error=False, out_scale=yq.q_scale(), out_zero_point=yq.q_zero_point())
            tensors["yq"] = yq.int_repr().contiguous()
            # How the NCHW (non channels-last) kernel differs, for the record.
            yn = m(torch.quantize_per_tensor(x.clone(), s, zp, torch.quint8))
            diff = (yn.int_repr().int() - yq.int_repr().int()).abs().max().item()
            if diff:
                print(f"{name}_{i}: NCHW input differs from channels-last by up to {diff}")
        fx.case(f"{name}_{i}", params, **tensors)


def main():
    fx = Fixture("qgraph", "activations")
    for name, kind, kw, shape in float_cases():
        float_module_cases(fx, name, kind, kw, shape)
    for name, kind, kw in quantized_cases():
        m = getattr(nnq, kind)(**kw)
        x = torch.randn(1, 19, 5, 4) * 3
        for i, (s, zp) in enumerate(QPARAMS):
            xq = quantized_input(x, s, zp)
            yq = m(xq)
            params = {"kind": kind, "quantized": True, "args": kw, "str": str(m), "scale": s, "zero_point": zp,
                      "quant_error": False, "out_scale": yq.q_scale(), "out_zero_point": yq.q_zero_point()}
            fx.case(f"{name}_{i}", params, x=x, xq=xq.int_repr().contiguous(), yq=yq.int_repr().contiguous())
    sweep(fx)
    fx.save()


def sweep(fx):
    """Every input byte through both loops of PyTorch's elementwise kernels: 575 values (a
    64-wide vector body of 512 and a scalar tail of 63), shifted four times so that every byte
    reaches the tail."""
    mods = [("leaky_relu", nn.LeakyReLU(0.2), False), ("sigmoid", nn.Sigmoid(), False), ("tanh", nn.Tanh(), False),
            ("hardswish", nnq.Hardswish(0.031, 60), True), ("elu", nnq.ELU(0.027, 70, 0.5), True),
            ("leaky_relu", nnq.LeakyReLU(0.04, 20, 0.1), True)]
    kinds = {nn.LeakyReLU: {"negative_slope": 0.2}, nn.Sigmoid: {}, nn.Tanh: {},
             nnq.Hardswish: {"scale": 0.031, "zero_point": 60}, nnq.ELU: {"scale": 0.027, "zero_point": 70, "alpha": 0.5},
             nnq.LeakyReLU: {"scale": 0.04, "zero_point": 20, "negative_slope": 0.1}}
    s, zp = QPARAMS[0]
    # 40000 values: two parallel_for parts of 20000 (with 2 or more threads), each with a tail.
    assert torch.get_num_threads() >= 2
    m = nnq.Hardswish(0.031, 60)
    v = (torch.arange(40000) % 251).to(torch.uint8).reshape(1, 40000)
    xq = torch._make_per_tensor_quantized_tensor(v, s, zp)
    yq = m(xq)
    fx.case("sweep_q_hardswish_parts", {"kind": "Hardswish", "quantized": True, "args": kinds[type(m)],
            "str": str(m), "scale": s, "zero_point": zp, "quant_error": False, "out_scale": yq.q_scale(),
            "out_zero_point": yq.q_zero_point(), "sweep": True}, xq=v, yq=yq.int_repr())
    for name, m, quantized in mods:
        for shift in range(0, 256, 64):
            v = ((torch.arange(575) + shift) % 256).to(torch.uint8).reshape(1, 575)
            xq = torch._make_per_tensor_quantized_tensor(v, s, zp)
            yq = m(xq)
            params = {"kind": type(m).__name__, "quantized": quantized, "args": kinds[type(m)], "str": str(m),
                      "scale": s, "zero_point": zp, "quant_error": False, "out_scale": yq.q_scale(),
                      "out_zero_point": yq.q_zero_point(), "sweep": True}
            fx.case(f"sweep_{'q' if quantized else 'f'}_{name}_{shift}", params, xq=v,
                    yq=yq.int_repr())


def sweep_cases(fx, prefix, m, args, qparams):
    """`m` on every input byte through both loops of cpu_kernel_vec, for each (scale, zero_point):
    575 values (a vector body of 512 and a scalar tail of 63), shifted so that every byte reaches
    the tail. Cases prefix_<k>_<shift>."""
    base = {"kind": type(m).__name__, "quantized": False, "args": args, "str": str(m)}
    for k, (s, zp) in enumerate(qparams):
        for shift in range(0, 256, 64):
            v = ((torch.arange(575) + shift) % 256).to(torch.uint8).reshape(1, 575)
            yq = m(torch._make_per_tensor_quantized_tensor(v, s, zp))
            fx.case(f"{prefix}_{k}_{shift}", {**base, "scale": s, "zero_point": zp, "quant_error": False,
                                              "out_scale": yq.q_scale(), "out_zero_point": yq.q_zero_point(),
                                              "sweep": True}, xq=v, yq=yq.int_repr())


def float_exact_case(fx, name, m, args, x):
    """`m` on the float values `x` (an odd count, so both loops run), compared bit for bit."""
    assert x.numel() % 2 == 1
    fx.case(name, {"kind": type(m).__name__, "quantized": False, "args": args, "str": str(m), "float_exact": True},
            x=x, y=m(x.clone()))


def added_fixture():
    """The activations the mapping audit added: nn.Hardsigmoid (ATen's hardsigmoid_kernel,
    qhardsigmoid_kernel) and nn.Threshold (threshold_kernel, qthreshold_kernel)."""
    torch.manual_seed(1)
    fx = Fixture("qgraph", "activations_added")
    float_module_cases(fx, "hardsigmoid", "Hardsigmoid", {}, (1, 19, 5, 4))
    float_module_cases(fx, "hardsigmoid_inplace", "Hardsigmoid", {"inplace": True}, (2, 7, 3, 5))
    m = nn.Hardsigmoid()
    base = {"kind": "Hardsigmoid", "quantized": False, "args": {}, "str": str(m)}
    # Float, bit for bit: dense around the kinks at -3 and 3, neighbours of the kinks, signed
    # zeros, infinities, NaN, huge and subnormal values; an odd length, so both loops run.
    kinks = torch.tensor([-3.0, 3.0, -6.0, 6.0, 0.0, 1.5, -1.5])
    specials = torch.cat([kinks, torch.nextafter(kinks, torch.full_like(kinks, 10.0)),
                          torch.nextafter(kinks, torch.full_like(kinks, -10.0)),
                          torch.tensor([-0.0, float("inf"), float("-inf"), float("nan"), 3e38, -3e38, 1e-40, -1e-40])])
    x = torch.cat([specials, torch.linspace(-4, 4, 4002), torch.randn(2000) * 4]).float()
    float_exact_case(fx, "float_sweep", m, {}, x)
    # Input parameters including two (the last) where the vector body's FMA dequantization and
    # the scalar loop's plain one give a different output for one byte.
    qparams = [(0.05, 100), (0.0213, 7), (0.0471, 128), (0.1, 0), (0.013, 255), (0.0237, 200),
               (0.026592541486024857, 78), (0.05246805027127266, 159)]
    sweep_cases(fx, "sweep", m, {}, qparams)
    # Short lengths (all scalar loop), and lengths just past the 64-element vector body.
    gen = torch.Generator().manual_seed(5)
    s, zp = qparams[2]
    for n in (1, 7, 63, 64, 65, 127, 129, 200):
        v = torch.randint(0, 256, (1, n), generator=gen).to(torch.uint8)
        yq = m(torch._make_per_tensor_quantized_tensor(v, s, zp))
        fx.case(f"len_{n}", {**base, "scale": s, "zero_point": zp, "quant_error": False,
                             "out_scale": yq.q_scale(), "out_zero_point": yq.q_zero_point(), "sweep": True},
                xq=v, yq=yq.int_repr())
    # Two parallel_for parts of 20000 (with 2 or more threads), each with its own tail of 32,
    # holding a byte the tail rounds differently: the result differs from one thread's.
    threads = torch.get_num_threads()
    assert threads >= 2
    s, zp = qparams[6]
    for offset in range(251):
        v = ((torch.arange(40000) + offset) % 251).to(torch.uint8).reshape(1, 40000)
        yq = m(torch._make_per_tensor_quantized_tensor(v, s, zp))
        torch.set_num_threads(1)
        one = m(torch._make_per_tensor_quantized_tensor(v, s, zp))
        torch.set_num_threads(threads)
        if not torch.equal(yq.int_repr(), one.int_repr()):
            break
    else:
        raise AssertionError("no offset puts a differing byte in a tail")
    fx.case("parts", {**base, "scale": s, "zero_point": zp, "quant_error": False, "out_scale": yq.q_scale(),
                      "out_zero_point": yq.q_zero_point(), "sweep": True}, xq=v, yq=yq.int_repr())
    # qint8: output zero point -128; a length of 512, all in the vector body.
    for k, (s, zp) in enumerate([(0.05, 0), (0.0213, -20), (0.0471, 100)]):
        v = torch.arange(-128, 128).to(torch.int8).repeat(2).reshape(1, 512)
        yq = m(torch._make_per_tensor_quantized_tensor(v, s, zp))
        fx.case(f"qint8_{k}", {**base, "scale": s, "zero_point": zp, "out_scale": yq.q_scale(),
                               "out_zero_point": yq.q_zero_point(), "qint8": True}, xq=v, yq=yq.int_repr())
    threshold_cases(fx)
    fx.save()


def threshold_cases(fx):
    """nn.Threshold: values at or below `threshold` become `value`; input parameters kept."""
    for name, kw in [("threshold", {"threshold": 0.1, "value": 20.0}),
                     ("threshold_neg", {"threshold": -0.5, "value": 0.25})]:
        float_module_cases(fx, name, "Threshold", kw, (1, 19, 5, 4))
    # A threshold equal to the lower of the two dequantizations of a byte where FMA and plain
    # differ by one ulp: one loop keeps that byte, the other replaces it.
    s, zp = 0.026592541486024857, 78
    q = torch.arange(256)
    plain = torch.tensor(s, dtype=torch.float32) * (q - zp).float()
    fma = (torch.tensor(s, dtype=torch.float64) * q + float(torch.tensor(s, dtype=torch.float32) * -zp)).float()
    byte = int(torch.nonzero(fma != plain)[0])
    edge = float(torch.minimum(fma[byte], plain[byte]))
    for k, (threshold, value) in enumerate([(0.1, 20.0), (-0.5, 0.25), (edge, -1.0)]):
        m = nn.Threshold(threshold, value)
        args = {"threshold": threshold, "value": value}
        sweep_cases(fx, f"threshold_sweep{k}", m, args, [(0.05, 100), (s, zp)])
        x = torch.cat([torch.tensor([threshold, float("nan"), float("inf"), float("-inf"), -0.0]),
                       torch.nextafter(torch.tensor([threshold] * 2), torch.tensor([-1e9, 1e9])),
                       torch.randn(1000)]).float()
        float_exact_case(fx, f"threshold_float{k}", m, args, x)


if __name__ == "__main__":
    main()
    added_fixture()
