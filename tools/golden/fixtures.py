"""Writes golden fixtures in the format the Rust tests read (crate `qtest`).

A fixture file is safetensors: tensors named "<case>/<field>", and one metadata entry, "fixture":
JSON {"torch": <PyTorch version>, "cpu": <the CPU it was made on>, "cases": [<each case's name and
scalar parameters>]}. One entry only, because safetensors writes its metadata map in no fixed order:
with one key, regenerating unchanged fixtures on the same CPU gives identical bytes. The CPU is
recorded so a difference between fixtures made on two machines can be traced; tests must not
depend on it.
"""

import json
import pathlib
import platform

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform reports)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        meta = {"fixture": json.dumps({"torch": torch.__version__, "cpu": cpu_name(), "cases": self.cases})}
        save_file(self.tensors, str(self.path), metadata=meta)
        print(f"{self.path.relative_to(ROOT)}: {len(self.cases)} cases, {len(self.tensors)} tensors")
