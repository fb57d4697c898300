"""Golden fixtures for qcore, produced with PyTorch (x86 build, fbgemm engine).

Run with the interpreter that ../shared/tools/torch-env.sh sets up:

    ~/.torch-ref/bin/python tools/golden/gen_qcore.py

Writes crates/qcore/tests/fixtures/*.safetensors in the format of tools/golden/fixtures.py.
Everything is deterministic.
"""

import math
import warnings

import torch
from fixtures import Fixture
from torch.ao.quantization.utils import calculate_qmin_qmax

warnings.filterwarnings("ignore")
torch.backends.quantized.engine = "fbgemm"
torch.manual_seed(0)
DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8, "qint32": torch.qint32}
RANGES = {"quint8": (0, 255), "qint8": (-128, 127), "qint32": (-(2**31), 2**31 - 1)}


def special_values():
    """Ties, signed zeros, subnormals, values far out of range, infinities, NaN."""
    ties = [k + 0.5 for k in range(-260, 260)]
    edges = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-38, 1e-10, 127.49999, 127.5, 127.50001,
             255.5, -128.5, 1e3, -1e3, 1e10, -1e10, 3e38, -3e38, 2**31, -(2**31), 2**24 + 1,
             math.inf, -math.inf, math.nan]
    return torch.tensor(ties + edges, dtype=torch.float32)


def gen_quantize():
    fx = Fixture("qcore", "quantize")
    specials = special_values()
    scales = [1.0, 0.25, 2.0, 0.1, 0.00214854861, 1e-6, 1e-30, 1e5, 3e38, 0.3333333333333333]
    for dt, (lo, hi) in RANGES.items():
        zps = sorted({lo, lo + 1, -1 if lo < 0 else 1, 0 if lo <= 0 else lo, 3, 127, 128, hi - 1, hi, 77}
                     & set(range(max(lo, -200), min(hi, 300) + 1)) | {lo, hi})
        for si, scale in enumerate(scales):
            for zp in zps:
                # Specials scaled so that ties stay exact for power-of-two scales, plus random data
                # of a magnitude that covers the whole quantized range and beyond.
                rnd = torch.randn(37) * scale * (hi - lo if dt != "qint32" else 1000) * 0.4
                x = torch.cat([specials * scale if scale in (1.0, 0.25, 2.0) else specials, rnd]).float()
                q = torch.quantize_per_tensor(x, scale, zp, DTYPES[dt])
                fx.case(f"pt_{dt}_s{si}_zp{zp}", {"kind": "per_tensor", "dtype": dt, "scale": scale,
                        "zero_point": zp}, x=x, q=q.int_repr(), dq=q.dequantize())
    # Every length from 1 to 70: vector bodies and every tail length take the same rule.
    for n in range(1, 71):
        x = torch.randn(n) * 3
        q = torch.quantize_per_tensor(x, 0.05, 131, torch.quint8)
        fx.case(f"pt_len{n}", {"kind": "per_tensor", "dtype": "quint8", "scale": 0.05, "zero_point": 131},
                x=x, q=q.int_repr(), dq=q.dequantize())
    # Per channel along each axis of a 4-D tensor.
    shape = (2, 3, 4, 5)
    for dt, (lo, hi) in RANGES.items():
        for axis in range(4):
            n = shape[axis]
            x = torch.randn(shape) * 4
            flat = x.reshape(-1)
            flat[: len(special_values())] = special_values()[: flat.numel()]
            scales = torch.tensor([0.5, 0.013, 1e-4, 0.25, 2.0][:n], dtype=torch.float64)
            zps = torch.tensor([lo, 0 if lo <= 0 else 1, 3, hi, -1 if lo < 0 else 7][:n], dtype=torch.int64)
            q = torch.quantize_per_channel(x, scales, zps, axis, DTYPES[dt])
            fx.case(f"pc_{dt}_axis{axis}", {"kind": "per_channel", "dtype": dt, "axis": axis,
                    "scales": scales.tolist(), "zero_points": zps.tolist()},
                    x=x, q=q.int_repr(), dq=q.dequantize())
    # Per channel with float scales and float zero points (embedding weights), every dtype.
    for dt in RANGES:
        for axis in range(2):
            x = torch.randn(5, 6) * 4
            x.reshape(-1)[:6] = torch.tensor([math.inf, -math.inf, math.nan, 0.0, 1e30, -1e30])
            n = x.shape[axis]
            scales = torch.tensor([0.1, 0.02, 0.5, 1e-3, 0.25, 0.0][:n], dtype=torch.float32)
            zps = torch.tensor([10.0, 3.5, -2.25, 0.0, 100.75, 7.5][:n], dtype=torch.float32)
            q = torch.quantize_per_channel(x, scales, zps, axis, DTYPES[dt])
            fields = dict(x=x, scales=scales, zero_points=zps, q=q.int_repr())
            if dt != "qint32":  # PyTorch 2.15 dies with SIGILL dequantizing qint32 float-qparams tensors
                fields["dq"] = q.dequantize()
            fx.case(f"pcf_{dt}_axis{axis}", {"kind": "per_channel_float", "dtype": dt, "axis": axis}, **fields)
    # Values beyond i32 after scaling: PyTorch truncates lrintf's i64 to i32 before clamping.
    x = torch.tensor([1e8, 2.1e8, 2.2e8, 4.3e8, 1e9, 9.2e17, 1e18, -1e8, -2.2e8, -1e9, -1e18]).reshape(1, -1)
    n = x.shape[1]
    for dt in RANGES:
        q = torch.quantize_per_channel(x, torch.full((n,), 0.1), torch.zeros(n), 1, DTYPES[dt])
        fx.case(f"pcf_{dt}_wrap", {"kind": "per_channel_float", "dtype": dt, "axis": 1},
                x=x, scales=torch.full((n,), 0.1), zero_points=torch.zeros(n), q=q.int_repr())
    fx.save()


