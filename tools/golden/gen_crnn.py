"""A text-recognizer-shaped model, static int8 CNN + dynamic int8 BiLSTM and Linear, in PyTorch.

    ~/.torch-ref/bin/python tools/golden/gen_crnn.py

Writes crates/qgraph/tests/fixtures/crnn.safetensors (format of tools/golden/fixtures.py).
Deterministic: one thread, no torch RNG; the fixture holds no weights, both sides generate them.

Model (CRNN below), input 1 x 1 x 32 x 128 (a grayscale text line):
  quant -> cnn: five Conv2d(3x3, padding 1) + BatchNorm2d + ReLU blocks (1->64, 64->128,
  128->256, 256->256, 256->256) named cnn.0 .. cnn.4 (each an nn.Sequential of conv, bn, relu),
  with MaxPool2d(2, 2) after cnn.0 and cnn.1 (pool0, pool1), MaxPool2d((2, 1)) after cnn.3
  (pool3) and MaxPool2d((4, 1)) after cnn.4 (pool4): 256 x 1 x 32 -> dequant ->
  squeeze(2).permute(2, 0, 1): a sequence of 32 steps, batch 1, 256 features ->
  rnn = LSTM(256, 256, num_layers=2, bidirectional=True) -> its output [32, 1, 512] ->
  fc = Linear(512, 100): logits [32, 1, 100].

Weights: the state_dict() in order, skipping "num_batches_tracked"; entry i (numel n, shape S)
gets r = random_f32s(n, seed=i+1) (tools/xorshift.py), in f32 arithmetic:
  conv / linear ".weight" (rank >= 2):  r * f32(1 / sqrt(n / S[0]))
  LSTM "weight_ih_l*", "weight_hh_l*", "bias_ih_l*", "bias_hh_l*" (and "_reverse"):  r * f32(1 / sqrt(256))
  batch norm ".weight": 1 + 0.1 r; ".bias", ".running_mean": 0.1 r;
  ".running_var": 0.5 + 0.5 ((r + 1) / 2).
  (The same rules as gen_models.py, plus the LSTM's.)

Quantization, as a PyTorch user does it for a CRNN: eval; fuse each cnn block (conv, bn, relu);
qconfig get_default_qconfig("x86") on quant, cnn and dequant only; prepare; calibrate on
random_f32s(32*128, seed=500+j) as 1x1x32x128 for j = 0..3; convert; then
quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=qint8) (default_dynamic_qconfig). Test input:
random_f32s(32*128, seed=999).

Engine "fbgemm": under "x86", PyTorch packs a conv with symmetric weights for oneDNN instead of
FBGEMM on a CPU with AVX512-VNNI (aten/src/ATen/native/quantized/cpu/OnednnUtils.h,
should_use_onednn_quant), and oneDNN's requantization rounds a few outputs the other way (one of
the 8192 features here); without VNNI "x86" is FBGEMM. The dynamic part is checked to give the
same bits under "x86" (its linear layers are FBGEMM's under both engines).

Case "crnn": tensors float (the float model's logits), quantized (the int8 model's logits),
features (int_repr of the CNN's last quantized output, u8, NCHW [1, 256, 1, 32]) with
features.scale / features.zero_point, lstm (the dynamic LSTM's output [32, 1, 512] on PyTorch's
features), lstm.tanh64 and quantized.tanh64 (the same LSTM output and the int8 logits from it,
computed by gen_dynamic_rnn.reference: ATen's path with the f64-rounded tanh). Params:
converted (str() of the converted model), sqnr_db (quantized vs float logits), agreement
(fraction of the 32 steps whose argmax class is the same in both), and PyTorch's latency on the
machine that made the fixture (median of 30 runs after 5 warm-ups, one thread, milliseconds):
torch_float_ms, torch_int8_ms.
"""

import copy
import math
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.ao.quantization as tq
from fixtures import Fixture
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from xorshift import random_f32s  # noqa: E402
from gen_dynamic_rnn import reference, tanh64  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
F = np.float32
HIDDEN = 256
CLASSES = 100
HEIGHT, WIDTH = 32, 128


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class CRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.cnn = nn.Sequential()
        self.cnn.add_module("0", block(1, 64))
        self.cnn.add_module("pool0", nn.MaxPool2d(2, 2))
        self.cnn.add_module("1", block(64, 128))
        self.cnn.add_module("pool1", nn.MaxPool2d(2, 2))
        self.cnn.add_module("2", block(128, 256))
        self.cnn.add_module("3", block(256, 256))
        self.cnn.add_module("pool3", nn.MaxPool2d((2, 1)))
        self.cnn.add_module("4", block(256, 256))
        self.cnn.add_module("pool4", nn.MaxPool2d((4, 1)))
        self.dequant = tq.DeQuantStub()
        self.rnn = nn.LSTM(256, HIDDEN, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * HIDDEN, CLASSES)

    def features(self, x):
        return self.cnn(self.quant(x))

    def forward(self, x):
        f = self.dequant(self.features(x))
        seq = f.squeeze(2).permute(2, 0, 1)
        out, _ = self.rnn(seq)
        return self.fc(out)


