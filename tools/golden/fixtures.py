"""Writes golden fixtures in the format the Rust tests read (crate `qtest`).

A fixture file is safetensors: tensors named "<case>/<field>", and one metadata entry, "fixture":
JSON {"torch": <PyTorch version>, "cpu": <CPU model name>, "capability": <PyTorch's CPU
capability>, "threads": <PyTorch's thread count>, "cases": [<each case's name and scalar
parameters>]}. One entry only, because safetensors writes its metadata map in no fixed order: with
one key, regenerating unchanged fixtures on the same machine gives identical bytes. The machine is
recorded so a difference between fixtures made on two machines can be traced; tests must not
depend on it.
"""

import json
import pathlib

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def made_on() -> dict:
    """The CPU, PyTorch's CPU capability and thread count a fixture is made with."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


class Fixture:
    """Collects cases, then writes <crate>/tests/fixtures/<name>.safetensors."""

    def __init__(self, crate: str, name: str):
        self.path = ROOT / "crates" / crate / "tests" / "fixtures" / f"{name}.safetensors"
        self.tensors, self.cases = {}, []

    def case(self, name: str, params: dict, **tensors: torch.Tensor) -> None:
        """Adds a case: its scalar parameters and its tensors (copied, so views may be passed)."""
        if any(c["name"] == name for c in self.cases):
            raise ValueError(f"duplicate case {name}")
        self.cases.append({"name": name, **params})
        for field, t in tensors.items():
            self.tensors[f"{name}/{field}"] = t.contiguous().clone()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"fixture": json.dumps({"torch": torch.__version__, **made_on(), "cases": self.cases})}
        save_file(self.tensors, str(self.path), metadata=meta)
        print(f"{self.path.relative_to(ROOT)}: {len(self.cases)} cases, {len(self.tensors)} tensors")


def capture_outputs(model, x, ops, is_leaf, quantized_first_only=False):
    """Runs `model` on x; returns its output and {path: output} of the modules `is_leaf(module)`
    accepts (their forward hooks; an output that is one of the inputs is skipped) and of each
    QFunctional op in `ops`, in execution order. A path that runs twice is an error, unless
    `quantized_first_only`, which keeps the first quantized output of each path and nothing else.
    Hooks and patched ops are removed afterwards."""
    from torch.ao.nn.quantized import QFunctional

    outputs = {}

    def record(path, out):
        if quantized_first_only:
            if isinstance(out, torch.Tensor) and out.is_quantized and path not in outputs:
                outputs[path] = out
            return
        if path in outputs:
            raise ValueError(f"{path} ran twice")
        outputs[path] = out

    def on_forward(path):
        def hook(module, inputs, out):
            if not any(out is i for i in inputs):
                record(path, out)

        return hook

    def wrap(path, method):
        def call(*args, **kwargs):
            out = method(*args, **kwargs)
            record(path, out)
            return out

        return call

    handles, patched = [], []
    for path, mod in model.named_modules():
        if isinstance(mod, QFunctional):
            for op in ops:
                setattr(mod, op, wrap(path, getattr(mod, op)))
                patched.append((mod, op))
        elif is_leaf(mod):
            handles.append(mod.register_forward_hook(on_forward(path)))
    try:
        return model(x), outputs
    finally:
        for h in handles:
            h.remove()
        for mod, op in patched:
            delattr(mod, op)
