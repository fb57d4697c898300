"""Golden fixtures of dynamic quantized linear (FBGEMM): crates/qkernels/tests/fixtures/dynamic_linear.

Cases:
* qparams_*: torch._choose_qparams_per_tensor(tensor([min, max]), reduce_range), which is
  quant_utils::ChooseQuantizationParams(min, max, 0, 255, false, false, reduce_range), the call
  the dynamic linear makes on FindMinMax's result. Fields: range (min, max), scale (f64), zp.
* act_*: the activations quantized by quantized::linear_dynamic, read back through an identity
  weight (scale 1): q = round(out / f32(scale)) + zp. Fields: x, q, scale, zp.
* lin_*: quantized::linear_dynamic / linear_relu_dynamic (reduce_range=True, as the nnqd modules
  pass it) with int8 weights per tensor or per channel. Fields: x, w (i8), w_scale, w_zp, bias?, out.
* f16_*: quantized::linear_dynamic_fp16 / linear_relu_dynamic_fp16. Fields: x, w (f32), bias?, out.

Every output is checked to be identical under the "x86" engine.
"""

import torch

from fixtures import Fixture

torch.backends.quantized.engine = "fbgemm"
torch.set_num_threads(1)
g = torch.Generator().manual_seed(20261205)
fx = Fixture("qkernels", "dynamic_linear")


def both_engines(fn):
    torch.backends.quantized.engine = "fbgemm"
    a = fn()
    torch.backends.quantized.engine = "x86"
    b = fn()
    torch.backends.quantized.engine = "fbgemm"
    assert torch.equal(a.view(torch.int32), b.view(torch.int32)), "x86 and fbgemm engines differ"
    return a


# --- qparams ---
RANGES = [
    (0.0, 0.0), (-1.0, 1.0), (-2.5, -0.5), (0.5, 3.0), (-1e-6, 2e-6), (0.0, 1e-7), (-3e-7, 0.0),
    (-1e-5, 1e-3), (-1000.0, 5.0), (-3.0e4, 6.0e4), (-1e30, 1e30), (-0.1234567, 7.654321),
    (1e-39, 1e-38), (-7.0, 0.0), (0.0, 255.0), (-128.0, 127.0),
]
for i, (lo, hi) in enumerate(RANGES):
    for rr in (False, True):
        t = torch.tensor([lo, hi], dtype=torch.float32)
        scale, zp = torch._choose_qparams_per_tensor(t, rr)
        fx.case(f"qparams_{i}_{int(rr)}", {"reduce_range": rr}, range=t,
                scale=torch.tensor([scale], dtype=torch.float64), zp=torch.tensor([zp], dtype=torch.int32))


# --- quantized activations, through an identity weight ---
def act_case(name, x, rr):
    k = x.shape[-1]
    qw = torch.quantize_per_tensor(torch.eye(k), 1.0, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, None)
    out = both_engines(lambda: torch.ops.quantized.linear_dynamic(x, packed, rr))
    scale, zp = torch._choose_qparams_per_tensor(x, rr)
    s32 = torch.tensor(scale, dtype=torch.float32).double()
    q = torch.round(out.double() / s32).to(torch.int32) + zp
    assert q.min() >= 0 and q.max() <= 255
    fx.case(name, {"reduce_range": rr}, x=x, q=q.to(torch.uint8),
            scale=torch.tensor([scale], dtype=torch.float64), zp=torch.tensor([zp], dtype=torch.int32))


for rr in (False, True):
    act_case(f"act_rand_{int(rr)}", torch.randn(5, 37, generator=g) * 3, rr)
    act_case(f"act_pos_{int(rr)}", torch.rand(3, 19, generator=g) * 10, rr)
    act_case(f"act_neg_{int(rr)}", -torch.rand(2, 40, generator=g), rr)
    act_case(f"act_zero_{int(rr)}", torch.zeros(2, 9), rr)
    act_case(f"act_const_{int(rr)}", torch.full((3, 11), 0.75), rr)
    # Values on rounding ties of the range [-1, 3] (scale 4/255 or 4/127).
    s = 4.0 / (127 if rr else 255)
    ties = (torch.arange(-30, 70, dtype=torch.float64) * s + s / 2).float()
    ties = torch.cat([ties, torch.tensor([-1.0, 3.0])]).reshape(2, 51)
    act_case(f"act_ties_{int(rr)}", ties, rr)
    act_case(f"act_tiny_{int(rr)}", torch.randn(4, 16, generator=g) * 1e-6, rr)


