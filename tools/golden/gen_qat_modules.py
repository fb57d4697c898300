"""Golden fixtures for qfake's QAT modules (PyTorch 2.15 eager QAT: torch.ao.nn.qat,
torch.ao.nn.intrinsic.qat), made with PyTorch's own modules and autograd.

    ~/.torch-ref/bin/python tools/golden/gen_qat_modules.py

Writes crates/qfake/tests/fixtures/qat_modules.safetensors in the format of
tools/golden/fixtures.py. Engine "x86", one thread, seeded (torch.manual_seed(case seed)).

Each case builds a float nn.Sequential (e.g. Conv2d, BatchNorm2d, ReLU), sets its qconfig, calls
`fuse_modules_qat` (when it has more than one module) and `prepare_qat` in training mode, exactly
as a user would: element 0 is then the QAT module (nniqat.ConvBnReLU2d, nnqat.Linear, ...) with
its `weight_fake_quant` and, attached by prepare_qat as a forward hook, its
`activation_post_process` (a fake quantizer); the other elements are Identity.

Float initialisation (before prepare_qat): PyTorch's default conv / linear init under the seed,
then for a BatchNorm: weight = 1 + 0.2 randn, bias = 0.1 randn, running_mean = 0.1 randn,
running_var = 0.5 + rand (in this order, same generator). BatchNorm eps 1e-5, momentum 0.1.

Steps k = 1, 2, 3: input x.k (randn * 1.5 + 0.1), upstream gradient g.k (randn); the training
forward out = model(x.k) and loss (out * g.k).sum(); backward; every gradient is read, then zeroed.
No optimizer step: the parameters never change, only buffers (BN running stats, fake-quant state).
Before step 3, ConvBn* cases call `torch.ao.nn.intrinsic.qat.freeze_bn_stats` on the module, the
LinearBn1d case its `freeze_bn_stats()` method (the function skips LinearBn1d) (param
"freeze_bn_before_step": 3; null when the module has no BN). Then `model.eval()` and one
forward on x.3 (suffix "eval", no backward). Finally `convert(copy.deepcopy(model).eval())` and the
converted module runs on quantize_per_tensor(x.3, in_scale, in_zero_point, quint8).

Fields (tensor "<case>/<field>"; k is 1, 2, 3 or "eval"; fields of absent parts are absent):
  before (the QAT module right after prepare_qat, equal to the float module's):
    weight, bias (when the conv / linear has one), bn.weight, bn.bias, bn.running_mean,
    bn.running_var (f32)
  per step k:
    x.k, g.k              input and upstream gradient (f32; the "eval" forward's input is x.3)
    out.k                 the QAT module's output before its activation fake quant (f32)
    y.k                   after the activation fake quant: what the model returns (f32)
    dx.k                  input gradient (f32; not for "eval")
    dweight.k, dbias.k, dbn.weight.k, dbn.bias.k   parameter gradients (f32; not for "eval")
    bn.running_mean.k, bn.running_var.k (f32), bn.num_batches_tracked.k (i64)   after the forward
    wfq.scale.k (f32), wfq.zero_point.k (i32)     weight_fake_quant's buffers after the forward
    wfq.min_val.k, wfq.max_val.k (f32)            its observer's running range
    act.scale.k (f32), act.zero_point.k (i32), act.min_val.k, act.max_val.k (f32)   the same for
                          the activation fake quant
  convert (the quantized module made from the state after the "eval" forward):
    q.weight (i8, int_repr in PyTorch's layout), q.weight_scales (f64), q.weight_zero_points (i64)
                          per channel (per-tensor weights: one element each)
    q.bias (f32; absent when the quantized module has none), q.scale (f64 [1]),
    q.zero_point (i64 [1]) the output qparams
    q.input (u8)          int_repr of quantize_per_tensor(x.3, in_scale, in_zero_point)
    q.output (u8)         int_repr of the quantized module's output on it ("x86" engine)
    q.output_fbgemm (u8)  the same under "fbgemm", present only when it differs from q.output
Params per case: module (the QAT class), quantized (the converted class), float (the float
Sequential's repr), qconfig (its name and repr), kind ("conv" / "linear"), dims (1, 2, 3; 0 for
linear, 1 for LinearBn1d), kwargs (constructor arguments of the conv / linear), shape (input shape), bn ({"eps",
"momentum"} or null), relu, seed, freeze_bn_before_step, in_scale / in_zero_point (of q.input:
MinMaxObserver(quint8) on x.3, calculate_qparams), fbgemm_output_differs (count of q.output
elements "fbgemm" gives differently), weight_fake_quant / act_fake_quant (class names),
weight_qscheme, weight_quant_range / act_quant_range ([quant_min, quant_max] of the observers).

Notes on PyTorch's behaviour, kept in the fixture: the eval forward still observes (the fake
quantizers ignore `training`; only BN changes), so its state differs from step 3's; `convert`
runs weight_fake_quant once more on the (BN-folded) weight, and the quantized weight's qparams
come from the observer's calculate_qparams, not the fake quantizer's buffers.
"""

