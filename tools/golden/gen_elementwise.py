"""Golden fixtures for qkernels' quantized elementwise ops, pooling and resampling, produced with
PyTorch (x86 build, fbgemm engine).

    ~/.torch-ref/bin/python tools/golden/gen_elementwise.py

Writes crates/qkernels/tests/fixtures/elementwise.safetensors (binary ops, cat, activations) and
elementwise_pool.safetensors (pooling, upsampling). The format is tools/golden/fixtures.py's.
Quantized tensors are stored as their int_repr; 4-D pooling tensors in NHWC order
(PyTorch's channels_last memory, the layout qkernels takes). Deterministic.
"""

import warnings

import torch
import torch.nn.functional as F
from fixtures import Fixture

warnings.filterwarnings("ignore")
torch.backends.quantized.engine = "fbgemm"
torch.manual_seed(0)
DT = {"quint8": torch.quint8, "qint8": torch.qint8}
RANGE = {"quint8": (0, 255), "qint8": (-128, 127)}


def rand_q(shape, dt, scale, zp):
    lo, hi = RANGE[dt]
    x = (torch.rand(shape) * (hi - lo) + lo - zp) * scale * 1.1
    return torch.quantize_per_tensor(x, scale, zp, DT[dt])


def all_values(dt, scale, zp, reps=1):
    """Every quantized value once (a 1-D tensor of 256), repeated `reps` times."""
    lo, hi = RANGE[dt]
    ints = torch.arange(lo, hi + 1).repeat(reps)
    return torch._make_per_tensor_quantized_tensor(ints.to(torch.uint8 if dt == "quint8" else torch.int8), scale, zp)


def gen_elementwise():
    fx = Fixture("qkernels", "elementwise")
    params = {
        "quint8": [((0.05, 128), (0.1, 3), (0.12, 64)), ((0.02, 0), (0.02, 0), (0.03, 10)),
                   ((0.3333, 200), (0.007, 17), (0.5, 250))],
        "qint8": [((0.05, 0), (0.1, 3), (0.12, -5)), ((0.02, -128), (0.02, 100), (0.03, 0)),
                  ((0.3333, 60), (0.007, -17), (0.5, 127))],
    }
    # 300 = four 64-element vectors (PyTorch's AVX-512 body) plus a 44-element scalar tail.
    for dt, sets in params.items():
        for pi, (qa, qb, qo) in enumerate(sets):
            a = rand_q((300,), dt, *qa)
            b = rand_q((300,), dt, *qb)
            for op in ["add", "add_relu", "mul", "mul_relu"]:
                q = getattr(torch.ops.quantized, op)(a, b, qo[0], qo[1])
                fx.case(f"{op}_{dt}_p{pi}", {"op": op, "dtype": dt, "a": list(qa), "b": list(qb), "out": list(qo),
                                             "a_shape": [300], "b_shape": [300]},
                        a=a.int_repr(), b=b.int_repr(), q=q.int_repr())
    # Broadcasting: b along the channel dimension and along a leading dimension.
    for dt in DT:
        for bi, (sa, sb) in enumerate([((2, 3, 4, 16), (1, 3, 1, 16)), ((2, 3, 4, 16), (4, 16)), ((2, 3, 5, 7), (2, 3, 5, 1))]):
            qa, qb, qo = (0.05, 10 if dt == "quint8" else 0), (0.04, 100 if dt == "quint8" else -3), (0.07, 20)
            a, b = rand_q(sa, dt, *qa), rand_q(sb, dt, *qb)
            for op in ["add", "mul"]:
                q = getattr(torch.ops.quantized, op)(a, b, qo[0], qo[1])
                fx.case(f"{op}_bcast{bi}_{dt}", {"op": op, "dtype": dt, "a": list(qa), "b": list(qb), "out": list(qo),
                                                  "a_shape": list(sa), "b_shape": list(sb)},
                        a=a.int_repr(), b=b.int_repr(), q=q.int_repr())
    # cat: the general path (contiguous tensors, any dim) and the channels-last dim-1 fast path.
    for dt in DT:
        zps = [3, 200, 128] if dt == "quint8" else [3, -100, 0]
        for dim in range(3):
            shapes = [[2, 3, 5], [2, 3, 5], [2, 3, 5]]
            for i, s in enumerate(shapes):
                s[dim] += i
            qs = [(0.05, zps[0]), (0.013, zps[1]), (0.2, zps[2])]
            xs = [rand_q(s, dt, *q) for s, q in zip(shapes, qs)]
            for relu in [False, True]:
                op = torch.ops.quantized.cat_relu if relu else torch.ops.quantized.cat
                y = op(xs, dim=dim, scale=0.04, zero_point=zps[0])
                fx.case(f"cat_d{dim}_{dt}_r{int(relu)}", {"op": "cat", "dtype": dt, "dim": dim, "relu": relu, "nhwc": False,
                                                         "inputs": [list(q) for q in qs], "shapes": shapes,
                                                         "out": [0.04, zps[0]]},
                        **{f"x{i}": x.int_repr() for i, x in enumerate(xs)}, q=y.int_repr())
        # Channels-last, dim 1: 64 channels per input so that PyTorch's vector loop covers them.
        qs = [(0.05, zps[0]), (0.013, zps[1])]
        xs = [rand_q((1, 64, 3, 2), dt, *q).contiguous(memory_format=torch.channels_last) for q in qs]
        y = torch.ops.quantized.cat(xs, dim=1, scale=0.04, zero_point=zps[0])
        nhwc = lambda t: t.int_repr().permute(0, 2, 3, 1).contiguous()
        fx.case(f"cat_nhwc_{dt}", {"op": "cat", "dtype": dt, "dim": 3, "relu": False, "nhwc": True,
                                  "inputs": [list(q) for q in qs], "shapes": [[1, 3, 2, 64]] * 2, "out": [0.04, zps[0]]},
                **{f"x{i}": nhwc(x) for i, x in enumerate(xs)}, q=nhwc(y))
    # Unary ops on every quantized value (4 x 64: all in PyTorch's vector body).
    qps = {"quint8": [(0.05, 128), (0.1, 0), (0.0313, 200)], "qint8": [(0.05, 0), (0.1, -128), (0.0313, 77)]}
    for dt in DT:
        for pi, (s, zp) in enumerate(qps[dt]):
            x = all_values(dt, s, zp)
            out_s, out_zp = 0.04, (20 if dt == "quint8" else -10)
            ops = {
                "relu": (torch.relu(x), {}),
                "relu6": (torch.ops.quantized.relu6(x, False), {}),
                "hardtanh": (torch.ao.nn.quantized.functional.hardtanh(x, -1.5, 2.25), {"min": -1.5, "max": 2.25}),
                "hardswish": (torch.ops.quantized.hardswish(x, out_s, out_zp), {"out": [out_s, out_zp]}),
                "sigmoid": (torch.sigmoid(x), {}),
                "tanh": (torch.tanh(x), {}),
                "leaky_relu": (torch.ao.nn.quantized.functional.leaky_relu(x, 0.1, scale=out_s, zero_point=out_zp),
                               {"negative_slope": 0.1, "out": [out_s, out_zp]}),
                "elu": (torch.ao.nn.quantized.functional.elu(x, out_s, out_zp, 0.7), {"alpha": 0.7, "out": [out_s, out_zp]}),
            }
            for op, (y, extra) in ops.items():
                extra = dict(extra)
                extra.setdefault("out", [y.q_scale(), y.q_zero_point()])
                assert extra["out"] == [y.q_scale(), y.q_zero_point()], op
                fx.case(f"{op}_{dt}_p{pi}", {"op": op, "dtype": dt, "in": [s, zp], **extra},
                        x=x.int_repr(), q=y.int_repr())
    fx.save()


