"""Models quantized in PyTorch, exported with tools/export_quantized.py, and their int8 outputs.

    ~/.torch-ref/bin/python tools/golden/gen_export_quantized.py          # the committed fixtures
    ~/.torch-ref/bin/python tools/golden/gen_export_quantized.py --full   # also full ResNet-18, in target/

Writes, under crates/qgraph/tests/fixtures/pytorch_int8/, for each model NAME:
  NAME.safetensors          the model file written by tools/export_quantized.py;
  NAME_outputs.safetensors  a fixture (tools/golden/fixtures.py) with cases
    input    field x: the test input (f32).
    output   PyTorch's converted model on x: every leaf module's output and every QFunctional
             op's output under the module's path (modules whose output is their input are
             skipped), quantized -> <path> int_repr u8 (NCHW),
             <path>.scale f64 [1], <path>.zero_point i64 [1]; float -> <path> f32; and "final",
             the model's output. Params: order (paths in execution order); for the static
             models also x86_equal_fraction and x86_final_max_abs, PyTorch's own agreement
             between its engines (see below).
    printed  params: converted (str() of the converted model).

Engines. Static models use get_default_qconfig("x86") and are calibrated once; the calibrated
model is then converted under the "fbgemm" engine (exported, run for the outputs above) and,
from a copy, under "x86". Under "x86" on a CPU with AVX512-VNNI, PyTorch packs convolutions with
symmetric weights for oneDNN, which requantizes differently (docs/NUMERICS.md section 17); qgraph
reproduces FBGEMM. x86_equal_fraction is the fraction of all quantized per-module values of the
"x86" model (run under "x86", freely) equal to the "fbgemm" model's; x86_final_max_abs the largest
|difference| of their final outputs. The exported weights and parameters are the same under both.

Models (one thread, torch.manual_seed before each build; batch-norm statistics made
non-trivial by three train-mode passes on random batches, as tools/export_torchvision.py does):
  resnet        torchvision's QuantizableResNet with QuantizableBasicBlock, layers [1, 1, 1, 1],
                its stem and layers narrowed to widths 8, 16, 32, 64 (rebuilt with the class's own
                _make_layer), 10 classes; fuse_model(), get_default_qconfig("x86"), prepare,
                calibrate on four 2x3x64x64 batches (torch.randn), convert. Input 1x3x64x64.
  mobilenet_v2  torchvision's QuantizableMobileNetV2 (width_mult 0.25, 10 classes), as above.
  mobilenet_v3  torchvision's QuantizableMobileNetV3 (mobilenet_v3_large, width_mult 0.25, 10
                classes), as above on 32x32 images (calibration on 2x3x32x32). Input 1x3x32x32.
  ops           Ops below: one of each module and op the exporter maps (conv + bn + relu,
                batch norm, bn + relu, ReLU6, Hardswish, LeakyReLU, ELU, Sigmoid, Tanh,
                Hardsigmoid, QFunctional cat / mul / add_scalar / mul_scalar / add, max, average
                and adaptive pooling, Dropout, Identity, flatten, reshape, Conv1d + ReLU, Linear +
                ReLU, and a Linear with per-tensor weights). Input 1x4x8x8.
  volume        Volume below: Conv3d + ReLU, grouped strided Conv3d, BatchNorm3d + ReLU.
                Input 1x2x4x6x6.
  lstm          nn.LSTM(8, 16, num_layers=2, bidirectional=True) and nn.Linear(32, 5) on its
                output, quantize_dynamic({LSTM, Linear}, qint8). Input 6x2x8 (seq, batch,
                features). Cases as above, except that output holds "lstm" (the LSTM's output
                tensor, f32), "fc" and "final" (f32).
  recurrent     nn.GRU(6, 8, batch_first=True) (per-channel qint8) and nn.Linear(8, 4) (float16)
                on its output, quantize_dynamic. Input 2x5x6. Output case: "final" only.
  cells         LSTMCell(8, 8), GRUCell(8, 8), RNNCell(8, 8, relu) (qint8 per tensor) and a
                fused Linear(8, 4) + ReLU (per-channel qint8), quantize_dynamic. Input 3x8;
                "final" only.
  tables        Embedding(20, 6), EmbeddingBag(20, 6, sum) (quint8) and EmbeddingBag(20, 8,
                sum) (quint4x2), weight-only (prepare / convert with
                float_qparams_weight_only_qconfig[_4bit]), on the same 4x3 int64 indices; outputs
                "final.0", "final.1", "final.2".

With --full, also the full torchvision quantizable ResNet-18 (tools/export_torchvision.py's
seeded weights and statistics, seed 0), quantized as resnet above (calibration on four
1x3x224x224 batches), to target/pytorch_int8/resnet18_int8.safetensors with its fixture
target/pytorch_int8/resnet18_int8_outputs.safetensors (input 1x3x224x224). Not committed.
"""

