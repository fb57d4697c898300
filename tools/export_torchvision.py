"""Writes a torchvision model's float weights to safetensors, under its state_dict names.

    ~/.torch-ref/bin/python tools/export_torchvision.py resnet18 target/models/resnet18.safetensors
    ~/.torch-ref/bin/python tools/export_torchvision.py mobilenet_v2 out.safetensors --weights my.pth

Models: resnet18, resnet50, mobilenet_v2, built from torchvision.models.quantization (the
quantizable versions, whose state_dict keys equal the plain torchvision models'). Without
--weights the weights are seeded random (--seed, default 0) with batch-norm running statistics
made non-trivial by a few forward passes in train mode, so that folding them matters; with
--weights a state_dict saved by torch.save is loaded (strictly) first. No download happens.
The metadata records the model name, the torchvision version and the input shape.
"""

import argparse
import json
import pathlib

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models import quantization as qmodels

BUILDERS = {
    "resnet18": lambda: qmodels.resnet18(weights=None, quantize=False),
    "resnet50": lambda: qmodels.resnet50(weights=None, quantize=False),
    "mobilenet_v2": lambda: qmodels.mobilenet_v2(weights=None, quantize=False),
}


def build(name: str, weights: str | None, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = BUILDERS[name]()
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    else:
        # Random running statistics: a few train-mode passes on random images.
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 3, 224, 224))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(BUILDERS))
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--weights", help="a state_dict saved with torch.save (default: seeded random)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = build(args.model, args.weights, args.seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": args.model, "torchvision": torchvision.__version__, "input": [1, 3, 224, 224],
            "weights": args.weights or f"random, seed {args.seed}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"record": json.dumps(meta)})
    print(f"{args.model}: {len(state)} tensors, {sum(v.numel() for v in state.values())} values -> {args.out}")


if __name__ == "__main__":
    main()
