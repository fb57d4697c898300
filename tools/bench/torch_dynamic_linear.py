"""PyTorch's side of the `dynamic` benchmark family (crates/qkernels/benches/dynamic.rs).

    ~/.torch-ref/bin/python tools/bench/torch_dynamic_linear.py [--threads 1] [--out FILE]

Times torch.ao.nn.quantized.dynamic.Linear (qint8 per-tensor weights, and float16 weights) with a
bias on f32 input [M, K], M in {1, 16, 128}, K = N in {256, 1024}, under the engines "fbgemm" and
"x86". Writes {"dynamic/<dtype>_M<m>_K<k>_N<n>": {"fbgemm": median_ns, "x86": median_ns}}.
"""

import json
import warnings

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from timing import bench_args, median_ns

warnings.filterwarnings("ignore")


def main():
    args = bench_args()
    results = {}
    for kn in (256, 1024):
        for m in (1, 16, 128):
            x = torch.randn(m, kn)
            for dtype, name in ((torch.qint8, "qint8"), (torch.float16, "fp16")):
                key = f"dynamic/{name}_M{m}_K{kn}_N{kn}"
                results[key] = {}
                for engine in ("fbgemm", "x86"):
                    torch.backends.quantized.engine = engine
                    mod = nnqd.Linear(kn, kn, dtype=dtype)
                    with torch.no_grad():
                        results[key][engine] = median_ns(lambda: mod(x))
                print(key, results[key])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
