"""PyTorch's data-free cross-layer equalization (torch.ao.quantization._equalize.equalize) on small
models, for crates/qgraph/tests/equalize.rs.

    ~/.torch-ref/bin/python tools/golden/gen_equalize.py

Each case is a float model in evaluation mode whose weights are PyTorch's default initialisation
(torch.manual_seed(case seed)) with every output channel of every layer multiplied by
2 ** u, u uniform in [-3, 3) (so that per-channel ranges differ widely, as after batch-norm
folding). Fields: "<key>" the state_dict before equalization, "<key>.eq" after
equalize(model, groups, threshold=1e-4, inplace=True). Case parameter: "groups" (the module
groups given to equalize). The models are built in the Rust test as here.

Writes crates/qgraph/tests/fixtures/equalize/equalize.safetensors.
"""

import copy
import pathlib
import sys

import torch
import torch.ao.nn.intrinsic as nni
import torch.nn as nn
from torch.ao.quantization._equalize import equalize

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "golden"))
from fixtures import Fixture  # noqa: E402


def skew(model: nn.Module) -> None:
    """Multiplies each output channel of each conv / linear by 2 ** U[-3, 3)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                f = torch.pow(2.0, torch.rand(m.weight.shape[0]) * 6 - 3)
                m.weight.mul_(f.reshape([-1] + [1] * (m.weight.dim() - 1)))
                if m.bias is not None:
                    m.bias.mul_(f)


def conv_chain() -> nn.Module:
    # Conv2d -> ReLU -> Conv2d -> ReLU -> Conv2d, equalized as one group of three.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1, bias=False)
    )


def fused_linear() -> nn.Module:
    # LinearReLU (fused) -> Linear.
    return nn.Sequential(nni.LinearReLU(nn.Linear(5, 7), nn.ReLU()), nn.Linear(7, 3))


def conv1d_pair() -> nn.Module:
    return nn.Sequential(nni.ConvReLU1d(nn.Conv1d(4, 6, 3), nn.ReLU()), nn.Conv1d(6, 5, 2))


CASES = [
    ("conv_chain", 0, conv_chain, [["0", "2", "4"]]),
    ("fused_linear", 1, fused_linear, [["0", "1"]]),
    ("conv1d_pair", 2, conv1d_pair, [["0", "1"]]),
]


def main() -> None:
    torch.set_num_threads(1)
    fx = Fixture("qgraph", "equalize/equalize")
    for name, seed, build, groups in CASES:
        torch.manual_seed(seed)
        model = build().eval()
        skew(model)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        equalize(model, copy.deepcopy(groups), threshold=1e-4, inplace=True)
        after = {f"{k}.eq": v.detach().clone() for k, v in model.state_dict().items()}
        fx.case(name, {"groups": groups}, **before, **after)
    fx.save()


if __name__ == "__main__":
    main()
