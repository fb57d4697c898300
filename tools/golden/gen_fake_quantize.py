"""Golden fixtures for qfake's fake-quantize modules, produced with PyTorch's own modules
(torch.ao.quantization.fake_quantize) and autograd.

    ~/.torch-ref/bin/python tools/golden/gen_fake_quantize.py

Writes crates/qfake/tests/fixtures/fake_quantize.safetensors. Each case runs TRAIN_STEPS training
forwards (observer and fake quantization enabled), then one step with the observer disabled, then
one with fake quantization disabled too. Step k records "x{k}" (input), "g{k}" (grad_out), "y{k}"
(output), "dx{k}" (input gradient from y.backward(g)), "scale{k}" / "zp{k}" (the buffers after the
step); the case's "repr" lists extra_repr() after each step. Deterministic (fixed seeds, one thread).
"""

import warnings

import torch
from fixtures import Fixture
from torch.ao.quantization.fake_quantize import (
    FakeQuantize,
    default_fake_quant,
    default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant,
    default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
    default_per_channel_weight_fake_quant,
    default_weight_fake_quant,
)
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"
TRAIN_STEPS = 4

QINT4 = dict(quant_min=-8, quant_max=7, dtype=torch.qint8)
QINT8 = dict(quant_min=-128, quant_max=127, dtype=torch.qint8)

CONFIGS = {
    # name: (constructor, input shape, input spread)
    "act_quint8_reduce_range": (default_fake_quant, [3, 5, 7], 2.0),
    "weight_qint8_symmetric": (default_weight_fake_quant, [2, 33], 0.5),
    "weight_per_channel_qint8": (default_per_channel_weight_fake_quant, [3, 5, 7], 0.5),
    "per_channel_affine_axis1": (
        FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            **QINT8,
            qscheme=torch.per_channel_affine,
            ch_axis=1,
        ),
        [2, 33],
        1.0,
    ),
    "qint8_4bit": (
        FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            **QINT4,
            qscheme=torch.per_tensor_affine,
        ),
        [3, 5, 7],
        1.0,
    ),
    "fixed_neg1to1": (default_fixed_qparams_range_neg1to1_fake_quant, [2, 33], 1.0),
    "fixed_0to1": (default_fixed_qparams_range_0to1_fake_quant, [3, 5, 7], 0.7),
    "fused_act_quint8": (default_fused_act_fake_quant, [3, 5, 7], 2.0),
    "fused_wt_qint8_symmetric": (default_fused_wt_fake_quant, [2, 33], 0.5),
    "fused_per_channel_wt_qint8": (default_fused_per_channel_wt_fake_quant, [3, 5, 7], 0.5),
}


LSQ = {
    # name: (constructor, input shape, input spread)
    "lsq_per_tensor_quint8": (
        _LearnableFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255),
        [3, 5, 7],
        2.0,
    ),
    "lsq_per_tensor_4bit_grad_scaling": (
        _LearnableFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            **QINT4,
            use_grad_scaling=True,
        ),
        [2, 33],
        1.0,
    ),
    "lsq_per_channel_symmetric_grad_scaling": (
        _LearnableFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            **QINT8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            channel_len=3,
            use_grad_scaling=True,
        ),
        [3, 5, 7],
        0.5,
    ),
    "lsq_per_channel_affine_axis1": (
        _LearnableFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            **QINT8,
            qscheme=torch.per_channel_affine,
            ch_axis=1,
            channel_len=33,
        ),
        [2, 33],
        1.0,
    ),
}


def make_input(gen, shape, spread, step, scale):
    x = torch.randn(shape, generator=gen) * spread + 0.1 * step
    flat = x.view(-1)
    n = flat.numel()
    flat[n // 3] = 0.0
    flat[n // 2] = -0.0
    flat[1] = spread * (8.0 + step)  # outlier
    flat[-2] = -spread * (6.0 + 2 * step)
    # Values exactly on rounding boundaries of the current scale: (k + 0.5) * scale.
    s = float(scale.view(-1)[0])
    for j, k in enumerate(range(-3, 4)):
        flat[5 + 2 * j] = (k + 0.5) * s
    return x


def main():
    fx = Fixture("qfake", "fake_quantize")
    for index, (name, (ctor, shape, spread)) in enumerate(CONFIGS.items()):
        gen = torch.Generator().manual_seed(100 + index)
        fq = ctor()
        fq.train()
        tensors, reprs = {}, []
        for step in range(TRAIN_STEPS + 2):
            if step == TRAIN_STEPS:
                fq.disable_observer()
            if step == TRAIN_STEPS + 1:
                fq.disable_fake_quant()
            x = make_input(gen, shape, spread, step, fq.scale).requires_grad_(True)
            g = torch.randn(shape, generator=gen)
            y = fq(x)
            y.backward(g)
            tensors.update(
                {
                    f"x{step}": x.detach(),
                    f"g{step}": g,
                    f"y{step}": y.detach(),
                    f"dx{step}": x.grad,
                    f"scale{step}": fq.scale.detach().to(torch.float32).clone(),
                    f"zp{step}": fq.zero_point.detach().to(torch.int32).clone(),
                }
            )
            reprs.append(fq.extra_repr())
        fx.case(name, {"steps": TRAIN_STEPS + 2, "repr": reprs}, **tensors)
    for index, (name, (ctor, shape, spread)) in enumerate(LSQ.items()):
        gen = torch.Generator().manual_seed(200 + index)
        fq = ctor()
        fq.train()
        tensors = {}
        for step in range(TRAIN_STEPS + 2):
            if step == TRAIN_STEPS:
                fq.toggle_observer_update(False)
                with torch.no_grad():
                    fq.scale.mul_(0.97)
                    fq.zero_point.add_(0.37)
                tensors["scale_set"] = fq.scale.detach().clone()
                tensors["zp_set"] = fq.zero_point.detach().clone()
            if step == TRAIN_STEPS + 1:
                fq.toggle_fake_quant(False)
            fq.scale.grad, fq.zero_point.grad = None, None
            x = make_input(gen, shape, spread, step, fq.scale.detach()).requires_grad_(True)
            g = torch.randn(shape, generator=gen)
            y = fq(x)
            y.backward(g)
            none = torch.zeros(0)
            tensors.update(
                {
                    f"x{step}": x.detach(),
                    f"g{step}": g,
                    f"y{step}": y.detach(),
                    f"dx{step}": x.grad,
                    f"dscale{step}": none if fq.scale.grad is None else fq.scale.grad.clone(),
                    f"dzp{step}": none if fq.zero_point.grad is None else fq.zero_point.grad.clone(),
                    f"scale{step}": fq.scale.detach().clone(),
                    f"zp{step}": fq.zero_point.detach().clone(),
                }
            )
        fx.case(name, {"steps": TRAIN_STEPS + 2, "lsq": True}, **tensors)
    fx.save()


if __name__ == "__main__":
    main()