import copy
import warnings

import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.quantization as tq
from fixtures import Fixture
from torch import nn
from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import MovingAveragePerChannelMinMaxObserver

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.backends.quantized.engine = "x86"

X86 = tq.get_default_qat_qconfig("x86")
WEIGHT_4BIT = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-8,
    quant_max=7,
    dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric,
)
X86_4BIT = tq.QConfig(activation=X86.activation, weight=WEIGHT_4BIT)
DEFAULT_QAT = tq.default_qat_qconfig
QCONFIG_NAMES = {
    id(X86): 'get_default_qat_qconfig("x86")',
    id(X86_4BIT): 'QConfig(activation=get_default_qat_qconfig("x86").activation, weight='
    "FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, "
    "quant_min=-8, quant_max=7, dtype=torch.qint8, qscheme=torch.per_channel_symmetric))",
    id(DEFAULT_QAT): "default_qat_qconfig",
}

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

# name: (kind, dims, kwargs, input shape, bn, relu, qconfig)
CASES = {
    "convbnrelu2d": ("conv", 2, dict(in_channels=3, out_channels=7, kernel_size=3, padding=1, bias=False),
                     [4, 3, 8, 8], True, True, X86),
    "convbn2d": ("conv", 2, dict(in_channels=7, out_channels=16, kernel_size=3, stride=2, padding=1, bias=False),
                 [1, 7, 7, 9], True, False, X86),
    "convbnrelu2d_bias": ("conv", 2, dict(in_channels=3, out_channels=16, kernel_size=3, padding=1, bias=True),
                          [1, 3, 8, 8], True, True, X86),
    "convbn1d": ("conv", 1, dict(in_channels=3, out_channels=7, kernel_size=3, padding=1, bias=False),
                 [4, 3, 9], True, False, X86),
    "convbnrelu3d": ("conv", 3, dict(in_channels=3, out_channels=7, kernel_size=3, padding=1, bias=False),
                     [1, 3, 3, 4, 5], True, True, X86),
    "convrelu2d": ("conv", 2, dict(in_channels=7, out_channels=7, kernel_size=3, padding=1, bias=True),
                   [1, 7, 7, 9], False, True, X86),
    "conv2d_groups2": ("conv", 2, dict(in_channels=16, out_channels=16, kernel_size=3, padding=1, groups=2,
                                       bias=True), [1, 16, 7, 9], False, False, X86),
    "linear": ("linear", 0, dict(in_features=16, out_features=7, bias=True), [4, 16], False, False, X86),
    "linearrelu": ("linear", 0, dict(in_features=7, out_features=16, bias=True), [4, 7], False, True, X86),
    "convbnrelu2d_4bit": ("conv", 2, dict(in_channels=3, out_channels=7, kernel_size=3, padding=1, bias=False),
                          [4, 3, 8, 8], True, True, X86_4BIT),
    "linear_4bit": ("linear", 0, dict(in_features=16, out_features=7, bias=True), [4, 16], False, False, X86_4BIT),
    "convbnrelu2d_default_qat_qconfig": ("conv", 2, dict(in_channels=3, out_channels=16, kernel_size=3, padding=1,
                                                         bias=False), [1, 3, 7, 9], True, True, DEFAULT_QAT),
    # nniqat.LinearBn1d (fuse_modules_qat of Linear + BatchNorm1d); dims 1 is the batch norm's.
    "linearbn1d": ("linear", 1, dict(in_features=16, out_features=7, bias=True), [8, 16], True, False, X86),
}