import argparse
import copy
import sys
import warnings

import torch
import torch.ao.quantization as tq
import torch.ao.nn.quantized as nnq
import torch.ao.nn.intrinsic as nni
import torch.nn as nn
from fixtures import ROOT, Fixture, capture_outputs
from gen_models import output_tensors
from torchvision.models import quantization as qmodels
from torchvision.models.quantization.resnet import QuantizableBasicBlock, QuantizableResNet

sys.path.insert(0, str(ROOT / "tools"))
import export_quantized  # noqa: E402
from export_torchvision import build as build_torchvision  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
FOLDER = "pytorch_int8"


def settle_batch_norms(model, shape):
    """Non-trivial batch-norm statistics: three train-mode passes on random batches."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(*shape))
    return model.eval()


def small_resnet():
    torch.manual_seed(1)
    model = QuantizableResNet(QuantizableBasicBlock, [1, 1, 1, 1], num_classes=10)
    widths = [8, 16, 32, 64]
    model.inplanes = widths[0]
    model.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(widths[0])
    model.layer1 = model._make_layer(QuantizableBasicBlock, widths[0], 1)
    model.layer2 = model._make_layer(QuantizableBasicBlock, widths[1], 1, stride=2)
    model.layer3 = model._make_layer(QuantizableBasicBlock, widths[2], 1, stride=2)
    model.layer4 = model._make_layer(QuantizableBasicBlock, widths[3], 1, stride=2)
    model.fc = nn.Linear(widths[3], 10)
    return settle_batch_norms(model, (4, 3, 64, 64))


def small_mobilenet():
    torch.manual_seed(2)
    model = qmodels.mobilenet_v2(weights=None, quantize=False, width_mult=0.25, num_classes=10)
    return settle_batch_norms(model, (4, 3, 64, 64))


class Ops(nn.Module):
    """One module or op of each kind the exporter maps, on a 1x4x8x8 image."""

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.relu0 = nn.ReLU()
        self.bn = nn.BatchNorm2d(8)
        self.bn_relu = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.relu6 = nn.ReLU6()
        self.hardswish = nn.Hardswish()
        self.leaky = nn.LeakyReLU(0.1)
        self.elu = nn.ELU(0.5)
        self.sigmoid = nn.Sigmoid()
        self.tanh = nn.Tanh()
        self.hardsigmoid = nn.Hardsigmoid()
        self.cat = nnq.FloatFunctional()
        self.mul = nnq.FloatFunctional()
        self.add_scalar = nnq.FloatFunctional()
        self.mul_scalar = nnq.FloatFunctional()
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(3, stride=1, padding=1)
        self.dropout = nn.Dropout(0.1)
        self.identity = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.add = nnq.FloatFunctional()
        self.conv1d = nn.Conv1d(8, 4, 3, stride=4, padding=1)
        self.relu2 = nn.ReLU()
        self.cat2 = nnq.FloatFunctional()
        self.fc = nn.Linear(128, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 5)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu0(self.bn0(self.conv(x)))
        x = self.relu1(self.bn_relu(self.bn(x)))
        a = self.elu(self.leaky(self.hardswish(self.relu6(x))))
        b = self.hardsigmoid(self.tanh(self.sigmoid(x)))
        y = self.cat.cat([a, b], dim=1)
        y = self.mul.mul(y, y)
        y = self.mul_scalar.mul_scalar(self.add_scalar.add_scalar(y, 0.25), 1.5)
        y = self.identity(self.dropout(self.avgpool(self.maxpool(y))))
        y = self.pool(y)
        y = self.add.add(y, y)
        y = y.reshape(y.size(0), -1)
        z = self.relu2(self.conv1d(torch.flatten(x, 2))).flatten(1)
        y = self.cat2.cat([y, z], dim=-1)
        return self.dequant(self.fc2(self.relu3(self.fc(y))))

    def fuse_model(self):
        groups = [["conv", "bn0", "relu0"], ["bn_relu", "relu1"], ["conv1d", "relu2"], ["fc", "relu3"]]
        tq.fuse_modules(self, groups, inplace=True)


def ops_model():
    torch.manual_seed(4)
    model = settle_batch_norms(Ops(), (4, 4, 8, 8))
    model.eval()
    model.fuse_model()
    model.qconfig = tq.get_default_qconfig("x86")
    # Per-tensor weights for the last layer.
    x86 = tq.get_default_qconfig("x86")
    model.fc2.qconfig = tq.QConfig(activation=x86.activation, weight=tq.default_weight_observer)
    return model


class Volume(nn.Module):
    """Conv3d + ReLU, Conv3d, BatchNorm3d + ReLU on a 1x2x4x6x6 volume."""

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv3d(2, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv3d(4, 4, (1, 3, 3), stride=(1, 2, 2), groups=2)
        self.bn = nn.BatchNorm3d(4)
        self.relu2 = nn.ReLU()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.relu1(self.conv1(self.quant(x)))
        return self.dequant(self.relu2(self.bn(self.conv2(x))))

    def fuse_model(self):
        tq.fuse_modules(self, [["conv1", "relu1"], ["bn", "relu2"]], inplace=True)


def volume_model():
    torch.manual_seed(5)
    return settle_batch_norms(Volume(), (2, 2, 4, 6, 6))


def small_mobilenet_v3():
    torch.manual_seed(9)
    model = qmodels.mobilenet_v3_large(weights=None, quantize=False, width_mult=0.25, num_classes=10)
    return settle_batch_norms(model, (4, 3, 32, 32))


def quantize_static(model, input_shape, seed):
    """fuse_model, the x86 qconfig (unless set), prepare, calibrate on four random batches, then
    convert under the "fbgemm" engine and, from a copy of the calibrated model, under "x86"."""
    model.eval()
    if not hasattr(model, "qconfig"):
        model.fuse_model()
        model.qconfig = tq.get_default_qconfig("x86")
    tq.prepare(model, inplace=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(*input_shape))
    converted = {}
    for engine in ("x86", "fbgemm"):
        torch.backends.quantized.engine = engine
        converted[engine] = tq.convert(copy.deepcopy(model))
    return converted


def cross_engine(converted, x):
    """PyTorch's own agreement between its engines: the fraction of the quantized per-module
    outputs of the "x86"-converted model (run under "x86") equal to the "fbgemm" one's, and the
    largest |difference| of the final outputs."""
    with torch.no_grad():
        torch.backends.quantized.engine = "x86"
        final_x86, x86 = capture(converted["x86"], x)
        torch.backends.quantized.engine = "fbgemm"
        final, fbgemm = capture(converted["fbgemm"], x)
    equal = total = 0
    for path, a in fbgemm.items():
        if a.is_quantized:
            equal += int((a.int_repr() == x86[path].int_repr()).sum())
            total += a.numel()
    return {"x86_equal_fraction": equal / total, "x86_final_max_abs": float((final - final_x86).abs().max())}


class LstmHead(nn.Module):
    """A bidirectional two-layer LSTM and a linear head on its output."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out)


