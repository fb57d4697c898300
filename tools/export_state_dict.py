"""Saves any PyTorch model's state_dict as safetensors, the format the Rust side loads by name.

    ~/.torch-ref/bin/python tools/export_state_dict.py model.pth model.safetensors

The input is a state_dict saved with `torch.save(model.state_dict(), "model.pth")`. In your own
code the same is two lines:

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "model.safetensors")

Keys keep PyTorch's dotted names ("features.0.weight", "fc.bias", "bn.running_mean", ...), which
the module tree uses to find each parameter.
"""

import sys

import torch
from safetensors.torch import save_file


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, sys.argv[2])
    print(f"{len(state)} tensors -> {sys.argv[2]}")


if __name__ == "__main__":
    main()