def gen_dequantize():
    """Dequantize of integer data built directly, including qint32 extremes."""
    fx = Fixture("qcore", "dequantize")
    for dt, (lo, hi) in RANGES.items():
        storage = {"quint8": torch.uint8, "qint8": torch.int8, "qint32": torch.int32}[dt]
        values = sorted({lo, lo + 1, -1 if lo < 0 else 1, 0 if lo <= 0 else lo, hi - 1, hi, 12345 % (hi + 1)})
        ints = torch.tensor(values, dtype=torch.int64).clamp(lo, hi).to(storage)
        for scale, zp in [(0.1, 0), (1e-5, 3), (3.7, -5 if lo < 0 else 5), (1e-30, hi), (1e30, lo)]:
            q = torch._make_per_tensor_quantized_tensor(ints, scale, zp)
            fx.case(f"dq_{dt}_s{scale}_zp{zp}", {"kind": "per_tensor", "dtype": dt, "scale": scale,
                    "zero_point": zp}, q=ints, dq=q.dequantize())
    fx.save()


def gen_binary():
    """quantized::add / add_relu / mul / mul_relu, and add_scalar / mul_scalar."""
    fx = Fixture("qcore", "binary")
    # 256 elements: a multiple of every vector width, so every element takes the vector body.
    for dt in ["quint8", "qint8"]:
        lo, hi = RANGES[dt]
        params = [((0.05, lo + 10), (0.02, hi - 20), (0.07, (lo + hi) // 2)),
                  ((0.1, 0 if lo == 0 else -3), (0.1, 0 if lo == 0 else -3), (0.2, 0 if lo == 0 else 5)),
                  ((1e-3, 7), (0.3, 100), (0.01, 64))]
        for pi, ((sa, za), (sb, zb), (so, zo)) in enumerate(params):
            for n, suffix in [(256, ""), (256 + 13, "_tail")]:
                a = torch.randint(lo, hi + 1, (n,), dtype=torch.int64)
                b = torch.randint(lo, hi + 1, (n,), dtype=torch.int64)
                storage = torch.uint8 if dt == "quint8" else torch.int8
                qa = torch._make_per_tensor_quantized_tensor(a.to(storage), sa, za)
                qb = torch._make_per_tensor_quantized_tensor(b.to(storage), sb, zb)
                for op in ["add", "add_relu", "mul", "mul_relu"]:
                    out = getattr(torch.ops.quantized, op)(qa, qb, so, zo)
                    fx.case(f"{op}_{dt}_p{pi}{suffix}", {"op": op, "dtype": dt, "a": [sa, za], "b": [sb, zb],
                            "out": [so, zo]}, a=a.to(storage), b=b.to(storage), q=out.int_repr())
        for si, (s, z) in enumerate([(0.1, (lo + hi) // 2), (0.05, lo + 3), (0.05, hi - 3), (1.0, 0 if lo <= 0 else lo)]):
            a = torch.arange(lo, hi + 1, dtype=torch.int64).to(torch.uint8 if dt == "quint8" else torch.int8)
            qa = torch._make_per_tensor_quantized_tensor(a, s, z)
            for ci, c in enumerate([0.0, 0.3, -0.3, 5.0, -5.0, 20.0, -20.0, 1e3, 0.049999, 0.05, 0.15, 2.5]):
                for op in ["add_scalar", "add_scalar_relu", "mul_scalar", "mul_scalar_relu"]:
                    if op.startswith("mul") and ci > 6:
                        continue
                    out = getattr(torch.ops.quantized, op)(qa, c)
                    fx.case(f"{op}_{dt}_s{si}_c{ci}", {"op": op, "dtype": dt, "a": [s, z], "c": c,
                            "out": [out.q_scale(), out.q_zero_point()]}, a=a, q=out.int_repr())
    fx.save()


def gen_fake_quant():
    fx = Fixture("qcore", "fake_quant")
    x = torch.cat([special_values() * 0.25, torch.randn(200) * 40]).float()
    for (scale, zp, qmin, qmax) in [(0.25, 4, 0, 255), (0.1, 0, -128, 127), (0.25, 3, 0, 127),
                                    (0.05, -7, -64, 63), (1e-3, 0, -(2**31), 2**31 - 1), (0.5, 1, 0, 15)]:
        xg = x.clone().requires_grad_(True)
        y = torch.fake_quantize_per_tensor_affine(xg, scale, zp, qmin, qmax)
        y.sum().backward()
        fx.case(f"fq_pt_s{scale}_zp{zp}_{qmin}_{qmax}", {"kind": "per_tensor", "scale": scale, "zero_point": zp,
                "quant_min": qmin, "quant_max": qmax}, x=x, y=y.detach(), mask=xg.grad)
    shape = (3, 4, 70)
    xc = torch.randn(shape) * 10
    xc.reshape(-1)[: len(special_values())] = special_values() * 0.25
    for axis in range(3):
        n = shape[axis]
        scales = (torch.rand(n) * 0.2 + 0.05).float()
        scales[0] = 0.25
        zps = torch.randint(-5, 6, (n,), dtype=torch.int32)
        for qmin, qmax in [(-128, 127), (0, 255)]:
            zps_c = zps.clamp(qmin, qmax)
            xg = xc.clone().requires_grad_(True)
            y = torch.fake_quantize_per_channel_affine(xg, scales, zps_c, axis, qmin, qmax)
            y.sum().backward()
            fx.case(f"fq_pc_axis{axis}_{qmin}_{qmax}", {"kind": "per_channel", "axis": axis, "scales": scales.tolist(),
                    "zero_points": zps_c.tolist(), "quant_min": qmin, "quant_max": qmax},
                    x=xc, y=y.detach(), mask=xg.grad)
    fx.save()


def gen_linear():
    """quantized::linear(_relu) on fbgemm with 7-bit activations: tests the output requantization."""
    fx = Fixture("qcore", "linear")
    torch.manual_seed(1)
    for ci, (per_channel, w_zp, relu, bias_on, out_zp) in enumerate(
            [(False, 0, False, True, 64), (True, 0, False, True, 3), (False, 0, True, True, 100),
             (True, 0, True, False, 0), (False, 0, False, False, 255), (True, 0, False, True, 128)]):
        m, k, n = 9, 37, 21
        a_scale, a_zp = 0.037, 61
        a = torch.randint(0, 128, (m, k), dtype=torch.uint8)
        qa = torch._make_per_tensor_quantized_tensor(a, a_scale, a_zp)
        wf = torch.randn(n, k) * 0.3
        if per_channel:
            w_scales = (wf.abs().amax(1) / 127.5).double()
            qw = torch.quantize_per_channel(wf, w_scales, torch.zeros(n, dtype=torch.int64), 0, torch.qint8)
            w_scale_list = w_scales.tolist()
        else:
            w_scale = float(wf.abs().max() / 127.5)
            qw = torch.quantize_per_tensor(wf, w_scale, w_zp, torch.qint8)
            w_scale_list = [w_scale]
        bias = (torch.randn(n) * 2.0) if bias_on else None
        packed = torch.ops.quantized.linear_prepack(qw, bias)
        out_scale = 0.11
        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        y = op(qa, packed, out_scale, out_zp)
        tensors = dict(a=a, w=qw.int_repr(), q=y.int_repr())
        if bias is not None:
            tensors["bias"] = bias
        fx.case(f"linear_{ci}", {"per_channel": per_channel, "relu": relu, "a": [a_scale, a_zp], "w_scales": w_scale_list,
                "w_zero_point": w_zp, "out": [out_scale, out_zp]}, **tensors)
    fx.save()


def gen_qmin_qmax():
    fx = Fixture("qcore", "qmin_qmax")
    rows = []
    for dt in ["quint8", "qint8", "qint32"]:
        for reduce in [False, True]:
            for lo, hi in [(None, None), (0, 255), (0, 127), (-128, 127), (-127, 127), (0, 15), (-8, 7), (-7, 7), (-3, 5)]:
                custom = lo is not None
                if custom and not (RANGES[dt][0] <= lo and hi <= RANGES[dt][1]):
                    continue
                got = calculate_qmin_qmax(lo, hi, custom, DTYPES[dt], reduce)
                rows.append({"dtype": dt, "reduce_range": reduce, "quant_min": lo, "quant_max": hi, "expected": list(got)})
    fx.case("grid", {"rows": rows}, dummy=torch.zeros(1))
    fx.save()


if __name__ == "__main__":
    gen_quantize()
    gen_dequantize()
    gen_binary()
    gen_fake_quant()
    gen_linear()
    gen_qmin_qmax()
