"""Golden fixture for training learnable fake quantizers (LSQ) as optimizer parameters: PyTorch
2.15's eager QAT with `_LearnableFakeQuantize` for activations and weights, and torch.optim.SGD
over `model.parameters()`, which holds every quantizer's `scale` and `zero_point`.

    ~/.torch-ref/bin/python tools/golden/gen_qat_learnable.py

Writes crates/qfake/tests/fixtures/qat_learnable.safetensors (format: tools/golden/fixtures.py).
Engine "x86", one thread, torch.manual_seed(5).

Model: Sequential(QuantStub, Conv2d(3, 4, 3), ReLU, Flatten, Linear(64, 4), DeQuantStub), float
init under the seed, train mode, qconfig
  activation: _LearnableFakeQuantize(MovingAverageMinMaxObserver, quint8 0..255, use_grad_scaling)
  weight:     _LearnableFakeQuantize(MovingAveragePerChannelMinMaxObserver, qint8
              per_channel_symmetric, -128..127, channel_len 4, use_grad_scaling)
then prepare_qat. SGD(lr 0.002, momentum 0.9) over model.parameters() (weights, biases and the
ten scale / zero_point parameters; a larger lr drives the output quantizer's scale below zero
within a few steps). Step k = 0..STEPS-1: x.k [8, 3, 6, 6] (randn * (1 + k / 4), so that later
batches exceed the observed range and get clipped), labels.k
[8] (randint 4), loss = cross_entropy(model(x.k), labels.k), backward, step, zero_grad. Before
step OBSERVE_STEPS the observers are disabled (`torch.ao.quantization.disable_observer`): from
then on the scale and zero point are learned only by the optimizer.

Fields: "init/<name>" the float parameters before prepare_qat; "x.k", "labels.k" (i64),
"loss.k" (f32 scalar), "grad.k/<name>" the gradients of step k, "param.k/<name>" every entry of
named_parameters() after step k; case params: steps, observe_steps, names (named_parameters()
order).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import (
    DeQuantStub,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
    QuantStub,
    disable_observer,
    prepare_qat,
)
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

from fixtures import Fixture

torch.set_num_threads(1)
torch.backends.quantized.engine = "x86"

STEPS = 6
OBSERVE_STEPS = 1


def qconfig():
    act = _LearnableFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8, use_grad_scaling=True
    )
    weight = _LearnableFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        channel_len=4,
        use_grad_scaling=True,
    )
    return QConfig(activation=act, weight=weight)


def main():
    torch.manual_seed(5)
    model = nn.Sequential(QuantStub(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 4), DeQuantStub())
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model.qconfig = qconfig()
    prepare_qat(model, inplace=True)
    names = [n for n, _ in model.named_parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    tensors = {f"init/{n}": t for n, t in init.items()}
    for k in range(STEPS):
        if k == OBSERVE_STEPS:
            model.apply(disable_observer)
        x = torch.randn(8, 3, 6, 6) * (1 + 0.25 * k)
        labels = torch.randint(0, 4, (8,))
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        tensors[f"x.{k}"], tensors[f"labels.{k}"], tensors[f"loss.{k}"] = x, labels, loss.detach()
        for n, p in model.named_parameters():
            tensors[f"grad.{k}/{n}"] = p.grad.detach().clone()
        optimizer.step()
        optimizer.zero_grad()
        for n, p in model.named_parameters():
            tensors[f"param.{k}/{n}"] = p.detach().clone()
    f = Fixture("qfake", "qat_learnable")
    f.case("sgd", {"steps": STEPS, "observe_steps": OBSERVE_STEPS, "names": names}, **tensors)
    f.save()
    print(names)


if __name__ == "__main__":
    main()
