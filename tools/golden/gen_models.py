"""Agreement fixtures for whole models: ResNet-18 and MobileNetV2, int8, on 1x3x64x64 inputs.

    ~/.torch-ref/bin/python tools/golden/gen_models.py

Writes crates/qgraph/tests/fixtures/agreement_<model>.safetensors (model: resnet18,
mobilenet_v2) in the format of tools/golden/fixtures.py, then prints how far PyTorch's own "x86"
engine is from "fbgemm" on the same layers (a scale reference; not saved). Deterministic (one
thread, no torch RNG). The fixtures hold no weights: both sides generate them as follows.

Random numbers: r = qtest's random_f32s(numel, seed), in [-1, 1) (tools/xorshift.py).

Weights. Build torchvision.models.quantization.<model>(weights=None, quantize=False). Walk its
state_dict() in order, skipping keys ending in "num_batches_tracked"; the i-th remaining entry
(i = 0, 1, ...; shape S, numel n) gets r = random_f32s(n, seed=i+1), laid out in S row-major,
transformed in f32 arithmetic (every constant an f32, each operation rounded to f32, no FMA):
  key ends in ".weight", rank >= 2 (conv / linear):  r * s, where
        s = (1.0 / sqrt(fan_in as f64)) as f32 and fan_in = n / S[0]  (depthwise 3x3: 9)
  key ends in ".weight", rank 1 (batch norm gamma):  1.0 + 0.1 * r
  key ends in ".bias" (conv / linear / batch norm):  0.1 * r
  key ends in ".running_mean":                       0.1 * r
  key ends in ".running_var":                        0.5 + 0.5 * ((r + 1.0) / 2.0)   (in [0.5, 1))
Batch norms keep eps = 1e-5.

Quantization. eval(), fuse_model(), qconfig = QCONFIG (MinMaxObserver quint8 reduce_range for
activations, PerChannelMinMaxObserver qint8 per-channel symmetric for weights), engine "fbgemm",
prepare, calibrate on random_f32s(3*64*64, seed=500+j) as 1x3x64x64 for j = 0, 1 (in that order),
convert. Test input: random_f32s(3*64*64, seed=999) as 1x3x64x64.

Cases:
  observer  field <path> per prepared module with an activation_post_process (the model's own
            path, e.g. "layer1.0.conv1", "quant", "layer1.0.skip_add_relu"): f64 [scale,
            zero_point] from calculate_qparams(); <path>.range: f32 [min_val, max_val], the range
            it saw (inf, -inf if never called). Params: paths (in named_modules order).
  weights   per converted conv / linear (its path): <path>.scales f64 [out channels], the
            per-channel weight scales; <path>.digest i64 [sum w, sum w * (i mod 251 + 1),
            sum w * w] of the int8 weight in PyTorch's layout, flat index i (the weights
            themselves would be megabytes). Params: paths.
  output    the converted model on the test input. Every leaf module's output (forward hooks;
            a quantized Linear counts as a leaf, its LinearPackedParams child aside; modules
            whose output is their input, such as nn.Identity left by fusion or Dropout, are
            skipped) and every QFunctional add / add_relu call's output (under the
            QFunctional's path): quantized -> <path> int_repr u8 (NCHW), <path>.scale f64 [1],
            <path>.zero_point i64 [1]; float (the DeQuantStub) -> <path> f32. Also "final" (the
            int8 model's output, f32 [1, 1000]), "float" (the float model's) and "fused_float"
            (the fused float model's). Params: order (paths in execution order), sqnr_db (int8
            final vs float, 20 log10(|float| / |float - final|)), top1 (argmax of final),
            top1_float (argmax of float).
  printed   params: converted (str() of the converted model). No tensors.
"""

import copy
import math
import pathlib
import sys
import warnings

import numpy as np
import torch
import torch.ao.quantization as tq
from fixtures import Fixture, capture_outputs
from torch.ao.nn.quantized.modules.linear import LinearPackedParams
from torch.ao.ns.fx.utils import compute_sqnr
from torchvision.models import quantization as qmodels

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from xorshift import random_f32s  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
MODELS = {"resnet18": qmodels.resnet18, "mobilenet_v2": qmodels.mobilenet_v2}
QCONFIG = tq.QConfig(
    activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
    weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
)
F = np.float32


def image(seed):
    return torch.from_numpy(random_f32s(3 * 64 * 64, seed)).reshape(1, 3, 64, 64)


