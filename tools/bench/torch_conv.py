"""PyTorch's side of the `conv` benchmark family (tools/bench/README.md, rule 5).

    ~/.torch-ref/bin/python tools/bench/torch_conv.py --threads N --out FILE [--filter SUBSTR]

Times `torch.ao.nn.quantized.Conv2d` on every shape of tools/bench/conv_shapes.json, the same
work as `crates/qkernels/benches/gemm_conv.rs`: channels-last quint8 input (scale 0.02, zero
point 128), per-channel symmetric qint8 weights, f32 bias, ReLU-fused (ConvReLU2d) u8 output,
under the engines "x86" and "fbgemm", with torch.set_num_threads(N). Weights are prepacked once
(module construction), outside the timing, as in the Rust benchmark. Writes
{"conv/<case>": {"x86": median_ns, "fbgemm": median_ns}}.
"""

import argparse
import json
import pathlib
import warnings

import torch
import torch.ao.nn.intrinsic.quantized as nniq
from timing import median_ns

warnings.filterwarnings("ignore")
SHAPES = pathlib.Path(__file__).resolve().parent / "conv_shapes.json"


def build(case, engine):
    torch.backends.quantized.engine = engine
    c, oc, groups = case["in_channels"], case["out_channels"], case["groups"]
    k, s, p = tuple(case["kernel"]), tuple(case["stride"]), tuple(case["padding"])
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (oc, c // groups, *k), dtype=torch.int8, generator=gen)
    scales = torch.tensor([0.001 + i * 1e-6 for i in range(oc)], dtype=torch.float64)
    qw = torch._make_per_channel_quantized_tensor(w, scales, torch.zeros(oc, dtype=torch.int64), 0)
    bias = torch.arange(oc, dtype=torch.float32) * 0.01
    mod = nniq.ConvReLU2d(c, oc, k, stride=s, padding=p, groups=groups, bias=True)
    mod.set_weight_bias(qw, bias)
    mod.scale = 0.05 * (c // groups * k[0] * k[1]) ** 0.5
    mod.zero_point = 100
    x = torch.randint(0, 256, (case["batch"], c, *case["input"]), dtype=torch.uint8, generator=gen)
    qx = torch._make_per_tensor_quantized_tensor(x, 0.02, 128).contiguous(memory_format=torch.channels_last)
    return mod, qx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    doc = json.loads(SHAPES.read_text())
    results = {}
    with torch.inference_mode():
        for case in doc["cases"]:
            if args.filter not in case["case"]:
                continue
            times = {}
            for engine in ["x86", "fbgemm"]:
                if engine not in torch.backends.quantized.supported_engines:
                    continue
                mod, qx = build(case, engine)
                times[engine] = median_ns(lambda: mod(qx))
            results[f"{doc['group']}/{case['case']}"] = times
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
