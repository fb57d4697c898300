"""Golden fixtures for PyTorch's float sigmoid and tanh (qkernels::float::{sigmoid, tanh}).

    ~/.torch-ref/bin/python tools/golden/gen_float_math.py

Writes crates/qkernels/tests/fixtures/float_math.safetensors with PyTorch's default CPU
capability on this machine, then runs itself again under ATEN_CPU_CAPABILITY=avx2 and writes
float_math_avx2.safetensors, so both splits of `cpu_kernel_vec` (vector body in steps of 32 or
16 floats, scalar tail) are covered. Every case records the capability it was made with.

Cases (x: input, sigmoid / tanh: torch.sigmoid(x) / torch.tanh(x)):
* `len{n}`, n = 1..70: contiguous runs cut from special values (signed zeros, subnormals, tiny
  and huge values, infinities, NaNs with several payloads, values around exp's overflow and
  underflow thresholds and tanh's saturation) or from a dense sweep of [-20, 20], at offsets that
  put the special values into vector bodies and into tails of every size.
* `len10000`: the special values and a dense sweep of [-100, 100].
* `gates_b{B}_h{H}_k{k}`: LSTM-style gates `torch.randn(B, 4H) * 4`, with chunk k of
  `gates.unsafe_chunk(4, 1)` updated in place by `sigmoid_()` (`sigmoid`) and `tanh_()`
  (`tanh`): strided rows of H contiguous floats. H in {1, 7, 33, 257}, B in {1, 3}.
"""

import os
import subprocess
import sys

import numpy as np
import torch
from fixtures import Fixture

torch.set_num_threads(1)


def specials() -> torch.Tensor:
    """Special values, then NaNs with several payloads and signs."""
    f32 = np.finfo(np.float32)
    special = [
        0.0, -0.0, f32.tiny, -f32.tiny, 1e-45, -1e-45, 1e-40, -3e-39, 1e-30, -1e-20, 1e-8, -1e-8,
        1.0, -1.0, f32.max, -f32.max, 1e30, -1e30, np.inf, -np.inf,
        88.72, 88.73, -88.72, -88.73, 87.33, -87.34, 103.9, -103.9, 104.0, -104.0, 104.1, -104.1,
        99.99, -99.99, 100.0, -100.0, 100.01, -100.01, 8.664339, -8.664339, 8.66434, -8.66434,
        9.01, -9.01, 15.9, -15.9, 17.0, -17.0,
    ]
    x = torch.tensor(special, dtype=torch.float32)
    nans = torch.tensor([0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFFD54321, 0x7F800001, 0xFF812345],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([x, nans])


def main() -> None:
    cap = torch.backends.cpu.get_cpu_capability()
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    fx = Fixture("qkernels", "float_math" if forced is None else f"float_math_{forced.lower()}")
    params = {"capability": cap}
    sp = specials()
    # Short runs: odd lengths start inside the special values (which so reach every position of
    # vector bodies and tails), even lengths inside a sweep of [-20, 20], where SLEEF's and the C
    # library's results differ most often.
    p = torch.cat([sp, torch.linspace(-20.0, 20.0, 4001, dtype=torch.float32)])
    for n in range(1, 71):
        off = (n * 7) % len(sp) if n % 2 else len(sp) + (n * 131) % 3900
        x = p[off:off + n].clone()
        fx.case(f"len{n}", params, x=x, sigmoid=torch.sigmoid(x), tanh=torch.tanh(x))
    x = torch.cat([sp, torch.linspace(-100.0, 100.0, 10000 - len(sp), dtype=torch.float32)])
    fx.case("len10000", params, x=x, sigmoid=torch.sigmoid(x), tanh=torch.tanh(x))
    gen = torch.Generator().manual_seed(0)
    for b in (1, 3):
        for h in (1, 7, 33, 257):
            gates = torch.randn(b, 4 * h, generator=gen) * 4
            for k in range(4):
                s, t = gates.clone(), gates.clone()
                s.unsafe_chunk(4, 1)[k].sigmoid_()
                t.unsafe_chunk(4, 1)[k].tanh_()
                fx.case(f"gates_b{b}_h{h}_k{k}", {**params, "h": h, "k": k}, x=gates, sigmoid=s, tanh=t)
    fx.save()
    if forced is None:
        env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
        subprocess.run([sys.executable, __file__], env=env, check=True)


if __name__ == "__main__":
    main()