def deterministic_state(model):
    """The state_dict the module docstring's weight formula gives, without num_batches_tracked."""
    entries = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    state = {}
    for i, (key, t) in enumerate(entries):
        r = random_f32s(t.numel(), i + 1)
        if key.endswith(".weight") and t.dim() >= 2:
            v = r * F(1.0 / math.sqrt(t.numel() // t.shape[0]))
        elif key.endswith(".weight"):
            v = F(1.0) + F(0.1) * r
        elif key.endswith(".bias") or key.endswith(".running_mean"):
            v = F(0.1) * r
        elif key.endswith(".running_var"):
            v = F(0.5) + F(0.5) * ((r + F(1.0)) / F(2.0))
        else:
            raise ValueError(f"no formula for {key}")
        state[key] = torch.from_numpy(v).reshape(t.shape)
    return state


def float_model(name):
    model = MODELS[name](weights=None, quantize=False)
    state = model.state_dict()
    state.update(deterministic_state(model))
    model.load_state_dict(state, strict=True)
    return model.eval()


def quantize(model, engine, calibration):
    """Fused, prepared (and calibrated) and converted copies of the float `model`."""
    torch.backends.quantized.engine = engine
    fused = copy.deepcopy(model)
    fused.fuse_model()
    fused.qconfig = QCONFIG
    prepared = tq.prepare(fused)
    for x in calibration:
        prepared(x)
    return fused, prepared, tq.convert(prepared)


def capture(converted, x):
    """Runs `converted` on x; returns its output and {path: output} of its leaves and QFunctional calls, in order."""

    def is_leaf(mod):
        return not isinstance(mod, LinearPackedParams) and all(isinstance(c, LinearPackedParams) for c in mod.children())

    return capture_outputs(converted, x, ["add", "add_relu"], is_leaf)


def output_tensors(outputs):
    tensors = {}
    for path, out in outputs.items():
        if out.is_quantized:
            tensors[path] = out.int_repr()
            tensors[f"{path}.scale"] = torch.tensor([out.q_scale()], dtype=torch.float64)
            tensors[f"{path}.zero_point"] = torch.tensor([out.q_zero_point()], dtype=torch.int64)
        else:
            tensors[path] = out
    return tensors


def weight_digests(converted):
    """The weights case: per-channel scales and integer digests of every quantized weight."""
    paths, tensors = [], {}
    for path, mod in converted.named_modules():
        if not hasattr(mod, "weight") or not callable(mod.weight):
            continue
        w = mod.weight()
        flat = w.int_repr().flatten().long()
        position = torch.arange(flat.numel()) % 251 + 1
        tensors[f"{path}.scales"] = w.q_per_channel_scales().double()
        tensors[f"{path}.digest"] = torch.stack([flat.sum(), (flat * position).sum(), (flat * flat).sum()])
        paths.append(path)
    return {"paths": paths}, tensors


def gen_model(name):
    calibration = [image(500 + j) for j in range(2)]
    x = image(999)
    model = float_model(name)
    fused, prepared, converted = quantize(model, "fbgemm", calibration)
    fx = Fixture("qgraph", f"agreement_{name}")

    paths = [p for p, m in prepared.named_modules() if hasattr(m, "activation_post_process")]
    observed = {}
    for p in paths:
        observer = prepared.get_submodule(p).activation_post_process
        scale, zero_point = observer.calculate_qparams()
        observed[p] = torch.tensor([scale.item(), zero_point.item()], dtype=torch.float64)
        observed[f"{p}.range"] = torch.stack([observer.min_val, observer.max_val]).float()
    fx.case("observer", {"paths": paths}, **observed)
    weight_paths, digests = weight_digests(converted)
    fx.case("weights", weight_paths, **digests)

    printed = str(converted)
    with torch.no_grad():
        reference, fused_reference = model(x), fused(x)
        final, outputs = capture(converted, x)
    sqnr, top1, top1_float = compute_sqnr(reference, final).item(), int(final.argmax()), int(reference.argmax())
    fx.case("output", {"order": list(outputs), "sqnr_db": sqnr, "top1": top1, "top1_float": top1_float},
            final=final, float=reference, fused_float=fused_reference, **output_tensors(outputs))
    fx.case("printed", {"converted": printed})
    fx.save()
    print(f"  {fx.path.stat().st_size} bytes; {len(paths)} observers, {len(outputs)} outputs, "
          f"SQNR {sqnr:.2f} dB, top1 {top1} (float {top1_float})")
    compare_engines(name, model, calibration, x, outputs, final)


def compare_engines(name, model, calibration, x, fbgemm_outputs, fbgemm_final):
    """Prints how far PyTorch's "x86" engine is from "fbgemm" on the same model, layer by layer."""
    _, _, converted = quantize(model, "x86", calibration)
    with torch.no_grad():
        final, outputs = capture(converted, x)
    torch.backends.quantized.engine = "fbgemm"
    differing = 0
    for path, a in fbgemm_outputs.items():
        b = outputs[path]
        if a.is_quantized:
            same_q = (a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point())
            diff = (a.int_repr().int() - b.int_repr().int()).abs()
        else:
            same_q, diff = True, (a - b).abs()
        if diff.max() > 0 or not same_q:
            differing += 1
            print(f"    x86 vs fbgemm {path}: {int((diff > 0).sum())}/{diff.numel()} differ, max {diff.max().item():g}"
                  + ("" if same_q else ", different scale / zero point"))
    print(f"  x86 vs fbgemm: {differing}/{len(outputs)} outputs differ; final max |diff| "
          f"{(final - fbgemm_final).abs().max().item():g}, "
          f"SQNR x86 vs fbgemm {compute_sqnr(fbgemm_final, final).item():.1f} dB")


def main():
    for name in MODELS:
        print(name)
        gen_model(name)


if __name__ == "__main__":
    main()
