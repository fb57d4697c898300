"""PyTorch's side of the `elementwise`, `pool` and `float` benchmark families
(tools/bench/README.md, rule 5).

    ~/.torch-ref/bin/python tools/bench/torch_elementwise.py --threads N --out FILE [--filter SUBSTR]

Times PyTorch on every case of tools/bench/elementwise_shapes.json, the same work as
crates/qkernels/benches/elementwise.rs:

* elementwise: quint8 tensors (NCHW contiguous) through torch.ops.quantized (add, add_relu, mul,
  add_scalar, mul_scalar, cat, relu6, hardswish, sigmoid, tanh, leaky_relu, elu) and torch.relu,
  with the same scales, zero points and scalars as the Rust bench;
* pool: channels_last quint8 tensors (PyTorch's NHWC kernels, the layout qkernels takes) through
  torch.nn.functional max_pool2d / avg_pool2d / adaptive_avg_pool2d / interpolate;
* float: torch.nn.functional.conv2d on NCHW f32 with bias (oneDNN/mkldnn as PyTorch picks it).

Quantized ops run under the engines "fbgemm" and "x86"; float ops report under both names too
(the engine does not affect them). torch.set_num_threads(N). Writes
{"<group>/<case>": {"fbgemm": median_ns, "x86": median_ns}}.
"""

import argparse
import json
import pathlib
import warnings

import torch
import torch.nn.functional as F
from timing import median_ns

warnings.filterwarnings("ignore")
SHAPES = pathlib.Path(__file__).resolve().parent / "elementwise_shapes.json"
ENGINES = ["fbgemm", "x86"]


def qrand(shape, scale, zp, seed, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    q = torch._make_per_tensor_quantized_tensor(x, scale, zp)
    return q.contiguous(memory_format=torch.channels_last) if channels_last else q


def elementwise_fn(case):
    op, shape = case["op"], case["shape"]
    # Same parameters as the Rust bench: a (0.05, 128), b (0.04, 120), out (0.08, 100).
    a, b = qrand(shape, 0.05, 128, 1), qrand(shape, 0.04, 120, 2)
    qo = (0.08, 100)
    ops = torch.ops.quantized
    table = {
        "add": lambda: ops.add(a, b, *qo),
        "add_relu": lambda: ops.add_relu(a, b, *qo),
        "mul": lambda: ops.mul(a, b, *qo),
        "relu": lambda: torch.relu(a),
        "relu6": lambda: ops.relu6(a, False),
        "hardswish": lambda: ops.hardswish(a, *qo),
        "sigmoid": lambda: torch.sigmoid(a),
        "tanh": lambda: torch.tanh(a),
        "leaky_relu": lambda: torch.ao.nn.quantized.functional.leaky_relu(a, 0.01, scale=qo[0], zero_point=qo[1]),
        "elu": lambda: torch.ao.nn.quantized.functional.elu(a, qo[0], qo[1], 1.0),
        "add_scalar": lambda: ops.add_scalar(a, 100.0),
        "mul_scalar": lambda: ops.mul_scalar(a, -0.5),
    }
    if op == "cat":
        params = [(0.05, 128), (0.04, 120), (0.08, 100), (0.05, 128)]
        xs = [qrand(shape, *params[i % 4], 10 + i) for i in range(case["inputs"])]
        return lambda: ops.cat(xs, dim=case["dim"], scale=0.05, zero_point=128)
    return table[op]


def pool_fn(case):
    op, shape = case["op"], case["shape"]
    x = qrand(shape, 0.05, 7, 3, channels_last=True)
    if op == "max_pool2d":
        return lambda: F.max_pool2d(x, case["kernel"], case["stride"], case["padding"])
    if op == "avg_pool2d":
        return lambda: F.avg_pool2d(x, case["kernel"], case["stride"], case["padding"], count_include_pad=True)
    if op == "adaptive_avg_pool2d":
        return lambda: F.adaptive_avg_pool2d(x, case["output_size"])
    if op == "upsample_nearest":
        return lambda: F.interpolate(x, size=case["output_size"], mode="nearest")
    if op == "upsample_bilinear":
        return lambda: F.interpolate(x, size=case["output_size"], mode="bilinear", align_corners=case["align_corners"])
    raise ValueError(op)


def float_fn(case):
    gen = torch.Generator().manual_seed(4)
    c, oc, g = case["in_channels"], case["out_channels"], case["groups"]
    x = torch.rand(case["batch"], c, *case["input"], generator=gen) * 2 - 1
    w = torch.rand(oc, c // g, *case["kernel"], generator=gen) * 2 - 1
    bias = torch.rand(oc, generator=gen)
    return lambda: F.conv2d(x, w, bias, case["stride"], case["padding"], 1, g)


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
            key = f"{case['group']}/{case['case']}"
            if args.filter not in key:
                continue
            make = {"elementwise": elementwise_fn, "pool": pool_fn, "float": float_fn}[case["group"]]
            times = {}
            for engine in ENGINES:
                if engine not in torch.backends.quantized.supported_engines:
                    continue
                torch.backends.quantized.engine = engine
                if case["group"] == "float" and times:
                    times[engine] = next(iter(times.values()))
                    continue
                times[engine] = median_ns(make(case))
            results[key] = times
            print(f"{key}: " + ", ".join(f"{e} {t / 1e3:.1f} us" for e, t in times.items()), flush=True)
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
