"""PyTorch's numeric suite (torch.ao.ns._numeric_suite) on the digits demo's model: the keys it
returns and the SQNR of each pair, for crates/qgraph/tests/ns.rs.

    ~/.torch-ref/bin/python tools/golden/gen_ns.py

The model, data, split and float weights are those of tools/train_digits.py
(crates/qgraph/assets/digits/), one thread. Recipe (as tests/ns.rs's
digits_models), engine "fbgemm": eval, fuse_modules(features, FUSE) on the float model ("fused"), a copy prepared
with get_default_qconfig("x86"), calibrated on the first 256 training images in split order in
batches of 64, converted ("quantized"). Inputs: the first 128 test images in 2 batches of 64.

Writes crates/qgraph/tests/fixtures/ns/digits_ns.json:
  compare_weights: [[key, float shape, sqnr dB]] for compare_weights(fused.state_dict(),
      quantized.state_dict()), in the dict's order; the quantized side dequantized ("fc"'s
      packed parameters: their weight).
  compare_model_outputs: [[key, float entries, quantized entries, sqnr dB]] for
      compare_model_outputs(fused, quantized, x) run once per batch on fresh copies; the SQNR is
      over all batches, pairing each quantized entry with the float entry logged last before it
      (a fused float module logs each output twice: its logger is both the last module of the
      nn.Sequential and a forward hook).
  compare_model_stub: [[key, sqnr dB]] for compare_model_stub(fused, quantized, {ConvReLU2d,
      Linear}, x) per batch; ShadowLogger keeps x[0] of a batch, so the SQNR is over the first
      sample of each batch.
SQNRs are 10 log10(sum x^2 / sum (x - y)^2), summed in float64.
"""

import copy
import json
import pathlib
import sys

import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.ns._numeric_suite as ns
import torch.nn as nn
from safetensors.torch import load_file
from torch.ao.quantization import convert, get_default_qconfig, prepare

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from train_digits import ASSETS, TRAIN_SIZE, DigitsNet, load_digits  # noqa: E402

# qgraph computes as PyTorch's fbgemm kernels (the x86 engine rounds some outputs differently).
ENGINE = "fbgemm"
OUT = ROOT / "crates" / "qgraph" / "tests" / "fixtures" / "ns" / "digits_ns.json"


def sqnr(pairs):
    """10 log10(signal / noise) over (reference, other) float tensor pairs, in float64."""
    signal = sum(float((x.double() ** 2).sum()) for x, _ in pairs)
    noise = sum(float(((x.double() - y.double()) ** 2).sum()) for x, y in pairs)
    return float("inf") if noise == 0 else 10 * torch.log10(torch.tensor(signal / noise, dtype=torch.float64)).item()


def deq(t):
    return t.dequantize() if t.is_quantized else t


def main():
    torch.set_num_threads(1)
    torch.backends.quantized.engine = ENGINE
    x, _ = load_digits()
    record = json.loads((ASSETS / "digits_cnn.json").read_text())
    order = torch.tensor(record["split"]["permutation_indices"])
    train, test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]

    fused = DigitsNet()
    fused.load_state_dict(load_file(str(ASSETS / "digits_cnn.safetensors")))
    fused.eval()
    fused.fuse_model()
    prepared = copy.deepcopy(fused)
    prepared.qconfig = get_default_qconfig("x86")
    prepare(prepared, inplace=True)
    with torch.no_grad():
        for batch in train[:256].split(64):
            prepared(x[batch])
    quantized = convert(copy.deepcopy(prepared))
    inputs = [x[b] for b in test[:128].split(64)]

    weights = ns.compare_weights(fused.state_dict(), quantized.state_dict())
    compare_weights = [[k, list(v["float"].shape), sqnr([(v["float"], deq(v["quantized"]))])] for k, v in weights.items()]

    outputs = {}
    for data in inputs:
        with torch.no_grad():
            d = ns.compare_model_outputs(copy.deepcopy(fused), copy.deepcopy(quantized), data)
        for k, v in d.items():
            entry = outputs.setdefault(k, {"float": 0, "quantized": 0, "pairs": []})
            entry["float"] += len(v["float"])
            entry["quantized"] += len(v["quantized"])
            per_output = len(v["float"]) // len(v["quantized"])
            for i, q in enumerate(v["quantized"]):
                entry["pairs"].append((deq(v["float"][(i + 1) * per_output - 1]), deq(q)))
    compare_model_outputs = [[k, e["float"], e["quantized"], sqnr(e["pairs"])] for k, e in outputs.items()]

    stubs = {}
    for data in inputs:
        q = copy.deepcopy(quantized)
        with torch.no_grad():
            d = ns.compare_model_stub(copy.deepcopy(fused), q, {nni.ConvReLU2d, nn.Linear}, data)
        for k, v in d.items():
            stubs.setdefault(k, []).extend((deq(f), deq(qv)) for f, qv in zip(v["float"], v["quantized"]))
    compare_model_stub = [[k, sqnr(pairs)] for k, pairs in stubs.items()]

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "torch": torch.__version__,
        "compare_weights": compare_weights,
        "compare_model_outputs": compare_model_outputs,
        "compare_model_stub": compare_model_stub,
    }, indent=1) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