def float_model(kind, dims, kwargs, bn, relu):
    layers = [CONV[dims](**kwargs) if kind == "conv" else nn.Linear(**kwargs)]
    if bn:
        norm = BN[dims](kwargs["out_channels"] if kind == "conv" else kwargs["out_features"])
        n = norm.num_features
        with torch.no_grad():
            norm.weight.copy_(1 + 0.2 * torch.randn(n))
            norm.bias.copy_(0.1 * torch.randn(n))
            norm.running_mean.copy_(0.1 * torch.randn(n))
            norm.running_var.copy_(0.5 + torch.rand(n))
        layers.append(norm)
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def output_shape(qat, kind, shape, kwargs):
    if kind == "linear":
        return [shape[0], kwargs["out_features"]]
    with torch.no_grad():
        return qat._conv_forward(torch.zeros(shape), qat.weight, None).shape


def fq_state(fq, suffix):
    obs = fq.activation_post_process
    return {
        f"scale.{suffix}": fq.scale.detach().clone(),
        f"zero_point.{suffix}": fq.zero_point.detach().clone(),
        f"min_val.{suffix}": obs.min_val.detach().clone().reshape(-1),
        f"max_val.{suffix}": obs.max_val.detach().clone().reshape(-1),
    }


def state(qat, suffix):
    t = {f"wfq.{k}": v for k, v in fq_state(qat.weight_fake_quant, suffix).items()}
    t.update({f"act.{k}": v for k, v in fq_state(qat.activation_post_process, suffix).items()})
    if hasattr(qat, "bn"):
        t[f"bn.running_mean.{suffix}"] = qat.bn.running_mean.clone()
        t[f"bn.running_var.{suffix}"] = qat.bn.running_var.clone()
        t[f"bn.num_batches_tracked.{suffix}"] = qat.bn.num_batches_tracked.clone().reshape(1)
    return t


def parameters(qat):
    names = ["weight", "bias", "bn.weight", "bn.bias"]
    return {n: p for n, p in qat.named_parameters() if n in names}


def step(model, qat, x, g, suffix, backward=True):
    """One forward (and backward): its tensors, the module's state after it."""
    seen = {}
    handle = qat.activation_post_process.register_forward_pre_hook(lambda m, args: seen.update(out=args[0]))
    x = x.clone().requires_grad_(backward)
    y = model(x)
    handle.remove()
    t = {f"out.{suffix}": seen["out"].detach(), f"y.{suffix}": y.detach()}
    if backward:
        t[f"x.{suffix}"] = x.detach()
        t[f"g.{suffix}"] = g
        (y * g).sum().backward()
        t[f"dx.{suffix}"] = x.grad.clone()
        for name, p in parameters(qat).items():
            t[f"d{name}.{suffix}"] = p.grad.clone()
            p.grad = None
    t.update(state(qat, suffix))
    return t


def quantized(converted, x3):
    """The converted module's tensors and its output on x3 quantized with a MinMax range."""
    mod = converted[0]
    w = mod.weight()
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales, zps = w.q_per_channel_scales().double(), w.q_per_channel_zero_points().long()
    else:
        scales, zps = torch.tensor([w.q_scale()], dtype=torch.float64), torch.tensor([w.q_zero_point()])
    obs = tq.MinMaxObserver(dtype=torch.quint8)
    obs(x3)
    in_scale, in_zp = (float(v) for v in obs.calculate_qparams())
    in_zp = int(in_zp)
    qx = torch.quantize_per_tensor(x3, in_scale, in_zp, torch.quint8)
    out = mod(qx)
    t = {
        "q.weight": w.int_repr(),
        "q.weight_scales": scales,
        "q.weight_zero_points": zps,
        "q.scale": torch.tensor([mod.scale], dtype=torch.float64),
        "q.zero_point": torch.tensor([mod.zero_point], dtype=torch.int64),
        "q.input": qx.int_repr(),
        "q.output": out.int_repr(),
    }
    if mod.bias() is not None:
        t["q.bias"] = mod.bias().detach().clone()
    return t, in_scale, in_zp, qx


