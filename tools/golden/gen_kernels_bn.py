"""Golden fixtures for qkernels' quantized batch norm (`quantized::batch_norm1d/2d/3d` and their
`_relu` variants), produced with PyTorch (x86 build, fbgemm engine).

    ~/.torch-ref/bin/python tools/golden/gen_kernels_bn.py

Writes crates/qkernels/tests/fixtures/batch_norm.safetensors in tools/golden/fixtures.py's
format. Per case: `x` (the quint8 input's int_repr), `q` (the output's), both channels-last
(`N, spatial..., C`, the layout qkernels takes), and `weight`, `bias`, `mean`, `var` (f32);
parameters `op`, `relu`, `shape` (logical NCHW), `eps`, `in` / `out` ([scale, zero point]).

Besides random shapes and parameters (channel counts below, at and above multiples of 8 and 16),
two kinds of crafted cases: `tie_*` channels whose `alpha * (q - zp) + beta` rounds differently
with and without a fused multiply-add (placed both in the vector channels and in the last
`C mod 8`, which PyTorch computes with scalar code), and `huge_*` cases whose scaled values pass
2^31 (where PyTorch's vector and scalar code disagree). Deterministic.
"""

import random
import warnings

import numpy as np
import torch
from fixtures import Fixture

warnings.filterwarnings("ignore")
torch.backends.quantized.engine = "fbgemm"
torch.manual_seed(0)
RNG = random.Random(0)
OPS = {1: "batch_norm1d", 2: "batch_norm2d", 3: "batch_norm3d"}


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """`N, C, spatial...` to `N, spatial..., C` (rank 2 unchanged)."""
    if t.dim() <= 2:
        return t
    return t.permute(0, *range(2, t.dim()), 1)


def run(fx, name, shape, x_int, in_q, out_q, eps, weight, bias, mean, var, relu):
    spatial = len(shape) - 2
    op = OPS[max(spatial, 1)]
    qx = torch._make_per_tensor_quantized_tensor(x_int.to(torch.uint8), in_q[0], in_q[1])
    fn = getattr(torch.ops.quantized, op + ("_relu" if relu else ""))
    qy = fn(qx, weight, bias, mean, var, eps, out_q[0], out_q[1])
    assert qy.q_scale() == out_q[0] and qy.q_zero_point() == out_q[1]
    fx.case(
        name,
        {"op": op, "relu": relu, "shape": list(shape), "eps": eps, "in": list(in_q), "out": list(out_q)},
        x=channels_last(x_int.to(torch.uint8)),
        q=channels_last(qy.int_repr()),
        weight=weight,
        bias=bias,
        mean=mean,
        var=var,
    )


def random_case(fx, name, shape, relu):
    c = shape[1]
    in_q = (RNG.uniform(0.002, 0.2), RNG.randint(0, 255))
    out_q = (RNG.uniform(0.002, 0.2), RNG.randint(0, 255))
    eps = RNG.choice([1e-5, 1e-3, 0.1, 0.0])
    weight = torch.randn(c) * 2
    bias = torch.randn(c)
    mean = torch.randn(c)
    var = torch.rand(c) * 2 + 0.01
    x = torch.randint(0, 256, shape)
    run(fx, name, shape, x, in_q, out_q, eps, weight, bias, mean, var, relu)


def tie_channels(count, zp_in):
    """(w, b) in f32 such that, with alpha = w and beta = b, `w * d + b` rounds to a different
    integer with and without FMA for some d = q - zp_in."""
    found = []
    rng = np.random.default_rng(1)
    d = np.arange(-zp_in, 256 - zp_in, dtype=np.float64)
    while len(found) < count:
        w = np.float32(rng.uniform(-3, 3))
        b = np.float32(rng.integers(-200, 200) + 0.5)
        prod = (np.float64(w) * d).astype(np.float32)
        nofma = (prod + b).astype(np.float32)
        fma = (np.float64(w) * d + np.float64(b)).astype(np.float32)
        if np.any(np.rint(nofma) != np.rint(fma)):
            found.append((float(w), float(b)))
    return found


def tie_case(fx, name, c, relu, zp_in):
    """alpha = weight and beta = bias exactly: scales 1, eps 0, var 1, mean 0. Input: every
    quantized value in every channel."""
    ties = tie_channels(c, zp_in)
    weight = torch.tensor([w for w, _ in ties], dtype=torch.float32)
    bias = torch.tensor([b for _, b in ties], dtype=torch.float32)
    mean = torch.zeros(c)
    var = torch.ones(c)
    x = torch.arange(256).repeat(c, 1).T.reshape(1, 256, c).permute(0, 2, 1).contiguous()
    run(fx, name, [1, c, 256], x, (1.0, zp_in), (1.0, 128), 0.0, weight, bias, mean, var, relu)


def huge_case(fx, name, c, out_zp):
    """alpha about 2e7: most outputs scale beyond 2^31 before the zero point is added."""
    weight = torch.linspace(-10, 10, c)
    bias = torch.linspace(-1, 1, c)
    mean = torch.zeros(c)
    var = torch.ones(c)
    x = torch.randint(0, 256, [2, c, 5])
    run(fx, name, [2, c, 5], x, (1.0, 100), (5e-7, out_zp), 1e-5, weight, bias, mean, var, False)


def main():
    fx = Fixture("qkernels", "batch_norm")
    shapes = [
        [2, 3],
        [3, 17],
        [2, 5, 7],
        [1, 24, 9],
        [2, 3, 5, 4],
        [1, 8, 3, 3],
        [2, 13, 4, 3],
        [1, 16, 2, 5],
        [1, 31, 3, 2],
        [1, 37, 2, 2],
        [2, 64, 3, 3],
        [1, 70, 2, 3],
        [1, 5, 2, 3, 4],
        [2, 19, 2, 2, 3],
        [1, 40, 3, 2, 2],
    ]
    for i, shape in enumerate(shapes):
        for relu in (False, True):
            tag = "x".join(map(str, shape))
            random_case(fx, f"rand_{i}_{tag}_{'relu' if relu else 'plain'}", shape, relu)
    for c in (7, 15, 29):
        for relu in (False, True):
            tie_case(fx, f"tie_c{c}_{'relu' if relu else 'plain'}", c, relu, 0 if c != 15 else 200)
    for c, zp in ((13, 0), (13, 200), (35, 130)):
        huge_case(fx, f"huge_c{c}_zp{zp}", c, zp)
    fx.save()


if __name__ == "__main__":
    main()