# --- int8 linear ---
def weight_q(w, per_channel):
    if per_channel:
        obs = torch.ao.quantization.PerChannelMinMaxObserver(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        obs(w)
        s, z = obs.calculate_qparams()
        return torch.quantize_per_channel(w, s.double(), z.long(), 0, torch.qint8), s.double(), z.int()
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    obs(w)
    s, z = obs.calculate_qparams()
    return torch.quantize_per_tensor(w, float(s), int(z), torch.qint8), s.double(), z.int()


SHAPES = [(1, 1, 1), (3, 7, 33), (50, 33, 7), (1, 257, 257), (3, 257, 1), (50, 7, 257), (1, 33, 33), (3, 1, 7)]
for (m, k, n) in SHAPES:
    for per_channel in (False, True):
        for relu in (False, True):
            for has_bias in (True, False):
                if (relu or not has_bias) and (m, k, n) in [(1, 257, 257), (50, 7, 257)]:
                    continue
                x = torch.randn(m, k, generator=g) * 2 + 0.3
                w = torch.randn(n, k, generator=g) * 0.2
                bias = torch.randn(n, generator=g) if has_bias else None
                qw, s, z = weight_q(w, per_channel)
                packed = torch.ops.quantized.linear_prepack(qw, bias)
                op = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
                out = both_engines(lambda: op(x, packed, True))
                name = f"lin_{m}x{k}x{n}_{'pc' if per_channel else 'pt'}{'_relu' if relu else ''}{'' if has_bias else '_nobias'}"
                t = dict(x=x, w=qw.int_repr(), w_scale=s.reshape(-1), w_zp=z.reshape(-1), out=out)
                if bias is not None:
                    t["bias"] = bias
                fx.case(name, {"m": m, "k": k, "n": n, "relu": relu, "per_channel": per_channel}, **t)

# --- fp16 linear ---
F16_SHAPES = [(1, 1, 1), (3, 7, 33), (50, 33, 7), (1, 257, 33), (3, 1024, 9), (2, 1100, 17), (1, 33, 257)]
for (m, k, n) in F16_SHAPES:
    for relu in (False, True):
        for has_bias in (True, False):
            if (relu or not has_bias) and k * n > 5000:
                continue
            x = torch.randn(m, k, generator=g)
            w = torch.randn(n, k, generator=g) * 0.3
            if (m, k, n) == (3, 7, 33):
                w[0, 0], w[1, 1], w[2, 2] = 1e5, -7e4, 65519.0  # saturated by HandleWeightsSaturation
            bias = torch.randn(n, generator=g) if has_bias else None
            packed = torch.ops.quantized.linear_prepack_fp16(w, bias)
            op = torch.ops.quantized.linear_relu_dynamic_fp16 if relu else torch.ops.quantized.linear_dynamic_fp16
            out = both_engines(lambda: op(x, packed))
            name = f"f16_{m}x{k}x{n}{'_relu' if relu else ''}{'' if has_bias else '_nobias'}"
            t = dict(x=x, w=w, out=out)
            if bias is not None:
                t["bias"] = bias
            fx.case(name, {"m": m, "k": k, "n": n, "relu": relu}, **t)

fx.save()

# --- qgraph module goldens: torch.ao.quantization.quantize_dynamic on a small Sequential ---
import torch.ao.nn.intrinsic as nni  # noqa: E402
from torch.ao.quantization import qconfig as qc  # noqa: E402

mx = Fixture("qgraph", "dynamic_linear")


def small_model():
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(16, 8, generator=g) * 0.4)
        m[0].bias.copy_(torch.randn(16, generator=g) * 0.1)
        m[2].weight.copy_(torch.randn(5, 16, generator=g) * 0.3)
    return m.eval()


x3 = torch.randn(2, 3, 8, generator=g) * 1.5
for variant in ("per_tensor", "per_channel", "float16", "fused_per_tensor", "fused_float16"):
    model = small_model()
    weights = dict(w0=model[0].weight.detach(), b0=model[0].bias.detach(), w2=model[2].weight.detach())
    fused = variant.startswith("fused_")
    if fused:
        model = torch.ao.quantization.fuse_modules(model, [["0", "1"]])
    kind = variant.removeprefix("fused_")
    qconfig = {"per_tensor": qc.default_dynamic_qconfig, "per_channel": qc.per_channel_dynamic_qconfig,
               "float16": qc.float16_dynamic_qconfig}[kind]
    spec = {torch.nn.Linear: qconfig, nni.LinearReLU: qconfig}
    dtype = torch.float16 if kind == "float16" else torch.qint8
    qmodel = torch.ao.quantization.quantize_dynamic(model, spec, dtype=dtype)
    out = both_engines(lambda: qmodel(x3))
    mx.case(variant, {"fused": fused, "kind": kind, "repr": str(qmodel)}, x=x3, out=out, **weights)

mx.save()
