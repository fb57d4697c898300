"""Golden fixtures for qfake::grad, the forward and backward of the float training layers,
produced with PyTorch's functional ops and autograd.

    ~/.torch-ref/bin/python tools/golden/gen_grad.py

Writes crates/qfake/tests/fixtures/grad.safetensors. Every case is seeded; one thread; odd sizes
(channels 1, 3, 7, 16; groups 1, 2 and depthwise; stride 2; padding; dilation 2; batch 1 and 5).
Fields: inputs ("x", "w", "b", "dy", ...), outputs ("y") and gradients ("dx", "dw", "db").
"""

import torch
import torch.nn.functional as F
from fixtures import Fixture

torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"
fx = Fixture("qfake", "grad")


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def conv_case(name, dims, n, cin, cout, k, spatial, stride=1, pad=0, dil=1, groups=1, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = leaf(torch.randn([n, cin] + [spatial] * dims, generator=g))
    w = leaf(torch.randn([cout, cin // groups] + [k] * dims, generator=g) * 0.3)
    b = leaf(torch.randn(cout, generator=g)) if bias else None
    conv = [F.conv1d, F.conv2d, F.conv3d][dims - 1]
    y = conv(x, w, b, stride=stride, padding=pad, dilation=dil, groups=groups)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    params = dict(dims=dims, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias)
    extra = dict(b=b, db=b.grad) if bias else {}
    fx.case(name, params, x=x, w=w, y=y, dy=dy, dx=x.grad, dw=w.grad, **extra)


conv_case("conv2d_basic", 2, 5, 3, 7, 3, 9, pad=1, seed=1)
conv_case("conv2d_stride2", 2, 1, 7, 16, 3, 11, stride=2, pad=1, seed=2)
conv_case("conv2d_dilation2", 2, 5, 3, 3, 3, 10, pad=2, dil=2, seed=3)
conv_case("conv2d_groups2", 2, 5, 16, 16, 3, 7, pad=1, groups=2, seed=4)
conv_case("conv2d_depthwise", 2, 5, 7, 7, 3, 8, stride=2, pad=1, groups=7, seed=5)
conv_case("conv2d_1x1_nobias", 2, 5, 16, 7, 1, 6, bias=False, seed=6)
conv_case("conv2d_c1", 2, 5, 1, 3, 5, 12, stride=2, pad=2, seed=7)
conv_case("conv1d", 1, 5, 3, 7, 3, 17, stride=2, pad=1, dil=2, seed=8)
conv_case("conv3d", 3, 1, 3, 7, 3, 5, pad=1, groups=1, seed=9)
conv_case("conv2d_digits", 2, 2, 16, 32, 3, 8, pad=1, seed=10)
conv_case("conv2d_batch9", 2, 9, 16, 32, 3, 6, pad=1, bias=False, seed=11)


def linear_case(name, lead, fin, fout, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = leaf(torch.randn(lead + [fin], generator=g))
    w = leaf(torch.randn(fout, fin, generator=g) * 0.3)
    b = leaf(torch.randn(fout, generator=g)) if bias else None
    y = F.linear(x, w, b)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    extra = dict(db=b.grad) if bias else {}
    fx.case(name, dict(bias=bias), x=x, w=w, dy=dy, dx=x.grad, dw=w.grad, **extra)


linear_case("linear_2d", [5], 7, 16, seed=11)
linear_case("linear_3d_nobias", [2, 3], 16, 3, bias=False, seed=12)
linear_case("linear_batch1", [1], 64, 10, seed=13)


def bn_case(name, shape, affine=True, momentum=0.1, eps=1e-5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = leaf(torch.randn(shape, generator=g) * 2 + 0.5)
    w = leaf(torch.randn(c, generator=g)) if affine else None
    b = leaf(torch.randn(c, generator=g)) if affine else None
    rm0, rv0 = torch.randn(c, generator=g) * 0.1, torch.rand(c, generator=g) + 0.5
    rm, rv = rm0.clone(), rv0.clone()
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=eps)
    _, mean, invstd = torch.ops.aten.native_batch_norm(x.detach(), w, b, rm0.clone(), rv0.clone(), True, momentum, eps)
    dy = torch.randn(shape, generator=g)
    y.backward(dy)
    extra = dict(w=w, b=b, dw=w.grad, db=b.grad) if affine else {}
    # The frozen (eval-mode) batch norm on the same input, with the updated running statistics.
    xe = leaf(x.detach())
    we = leaf(w.detach()) if affine else None
    be = leaf(b.detach()) if affine else None
    ye = F.batch_norm(xe, rm, rv, we, be, training=False, eps=eps)
    ye.backward(dy)
    eval_extra = dict(eval_dw=we.grad, eval_db=be.grad) if affine else {}
    fx.case(name, dict(momentum=momentum, eps=eps, affine=affine), x=x, rm0=rm0, rv0=rv0, y=y, mean=mean,
            invstd=invstd, rm=rm, rv=rv, dy=dy, dx=x.grad, eval_dx=xe.grad, **extra, **eval_extra)


bn_case("bn_nc", [5, 7], seed=21)
bn_case("bn_ncl", [5, 3, 9], seed=22)
bn_case("bn_nchw", [5, 7, 6, 5], seed=23)
bn_case("bn_nchw_c16_b1", [1, 16, 4, 4], momentum=0.3, seed=24)
bn_case("bn_ncdhw_noaffine", [2, 3, 3, 4, 5], affine=False, eps=1e-3, seed=25)
bn_case("bn_digits", [2, 32, 6, 6], seed=26)

# Activations: random values plus every boundary, 100 elements (a vector body and a scalar tail).
g = torch.Generator().manual_seed(31)
edges = torch.tensor([0.0, -0.0, 3.0, -3.0, 6.0, -6.0, 1e-8, -1e-8, 2.9999998, -2.9999998, 5.9999995, 20.0, -20.0,
                      float("inf"), float("-inf")])
act_x = torch.cat([edges, torch.randn(85, generator=g) * 4])
act_dy = torch.randn(100, generator=g)
acts = {
    "relu": (F.relu, {}),
    "relu6": (F.relu6, {}),
    "hardswish": (F.hardswish, {}),
    "hardsigmoid": (F.hardsigmoid, {}),
    "leaky_relu": (lambda t: F.leaky_relu(t, 0.1), {"slope": 0.1}),
    "elu": (lambda t: F.elu(t, 0.7), {"alpha": 0.7}),
    "sigmoid": (torch.sigmoid, {}),
    "tanh": (torch.tanh, {}),
    "gelu": (F.gelu, {}),
}
for act, (fn, params) in acts.items():
    x = leaf(act_x)
    y = fn(x)
    y.backward(act_dy)
    fx.case(f"act_{act}", dict(act=act, **params), x=x, y=y, dy=act_dy, dx=x.grad)


def maxpool_case(name, shape, k, s, p, d, ceil, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if ties:
        x = torch.round(x * 2) / 2
        x.view(-1)[::7] = float("nan") if name.endswith("nan") else x.view(-1)[::7]
    x = leaf(x)
    fn = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}[len(shape)]
    y, idx = fn(x, k, s, p, d, ceil, return_indices=True)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    fx.case(name, dict(kernel=k, stride=s, padding=p, dilation=d, ceil_mode=ceil), x=x, y=y, idx=idx.to(torch.int64),
            dy=dy, dx=x.grad)


maxpool_case("maxpool2d_k3s2", [5, 3, 9, 9], 3, 2, 1, 1, False, seed=41)
maxpool_case("maxpool2d_ceil_dil", [1, 7, 10, 11], 3, 2, 1, 2, True, seed=42)
maxpool_case("maxpool2d_overlap_ties", [2, 3, 8, 8], 3, 1, 1, 1, False, seed=43, ties=True)
maxpool_case("maxpool2d_nan", [2, 3, 8, 8], 2, 2, 0, 1, True, seed=44, ties=True)
maxpool_case("maxpool1d", [5, 3, 17], 4, 3, 2, 1, True, seed=45)
maxpool_case("maxpool3d_k3s2", [2, 3, 7, 8, 9], 3, 2, 1, 1, False, seed=46)
maxpool_case("maxpool3d_ceil_dil_ties", [1, 4, 9, 7, 10], [3, 2, 3], [2, 1, 2], [1, 1, 0], [2, 1, 1], True, seed=47,
             ties=True)
maxpool_case("maxpool3d_nan", [1, 2, 5, 6, 6], 2, 2, 0, 1, True, seed=48, ties=True)


def avgpool_case(name, shape, k, s, p, ceil, include_pad, divisor=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = leaf(torch.randn(shape, generator=g))
    if len(shape) == 3:
        y = F.avg_pool1d(x, k, s, p, ceil, include_pad)
    else:
        y = F.avg_pool2d(x, k, s, p, ceil, include_pad, divisor)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    fx.case(name, dict(kernel=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include_pad,
                       divisor=divisor or 0), x=x, dy=dy, dx=x.grad)


avgpool_case("avgpool2d_pad", [5, 3, 9, 9], 3, 2, 1, False, True, seed=51)
avgpool_case("avgpool2d_ceil_nopad", [1, 7, 10, 11], 3, 2, 1, True, False, seed=52)
avgpool_case("avgpool2d_divisor", [2, 3, 7, 7], 2, 1, 1, True, True, divisor=3, seed=53)
avgpool_case("avgpool1d", [5, 3, 17], 4, 3, 2, True, False, seed=54)


def adaptive_case(name, shape, out, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = leaf(torch.randn(shape, generator=g))
    avg = F.adaptive_avg_pool1d if len(shape) == 3 else F.adaptive_avg_pool2d
    mx = F.adaptive_max_pool1d if len(shape) == 3 else F.adaptive_max_pool2d
    y = avg(x, out)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    xm = leaf(x.detach())
    ym, idx = mx(xm, out, return_indices=True)
    ym.backward(dy)
    fx.case(name, dict(out=list(out) if isinstance(out, tuple) else [out]), x=x, dy=dy, dx=x.grad, ymax=ym,
            idx=idx.to(torch.int64), dxmax=xm.grad)


adaptive_case("adaptive2d_5x3", [5, 3, 9, 7], (5, 3), seed=61)
adaptive_case("adaptive2d_1x1", [5, 16, 7, 7], (1, 1), seed=62)
adaptive_case("adaptive2d_up", [1, 7, 3, 4], (5, 6), seed=63)
adaptive_case("adaptive1d", [5, 3, 17], 7, seed=64)


def ce_case(name, n, c, reduction="mean", smoothing=0.0, ignore=-100, weighted=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = leaf(torch.randn(n, c, generator=g) * 3)
    target = torch.randint(0, c, (n,), generator=g)
    if ignore >= 0:
        target[::3] = ignore
    weight = torch.rand(c, generator=g) + 0.5 if weighted else None
    loss = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction=reduction,
                           label_smoothing=smoothing)
    loss.backward(torch.ones_like(loss))
    extra = dict(weight=weight) if weighted else {}
    fx.case(name, dict(reduction=reduction, smoothing=smoothing, ignore=ignore), logits=logits,
            target=target.to(torch.int64), loss=loss.reshape(-1), dlogits=logits.grad, **extra)


ce_case("ce_mean", 5, 10, seed=71)
ce_case("ce_sum_c37", 7, 37, reduction="sum", seed=72)
ce_case("ce_none", 5, 16, reduction="none", seed=73)
ce_case("ce_weighted_ignore", 9, 7, ignore=2, weighted=True, seed=74)
ce_case("ce_smoothing", 5, 10, smoothing=0.1, seed=75)
ce_case("ce_smoothing_weighted_ignore", 9, 7, smoothing=0.2, ignore=1, weighted=True, seed=76)
ce_case("ce_batch64", 64, 10, seed=77)

for red in ["mean", "sum", "none"]:
    g = torch.Generator().manual_seed(81)
    x = leaf(torch.randn(5, 3, 7, generator=g))
    t = torch.randn(5, 3, 7, generator=g)
    loss = F.mse_loss(x, t, reduction=red)
    loss.backward(torch.ones_like(loss))
    fx.case(f"mse_{red}", dict(reduction=red), x=x, t=t, loss=loss.reshape(-1), dx=x.grad)

fx.save()
