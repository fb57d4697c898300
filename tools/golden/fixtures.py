"""Writes golden fixtures in the format the Rust tests read (crate `qtest`).

A fixture file is safetensors: tensors named "<case>/<field>", and one metadata entry, "fixture":
JSON {"torch": <PyTorch version>, "cases": [<each case's name and scalar parameters>]}. One entry
only, because safetensors writes its metadata map in no fixed order: with one key, regenerating
unchanged fixtures gives identical bytes.
"""

import json
import pathlib

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def made_on() -> dict:
    """The CPU, PyTorch's CPU capability and thread count a fixture is made with."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown")
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


class Fixture:
    """Collects cases, then writes <crate>/tests/fixtures/<name>.safetensors."""

    def __init__(self, crate: str, name: str):
        self.path = ROOT / "crates" / crate / "tests" / "fixtures" / f"{name}.safetensors"
        self.tensors, self.cases = {}, []
        # Further metadata entries (e.g. the machine the fixture was made on), kept in the one JSON.
        self.meta = {}

    def case(self, name: str, params: dict, **tensors: torch.Tensor) -> None:
        """Adds a case: its scalar parameters and its tensors (copied, so views may be passed)."""
        if any(c["name"] == name for c in self.cases):
            raise ValueError(f"duplicate case {name}")
        self.cases.append({"name": name, **params})
        for field, t in tensors.items():
            self.tensors[f"{name}/{field}"] = t.contiguous().clone()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"fixture": json.dumps({"torch": torch.__version__, **self.meta, "cases": self.cases})}
        save_file(self.tensors, str(self.path), metadata=meta)
        print(f"{self.path.relative_to(ROOT)}: {len(self.cases)} cases, {len(self.tensors)} tensors")