def deterministic_state(model):
    entries = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    state = {}
    for i, (key, t) in enumerate(entries):
        r = random_f32s(t.numel(), i + 1)
        leaf = key.rsplit(".", 1)[-1]
        if leaf.startswith(("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")):
            v = r * F(1.0 / math.sqrt(HIDDEN))
        elif leaf == "weight" and t.dim() >= 2:
            v = r * F(1.0 / math.sqrt(t.numel() // t.shape[0]))
        elif leaf == "weight":
            v = F(1.0) + F(0.1) * r
        elif leaf in ("bias", "running_mean"):
            v = F(0.1) * r
        elif leaf == "running_var":
            v = F(0.5) + F(0.5) * ((r + F(1.0)) / F(2.0))
        else:
            raise ValueError(f"no formula for {key}")
        state[key] = torch.from_numpy(v).reshape(t.shape)
    return state


def line(seed):
    return torch.from_numpy(random_f32s(HEIGHT * WIDTH, seed)).reshape(1, 1, HEIGHT, WIDTH)


def median_ms(model, x):
    with torch.no_grad():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def float_model():
    """The float CRNN with the deterministic weights, in eval mode."""
    model = CRNN()
    state = model.state_dict()
    state.update(deterministic_state(model))
    model.load_state_dict(state, strict=True)
    return model.eval()


def static_quantized(model):
    """A copy of `model` with its CNN fused, prepared, calibrated and converted (static int8)."""
    q = copy.deepcopy(model)
    tq.fuse_modules(q, [[f"cnn.{b}.0", f"cnn.{b}.1", f"cnn.{b}.2"] for b in range(5)], inplace=True)
    qconfig = tq.get_default_qconfig("x86")
    for name in ("quant", "cnn", "dequant"):
        getattr(q, name).qconfig = qconfig
    tq.prepare(q, inplace=True)
    with torch.no_grad():
        for j in range(4):
            q(line(500 + j))
    tq.convert(q, inplace=True)
    return q


def main():
    torch.backends.quantized.engine = "fbgemm"
    model = float_model()
    q = static_quantized(model)
    static = copy.deepcopy(q)
    q = tq.quantize_dynamic(q, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    torch.backends.quantized.engine = "x86"
    q_x86 = tq.quantize_dynamic(static, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    torch.backends.quantized.engine = "fbgemm"

    x = line(999)
    with torch.no_grad():
        float_out = model(x)
        quant_out = q(x)
        features = q.features(x)
        seq = q.dequant(features).squeeze(2).permute(2, 0, 1)
        lstm_out, _ = q.rnn(seq)
        torch.backends.quantized.engine = "x86"
        lstm_x86, _ = q_x86.rnn(seq)
        assert torch.equal(lstm_out, lstm_x86) and torch.equal(q.fc(lstm_out), q_x86.fc(lstm_out))
        torch.backends.quantized.engine = "fbgemm"
        # ATen's dynamic LSTM path with PyTorch's ops: with torch.tanh it is PyTorch's output; with
        # the f64-rounded tanh it is what the library computes (NUMERICS sections 12 and 16).
        assert torch.equal(reference(q.rnn, "LSTM", (seq, None), torch.tanh)["output"], lstm_out)
        lstm_tanh64 = reference(q.rnn, "LSTM", (seq, None), tanh64)["output"]
        quant_tanh64 = q.fc(lstm_tanh64)
    noise = (float_out - quant_out).norm()
    sqnr = float(20 * torch.log10(float_out.norm() / noise))
    agreement = float((float_out.argmax(-1) == quant_out.argmax(-1)).float().mean())
    fx = Fixture("qgraph", "crnn")
    fx.case(
        "crnn",
        {
            "converted": str(q),
            "sqnr_db": sqnr,
            "agreement": agreement,
            "torch_float_ms": median_ms(model, x),
            "torch_int8_ms": median_ms(q, x),
        },
        float=float_out,
        quantized=quant_out,
        features=features.int_repr(),
        **{
            "features.scale": torch.tensor([features.q_scale()], dtype=torch.float64),
            "features.zero_point": torch.tensor([features.q_zero_point()], dtype=torch.int64),
        },
        lstm=lstm_out,
        **{"lstm.tanh64": lstm_tanh64, "quantized.tanh64": quant_tanh64},
    )
    fx.save()
    print(q)
    print(f"SQNR {sqnr:.2f} dB, argmax agreement {agreement:.4f}")


if __name__ == "__main__":
    main()
