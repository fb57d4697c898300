"""Models quantized in PyTorch, exported with tools/export_quantized.py, and their int8 outputs.

    ~/.torch-ref/bin/python tools/golden/gen_export_quantized.py          # the committed fixtures
    ~/.torch-ref/bin/python tools/golden/gen_export_quantized.py --full   # also full ResNet-18, in target/

Writes, under crates/qgraph/tests/fixtures/pytorch_int8/, for each model NAME:
  NAME.safetensors          the model file written by tools/export_quantized.py;
  NAME_outputs.safetensors  a fixture (tools/golden/fixtures.py) with cases
    input    field x: the test input (f32).
    output   PyTorch's converted model on x: every leaf module's output and every QFunctional
             add / add_relu call's output under the module's path (gen_models.capture: modules
             whose output is their input are skipped), quantized -> <path> int_repr u8 (NCHW),
             <path>.scale f64 [1], <path>.zero_point i64 [1]; float -> <path> f32; and "final",
             the model's output. Params: order (paths in execution order).
    printed  params: converted (str() of the converted model).

Models (one thread, engine "x86", torch.manual_seed before each build; batch-norm statistics made
non-trivial by three train-mode passes on random batches, as tools/export_torchvision.py does):
  resnet        torchvision's QuantizableResNet with QuantizableBasicBlock, layers [1, 1, 1, 1],
                its stem and layers narrowed to widths 8, 16, 32, 64 (rebuilt with the class's own
                _make_layer), 10 classes; fuse_model(), get_default_qconfig("x86"), prepare,
                calibrate on four 2x3x64x64 batches (torch.randn), convert. Input 1x3x64x64.
  mobilenet_v2  torchvision's QuantizableMobileNetV2 (width_mult 0.25, 10 classes), as above.
  lstm          nn.LSTM(8, 16, num_layers=2, bidirectional=True) and nn.Linear(32, 5) on its
                output, quantize_dynamic({LSTM, Linear}, qint8). Input 6x2x8 (seq, batch,
                features). Cases as above, except that output holds "lstm" (the LSTM's output
                tensor, f32), "fc" and "final" (f32).

With --full, also the full torchvision quantizable ResNet-18 (tools/export_torchvision.py's
seeded weights and statistics, seed 0), quantized as resnet above (calibration on four
1x3x224x224 batches), to target/pytorch_int8/resnet18_int8.safetensors with its fixture
target/pytorch_int8/resnet18_int8_outputs.safetensors (input 1x3x224x224). Not committed.
"""

import argparse
import pathlib
import sys
import warnings

import torch
import torch.ao.quantization as tq
import torch.nn as nn
from fixtures import ROOT, Fixture
from gen_models import capture, output_tensors
from torchvision.models import quantization as qmodels
from torchvision.models.quantization.resnet import QuantizableBasicBlock, QuantizableResNet

sys.path.insert(0, str(ROOT / "tools"))
import export_quantized  # noqa: E402
from export_torchvision import build as build_torchvision  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.backends.quantized.engine = "x86"
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


def quantize_static(model, input_shape, seed):
    """fuse_model, the x86 qconfig, prepare, calibrate on four random batches, convert."""
    model.eval()
    model.fuse_model()
    model.qconfig = tq.get_default_qconfig("x86")
    tq.prepare(model, inplace=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(*input_shape))
    return tq.convert(model)


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


def save(converted, x, folder, name, outputs_of):
    """Exports `converted` and writes its fixture: input, per-module outputs, printout."""
    model_path = folder / f"{name}.safetensors"
    export_quantized.write(export_quantized.export(converted, x), model_path)
    with torch.no_grad():
        final, outputs = outputs_of(converted, x)
    fixture = Fixture("qgraph", f"{FOLDER}/{name}_outputs")
    fixture.path = folder / f"{name}_outputs.safetensors"
    fixture.case("input", {}, x=x)
    fixture.case("output", {"order": list(outputs)}, final=final, **output_tensors(outputs))
    fixture.case("printed", {"converted": str(converted)})
    fixture.save()
    print(f"{model_path.relative_to(ROOT)}: {model_path.stat().st_size} bytes")


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
    save(quantize_static(small_resnet(), (2, 3, 64, 64), 10), image, folder, "resnet", capture)
    save(quantize_static(small_mobilenet(), (2, 3, 64, 64), 11), image, folder, "mobilenet_v2", capture)
    torch.manual_seed(101)
    save(lstm_model(), torch.randn(6, 2, 8), folder, "lstm", lstm_outputs)
    if args.full:
        target = ROOT / "target" / FOLDER
        target.mkdir(parents=True, exist_ok=True)
        model = build_torchvision("resnet18", None, 0)
        torch.manual_seed(102)
        x = torch.randn(1, 3, 224, 224)
        save(quantize_static(model, (1, 3, 224, 224), 12), x, target, "resnet18_int8", capture)


if __name__ == "__main__":
    main()