def nhwc(t):
    return t.int_repr().permute(0, 2, 3, 1).contiguous()


def gen_pool():
    fx = Fixture("qkernels", "elementwise_pool")
    for dt in DT:
        zp = 7 if dt == "quint8" else -3
        for ci, c in enumerate([16, 19]):
            x = rand_q((2, c, 9, 11), dt, 0.05, zp).contiguous(memory_format=torch.channels_last)
            # Each input is stored once, as its own case; the op cases name it in "input".
            inp = f"input_{dt}_c{ci}"
            fx.case(inp, {"op": "input"}, x=nhwc(x))
            base = {"dtype": dt, "in": [0.05, zp], "in_shape": [2, 9, 11, c], "input": inp}
            for k, s, p, d, ceil in [(3, 2, 1, 1, False), (2, 2, 0, 1, True), ((3, 2), (1, 2), (1, 0), (2, 1), True),
                                     (3, 3, 1, 1, True), (4, 1, 2, 1, False)]:
                y = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
                pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]
                name = f"max_pool2d_{dt}_c{ci}_k{pair(k)[0]}{pair(k)[1]}s{pair(s)[0]}{pair(s)[1]}p{pair(p)[0]}{pair(p)[1]}d{pair(d)[0]}{pair(d)[1]}{'c' if ceil else ''}"
                fx.case(name, {"op": "max_pool2d", **base, "kernel": pair(k), "stride": pair(s), "padding": pair(p),
                               "dilation": pair(d), "ceil_mode": ceil}, q=nhwc(y))
            for k, s, p, ceil, cip, div in [(3, 2, 1, False, True, None), (3, 2, 1, False, False, None),
                                            (2, 2, 0, True, True, None), ((3, 2), (2, 1), (1, 1), True, False, None),
                                            (3, 1, 1, False, True, 7), (5, 3, 2, True, True, None)]:
                y = F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
                pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]
                name = f"avg_pool2d_{dt}_c{ci}_k{pair(k)[0]}{pair(k)[1]}s{pair(s)[0]}{pair(s)[1]}p{pair(p)[0]}{pair(p)[1]}{'c' if ceil else ''}{'i' if cip else ''}{div or ''}"
                fx.case(name, {"op": "avg_pool2d", **base, "kernel": pair(k), "stride": pair(s), "padding": pair(p),
                               "ceil_mode": ceil, "count_include_pad": cip, "divisor_override": div}, q=nhwc(y))
            for osz in [(1, 1), (3, 4), (4, 5), (7, 3), (9, 11), (13, 12)]:
                y = F.adaptive_avg_pool2d(x, osz)
                fx.case(f"adaptive_avg_pool2d_{dt}_c{ci}_{osz[0]}x{osz[1]}", {"op": "adaptive_avg_pool2d", **base,
                        "output_size": list(osz)}, q=nhwc(y))
            for osz in [(18, 22), (5, 7), (20, 13), (9, 11)]:
                y = F.interpolate(x, size=osz, mode="nearest")
                fx.case(f"upsample_nearest_{dt}_c{ci}_{osz[0]}x{osz[1]}", {"op": "upsample_nearest", **base,
                        "output_size": list(osz)}, q=nhwc(y))
                for ac in [False, True]:
                    y = F.interpolate(x, size=osz, mode="bilinear", align_corners=ac)
                    fx.case(f"upsample_bilinear_{dt}_c{ci}_{osz[0]}x{osz[1]}_ac{int(ac)}",
                            {"op": "upsample_bilinear", **base, "output_size": list(osz), "align_corners": ac},
                            q=nhwc(y))
    fx.save()


if __name__ == "__main__":
    gen_elementwise()
    gen_pool()