def lstm_model():
    torch.manual_seed(3)
    return tq.quantize_dynamic(LstmHead().eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


class Recurrent(nn.Module):
    """A batch-first GRU and a linear head on its output."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.fc(out)


def recurrent_model():
    """GRU with per-channel qint8 weights, a float16 head."""
    torch.manual_seed(6)
    spec = {nn.GRU: tq.per_channel_dynamic_qconfig, nn.Linear: tq.float16_dynamic_qconfig}
    return tq.quantize_dynamic(Recurrent().eval(), spec)


class Cells(nn.Module):
    """LSTMCell, GRUCell, RNNCell (relu) and Linear + ReLU in a chain."""

    def __init__(self):
        super().__init__()
        self.lstm_cell = nn.LSTMCell(8, 8)
        self.gru_cell = nn.GRUCell(8, 8)
        self.rnn_cell = nn.RNNCell(8, 8, nonlinearity="relu")
        self.fc = nn.Linear(8, 4)
        self.relu = nn.ReLU()

    def forward(self, x):
        h, _ = self.lstm_cell(x)
        return self.relu(self.fc(self.rnn_cell(self.gru_cell(h))))


def cells_model():
    """qint8 per-tensor cells, the fused Linear + ReLU with per-channel weights."""
    torch.manual_seed(7)
    model = tq.fuse_modules(Cells().eval(), [["fc", "relu"]])
    spec = {nn.LSTMCell: tq.default_dynamic_qconfig, nn.GRUCell: tq.default_dynamic_qconfig,
            nn.RNNCell: tq.default_dynamic_qconfig, nni.LinearReLU: tq.per_channel_dynamic_qconfig}
    return tq.quantize_dynamic(model, spec)


class Tables(nn.Module):
    """An Embedding and two EmbeddingBags on the same indices; three outputs."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, 6)
        self.bag = nn.EmbeddingBag(20, 6, mode="sum")
        self.bag4 = nn.EmbeddingBag(20, 8, mode="sum")

    def forward(self, indices):
        return self.embedding(indices), self.bag(indices), self.bag4(indices)


def tables_model():
    """quint8 Embedding and EmbeddingBag, quint4x2 EmbeddingBag (weight only)."""
    torch.manual_seed(8)
    model = Tables().eval()
    model.embedding.qconfig = tq.float_qparams_weight_only_qconfig
    model.bag.qconfig = tq.float_qparams_weight_only_qconfig
    model.bag4.qconfig = tq.float_qparams_weight_only_qconfig_4bit
    return tq.convert(tq.prepare(model))


def final_only(model, x):
    return model(x), {}


def save(converted, x, folder, name, outputs_of=None):
    """Exports the model and writes its fixture: input, per-module outputs, printout. Static models
    come converted under both engines ({engine: model}): the "fbgemm" one is exported and run, the
    engine whose arithmetic qgraph's runtime reproduces (docs/NUMERICS.md section 17); how far
    "x86" is from it goes into the output case's parameters."""
    static = isinstance(converted, dict)
    engine_params = cross_engine(converted, x) if static else {}
    model = converted["fbgemm"] if static else converted
    torch.backends.quantized.engine = "fbgemm"
    model_path = folder / f"{name}.safetensors"
    export_quantized.write(export_quantized.export(model, x), model_path)
    with torch.no_grad():
        final, outputs = (outputs_of or capture)(model, x)
    fixture = Fixture("qgraph", f"{FOLDER}/{name}_outputs")
    fixture.path = folder / f"{name}_outputs.safetensors"
    fixture.case("input", {}, x=x)
    finals = {"final": final} if torch.is_tensor(final) else {f"final.{i}": f for i, f in enumerate(final)}
    fixture.case("output", {"order": list(outputs), **engine_params}, **finals, **output_tensors(outputs))
    fixture.case("printed", {"converted": str(model)})
    fixture.save()
    print(f"{model_path.relative_to(ROOT)}: {model_path.stat().st_size} bytes; {engine_params}")


def capture(converted, x):
    """Runs `converted` on x; returns its output and {path: output} of its leaf modules and of every
    QFunctional op, in execution order (gen_models.capture's rule, for every QFunctional op)."""
    return capture_outputs(converted, x, export_quantized.QUANTIZED_OPS, lambda m: type(m) in export_quantized.LEAVES)


def lstm_outputs(model, x):
    out, _ = model.lstm(x)
    fc = model.fc(out)
    return model(x), {"lstm": out, "fc": fc}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also the full ResNet-18 into target/pytorch_int8")
    args = parser.parse_args()
    folder = ROOT / "crates" / "qgraph" / "tests" / "fixtures" / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(100)
    image = torch.randn(1, 3, 64, 64)
    save(quantize_static(small_resnet(), (2, 3, 64, 64), 10), image, folder, "resnet")
    save(quantize_static(small_mobilenet(), (2, 3, 64, 64), 11), image, folder, "mobilenet_v2")
    torch.manual_seed(108)
    v3 = quantize_static(small_mobilenet_v3(), (2, 3, 32, 32), 15)
    save(v3, torch.randn(1, 3, 32, 32), folder, "mobilenet_v3")
    torch.manual_seed(103)
    save(quantize_static(ops_model(), (2, 4, 8, 8), 13), torch.randn(1, 4, 8, 8), folder, "ops")
    torch.manual_seed(104)
    save(quantize_static(volume_model(), (2, 2, 4, 6, 6), 14), torch.randn(1, 2, 4, 6, 6), folder, "volume")
    torch.manual_seed(101)
    save(lstm_model(), torch.randn(6, 2, 8), folder, "lstm", lstm_outputs)
    torch.manual_seed(105)
    save(recurrent_model(), torch.randn(2, 5, 6), folder, "recurrent", final_only)
    torch.manual_seed(106)
    save(cells_model(), torch.randn(3, 8), folder, "cells", final_only)
    torch.manual_seed(107)
    save(tables_model(), torch.randint(0, 20, (4, 3)), folder, "tables", final_only)
    if args.full:
        target = ROOT / "target" / FOLDER
        target.mkdir(parents=True, exist_ok=True)
        model = build_torchvision("resnet18", None, 0)
        torch.manual_seed(102)
        x = torch.randn(1, 3, 224, 224)
        save(quantize_static(model, (1, 3, 224, 224), 12), x, target, "resnet18_int8")


if __name__ == "__main__":
    main()