def main():
    fx = Fixture("qfake", "qat_modules")
    for seed, (name, (kind, dims, kwargs, shape, bn, relu, qconfig)) in enumerate(CASES.items()):
        torch.manual_seed(1000 + seed)
        model = float_model(kind, dims, kwargs, bn, relu)
        float_repr = repr(model)
        model.train()
        model.qconfig = qconfig
        if len(model) > 1:
            tq.fuse_modules_qat(model, [[str(i) for i in range(len(model))]], inplace=True)
        tq.prepare_qat(model, inplace=True)
        qat = model[0]
        tensors = {n: p.detach().clone() for n, p in parameters(qat).items()}
        if bn:
            tensors["bn.running_mean"] = qat.bn.running_mean.clone()
            tensors["bn.running_var"] = qat.bn.running_var.clone()
        xs = [torch.randn(shape) * 1.5 + 0.1 for _ in range(3)]
        for k in range(1, 4):
            if k == 3 and bn:
                # nniqat.freeze_bn_stats (the function) freezes the ConvBn* classes only; LinearBn1d
                # is frozen through its own method.
                if kind == "conv":
                    qat.apply(nniqat.freeze_bn_stats)
                else:
                    qat.freeze_bn_stats()
            g = torch.randn(output_shape(qat, kind, shape, kwargs))
            tensors.update(step(model, qat, xs[k - 1], g, k))
        model.eval()
        with torch.no_grad():
            tensors.update(step(model, qat, xs[2], None, "eval", backward=False))
        eval_copy = copy.deepcopy(model).eval()
        converted = tq.convert(eval_copy)
        qt, in_scale, in_zp, qx = quantized(converted, xs[2])
        tensors.update(qt)
        # The same conversion under "fbgemm" (packed weights belong to the engine that packed them).
        torch.backends.quantized.engine = "fbgemm"
        fb = tq.convert(copy.deepcopy(model).eval())[0](qx).int_repr()
        torch.backends.quantized.engine = "x86"
        differs = int((fb != tensors["q.output"]).sum())
        if differs:
            tensors["q.output_fbgemm"] = fb
        wfq = qat.weight_fake_quant
        afq = qat.activation_post_process
        params = {
            "module": type(qat).__module__ + "." + type(qat).__name__,
            "quantized": type(converted[0]).__module__ + "." + type(converted[0]).__name__,
            "float": float_repr,
            "qconfig": QCONFIG_NAMES[id(qconfig)] + " = " + repr(qconfig),
            "kind": kind,
            "dims": dims,
            "kwargs": kwargs,
            "shape": shape,
            "bn": {"eps": qat.bn.eps, "momentum": qat.bn.momentum} if bn else None,
            "relu": relu,
            "seed": 1000 + seed,
            "freeze_bn_before_step": 3 if bn else None,
            "in_scale": in_scale,
            "in_zero_point": in_zp,
            "fbgemm_output_differs": differs,
            "weight_fake_quant": type(wfq).__name__,
            "weight_qscheme": str(wfq.qscheme),
            "weight_quant_range": [wfq.activation_post_process.quant_min, wfq.activation_post_process.quant_max],
            "act_fake_quant": type(afq).__name__,
            "act_quant_range": [afq.activation_post_process.quant_min, afq.activation_post_process.quant_max],
        }
        fx.case(name, params, **tensors)
        print(f"  {name}: {type(qat).__name__} -> {type(converted[0]).__name__}, fbgemm differs on {differs}")
    fx.save()
    print(f"  {fx.path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
