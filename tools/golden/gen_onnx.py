"""ONNX exports of torchvision CNNs and a CRNN, with PyTorch's and ONNX Runtime's outputs and
PyTorch's eager int8 quantization of the same models, for crates/qonnx.

    ~/.torch-ref/bin/python tools/golden/gen_onnx.py           # small test fixtures
    ~/.torch-ref/bin/python tools/golden/gen_onnx.py --full    # also full-size models

Models: resnet18, mobilenet_v2, mobilenet_v3_large (torchvision.models.quantization builders,
whose module names equal the plain models') and crnn (small CNN -> BiLSTM -> Linear, the shape of
tools/golden/gen_crnn.py). Weights: torch.manual_seed(0) initialisation, then batch-norm running
statistics made non-trivial by three train-mode forwards on random images.

Small versions (committed, crates/qonnx/tests/fixtures/<name>.onnx, 32x32 inputs): resnet18 at
1/16 width (conv1 and layers 4, 8, 16, 32 channels, all 8 blocks), mobilenet_v2 at width 0.125
with its final 1x1 conv reduced from 1280 to 64 channels, mobilenet_v3_large at width 0.125,
10 classes each; crnn: 1x1x16x32 input, conv blocks 1->8->16 with pools, BiLSTM(16, 16, 2
layers), Linear(32, 10). Full-size versions (--full): target/onnx/<name>.onnx, 224x224
(crnn: 32x128, the widths of gen_crnn.py), 1000 classes, not committed.

Export: torch.onnx.export(..., dynamo=False, training=TrainingMode.PRESERVE,
do_constant_folding=True, opset_version=17), batch dimension dynamic. torch 2.15's default
exporter (dynamo=True) runs the onnxscript optimizer, whose FuseBatchNormIntoConv rule folds
every BatchNormalization into the preceding Conv; the TorchScript exporter in its default EVAL
mode does the same. Folding in ONNX changes the float arithmetic of the model PyTorch's
fuse_modules would quantize, so the fixtures keep BatchNormalization (TorchScript exporter,
PRESERVE with the model in eval mode: BN nodes in inference form, weights folded constants).

Fixture crates/qonnx/tests/fixtures/<name>.safetensors (format of tools/golden/fixtures.py):
  float     input (seeded, xorshift seed 999), torch (PyTorch's float output), ort (ONNX
            Runtime's output on the exported file).
  observer  per prepared module with an activation_post_process, named as qonnx names it
            (skip_add -> add, skip_mul -> mul): [scale, zero_point] and <path>.range [min, max].
            Params: paths.
  output    the converted model on the input: every leaf's and QFunctional's quantized output
            (int_repr u8, <path>.scale f64, <path>.zero_point i64). Params: order.
  (mobilenet_v2: float only, see gen(); crnn: the static part only, quant and cnn; quantization as gen_crnn.py: fuse the conv blocks,
  that qconfig on quant and cnn, calibrate, convert.)
Quantization: fuse_model() (crnn: fuse_modules per block), MinMax quint8 reduce_range activations
and per-channel symmetric qint8 weights (x86's default with MinMax in place of the histogram, so
that the observed ranges determine the parameters), engine x86, prepare, calibrate on xorshift images seeds 500, 501, convert.
"""

import argparse
import copy
import pathlib
import sys
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.ao.quantization as tq
import torchvision
from torch import nn
from torchvision.models import quantization as qmodels
from torchvision.ops.misc import Conv2dNormActivation

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fixtures import ROOT, Fixture, capture_outputs  # noqa: E402
from xorshift import random_f32s  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
# MinMax activations (reduce_range, as x86's default) so that a range [min, max] given to our
# observers reproduces PyTorch's exactly; x86's per-channel symmetric weights.
QCONFIG = tq.QConfig(activation=tq.MinMaxObserver.with_args(reduce_range=True),
                     weight=tq.default_per_channel_weight_observer)
FIXTURES = ROOT / "crates" / "qonnx" / "tests" / "fixtures"


def small_resnet18(quantizable):
    """ResNet-18 at 1/16 width: torchvision's blocks and names, channels 4..32."""
    from torchvision.models import resnet as R
    cls = qmodels.resnet.QuantizableResNet if quantizable else R.ResNet
    block = qmodels.resnet.QuantizableBasicBlock if quantizable else R.BasicBlock
    orig = R.ResNet._make_layer

    def make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if not getattr(self, "_small", False):
            self._small = True
            self.inplanes = 4
            self.conv1 = nn.Conv2d(3, 4, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = self._norm_layer(4)
        return orig(self, block, planes // 16, blocks, stride, dilate)

    R.ResNet._make_layer = make_layer
    try:
        model = cls(block, [2, 2, 2, 2], num_classes=10)
    finally:
        R.ResNet._make_layer = orig
    model.fc = nn.Linear(32, 10)
    del model._small
    return model


def small_mobilenet_v2(quantizable):
    builder = qmodels.mobilenet_v2 if quantizable else torchvision.models.mobilenet_v2
    kw = {"quantize": False} if quantizable else {}
    model = builder(weights=None, width_mult=0.125, num_classes=10, **kw)
    model.features[18] = Conv2dNormActivation(model.features[18][0].in_channels, 64, kernel_size=1,
                                              activation_layer=nn.ReLU6)
    model.classifier[1] = nn.Linear(64, 10)
    return model


def small_mobilenet_v3(quantizable):
    builder = qmodels.mobilenet_v3_large if quantizable else torchvision.models.mobilenet_v3_large
    kw = {"quantize": False} if quantizable else {}
    return builder(weights=None, width_mult=0.125, num_classes=10, **kw)


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class CRNN(nn.Module):
    """quant -> cnn blocks with pools -> dequant -> squeeze(2).permute(2, 0, 1) -> BiLSTM -> fc."""

    def __init__(self, widths, pools, hidden, classes):
        super().__init__()
        self.quant = tq.QuantStub()
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            layers.append(block(cin, cout))
            if pools[i]:
                layers.append(nn.MaxPool2d(pools[i]))
            cin = cout
        self.cnn = nn.Sequential(*layers)
        self.dequant = tq.DeQuantStub()
        self.rnn = nn.LSTM(cin, hidden, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        x = self.dequant(self.cnn(self.quant(x)))
        x = x.squeeze(2).permute(2, 0, 1)
        x, _ = self.rnn(x)
        return self.fc(x)

    def fuse_model(self):
        for name, m in self.cnn.named_children():
            if isinstance(m, nn.Sequential):
                tq.fuse_modules(m, [["0", "1", "2"]], inplace=True)


def small_crnn(_quantizable):
    return CRNN([1, 8, 16], [(2, 1), (8, 1)], 16, 10)


def full_crnn(_quantizable):
    return CRNN([1, 64, 128, 256, 256, 256], [2, 2, None, (2, 1), (4, 1)], 256, 100)


SMALL = {
    "resnet18": (small_resnet18, [1, 3, 32, 32]),
    "mobilenet_v2": (small_mobilenet_v2, [1, 3, 32, 32]),
    "mobilenet_v3_large": (small_mobilenet_v3, [1, 3, 32, 32]),
    "crnn": (small_crnn, [1, 1, 16, 32]),
}
FULL = {
    "resnet18": (lambda q: (qmodels.resnet18(weights=None, quantize=False) if q else torchvision.models.resnet18()),
                 [1, 3, 224, 224]),
    "mobilenet_v2": (lambda q: (qmodels.mobilenet_v2(weights=None, quantize=False) if q
                                else torchvision.models.mobilenet_v2()), [1, 3, 224, 224]),
    "mobilenet_v3_large": (lambda q: (qmodels.mobilenet_v3_large(weights=None, quantize=False) if q
                                      else torchvision.models.mobilenet_v3_large()), [1, 3, 224, 224]),
    "crnn": (full_crnn, [1, 1, 32, 128]),
}


def image(shape, seed):
    n = int(np.prod(shape))
    return torch.from_numpy(np.array(random_f32s(n, seed), dtype=np.float32).reshape(shape))


def seeded(build, shape):
    """The quantizable model with seeded weights and trained BN statistics, and the plain model
    with the same state_dict; both in eval mode."""
    torch.manual_seed(0)
    qmodel = build(True)
    qmodel.train()
    with torch.no_grad():
        for _ in range(3):
            qmodel(torch.randn([4] + shape[1:]))
    qmodel.eval()
    plain = build(False)
    plain.load_state_dict(qmodel.state_dict(), strict=True)
    return qmodel, plain.eval()


def export(model, shape, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if len(shape) == 4 else None)


def our_name(path):
    """qonnx names a FloatFunctional after its op (PyTorch's modules name theirs skip_add, skip_mul)."""
    return path.replace("skip_add", "add").replace("skip_mul", "mul")


def quantize(name, qmodel, calibration):
    torch.backends.quantized.engine = "x86"
    fused = copy.deepcopy(qmodel)
    fused.fuse_model()
    if name == "crnn":
        qconfig = QCONFIG
        fused.quant.qconfig = qconfig
        fused.cnn.qconfig = qconfig
        fused.dequant.qconfig = qconfig
    else:
        fused.qconfig = QCONFIG
    prepared = tq.prepare(fused)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return prepared, tq.convert(copy.deepcopy(prepared))


def capture(converted, x):
    """{path: quantized output} of every leaf module and QFunctional call, in execution order."""
    with torch.no_grad():
        _, outputs = capture_outputs(
            converted, x, ["add", "add_relu", "mul", "cat"], lambda m: len(list(m.children())) == 0, quantized_first_only=True
        )
    return outputs


def gen(name):
    build, shape = SMALL[name]
    qmodel, plain = seeded(build, shape)
    onnx_path = FIXTURES / f"{name}.onnx"
    export(plain, shape, onnx_path)
    x = image(shape, 999)
    with torch.no_grad():
        torch_out = plain(x)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    fx = Fixture("qonnx", name)
    fx.case("float", {}, input=x, torch=torch_out, ort=ort_out)

    if name == "mobilenet_v2":
        # torchvision's quantizable MobileNetV2 replaces every ReLU6 by ReLU (_replace_relu), so it
        # is not the float model exported; its int8 layers are not compared.
        fx.save()
        print(f"  {name}: onnx {onnx_path.stat().st_size} bytes, fixture {fx.path.stat().st_size} bytes")
        return
    calibration = [image(shape, 500 + j) for j in range(2)]
    prepared, converted = quantize(name, qmodel, calibration)
    paths, observed = [], {}
    for p, m in prepared.named_modules():
        if not hasattr(m, "activation_post_process") or isinstance(m, tq.DeQuantStub):
            continue
        observer = m.activation_post_process
        scale, zero_point = observer.calculate_qparams()
        paths.append(our_name(p))
        observed[our_name(p)] = torch.tensor([scale.item(), zero_point.item()], dtype=torch.float64)
        observed[f"{our_name(p)}.range"] = torch.stack([observer.min_val, observer.max_val]).float()
    fx.case("observer", {"paths": paths}, **observed)
    outputs = capture(converted, x)
    tensors = {}
    for p, out in outputs.items():
        tensors[our_name(p)] = out.int_repr()
        tensors[f"{our_name(p)}.scale"] = torch.tensor([out.q_scale()], dtype=torch.float64)
        tensors[f"{our_name(p)}.zero_point"] = torch.tensor([out.q_zero_point()], dtype=torch.int64)
    fx.case("output", {"order": [our_name(p) for p in outputs]}, **tensors)
    fx.save()
    worst = (torch_out - ort_out).abs().max().item() / torch_out.abs().max().item()
    print(f"  {name}: onnx {onnx_path.stat().st_size} bytes, fixture {fx.path.stat().st_size} bytes, "
          f"{len(paths)} observers, {len(outputs)} outputs, ORT vs torch {worst:.2e}")


class Ops(nn.Module):
    """One operator (or a short chain) per case, for the importer's per-operator tests."""

    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for k, m in modules.items():
            setattr(self, k, m)

    def forward(self, x):
        return self.fn(self, x)


def conv(cin, cout, k=3, **kw):
    return nn.Conv2d(cin, cout, k, **kw)


# name -> (module builder, input shape). Each is built after seeding, exported as above and run
# by ONNX Runtime.
OP_CASES = {
    "clip_hardtanh": (lambda: Ops(lambda s, x: torch.clamp(x, -0.5, 0.75)), [2, 3, 4, 5]),
    "relu6_leaky_elu": (lambda: Ops(lambda s, x: s.c(s.a(x)) + s.b(x), a=nn.ReLU6(), b=nn.LeakyReLU(0.1), c=nn.ELU(0.7)),
                        [2, 3, 4, 5]),
    "sigmoid_tanh_hardsigmoid": (lambda: Ops(lambda s, x: s.a(x) * s.b(x) + s.c(x), a=nn.Sigmoid(), b=nn.Tanh(),
                                     c=nn.Hardsigmoid()), [2, 3, 4, 5]),
    "scalar_arithmetic": (lambda: Ops(lambda s, x: (x + 1.5) * 2.0 - 0.25 + x / 4.0), [2, 3, 4, 5]),
    "concat_split_slice": (lambda: Ops(lambda s, x: torch.cat([torch.cat(torch.split(x, [1, 2], dim=1)[::-1], 1),
                                                      x[:, :, 1:3]], 2)), [2, 3, 4, 5]),
    "gather_index": (lambda: Ops(lambda s, x: x[:, 1] + x[:, -1]), [2, 3, 4, 5]),
    "view_flatten_linear": (lambda: Ops(lambda s, x: s.fc(x.view(x.size(0), -1)), fc=nn.Linear(60, 7)), [2, 3, 4, 5]),
    "matmul_linear_3d": (lambda: Ops(lambda s, x: s.fc(x.permute(0, 2, 3, 1)), fc=nn.Linear(3, 6)), [2, 3, 4, 5]),
    "transpose_unsqueeze": (lambda: Ops(lambda s, x: x.transpose(2, 3).unsqueeze(1).squeeze(1)), [2, 3, 4, 5]),
    "softmax_logsoftmax": (lambda: Ops(lambda s, x: torch.softmax(x, dim=1) + torch.log_softmax(x, dim=-1)), [2, 3, 4, 5]),
    "pools": (lambda: Ops(lambda s, x: torch.cat([s.a(x), s.b(x)], 1), a=nn.AvgPool2d(3, 2, 1),
                  b=nn.MaxPool2d(3, 2, 1, ceil_mode=True)), [2, 3, 9, 9]),
    "avgpool_exclude_pad": (lambda: Ops(lambda s, x: s.a(x), a=nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
                            [2, 3, 9, 9]),
    "upsample_nearest": (lambda: Ops(lambda s, x: s.c(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")),
                             c=conv(3, 4, 1)), [2, 3, 4, 5]),
    "upsample_bilinear": (lambda: Ops(lambda s, x: nn.functional.interpolate(x, size=(7, 9), mode="bilinear",
                                                                    align_corners=False)), [2, 3, 4, 5]),
    "pad_constant": (lambda: Ops(lambda s, x: nn.functional.pad(x, (1, 2, 0, 1))), [2, 3, 4, 5]),
    "conv_groups_dilation": (lambda: Ops(lambda s, x: s.c(x), c=conv(4, 8, 3, padding=2, dilation=2, groups=2)),
                             [2, 4, 7, 7]),
    "conv1d_bn": (lambda: Ops(lambda s, x: s.b(s.c(x)), c=nn.Conv1d(3, 5, 3, padding=1), b=nn.BatchNorm1d(5)), [2, 3, 11]),
    "conv_transpose": (lambda: Ops(lambda s, x: s.c(x), c=nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1,
                                                                     output_padding=1)), [2, 3, 4, 5]),
    "gru": (lambda: Ops(lambda s, x: s.g(x.flatten(2).permute(2, 0, 1))[0], g=nn.GRU(3, 6, bidirectional=True)),
            [1, 3, 2, 4]),
    "lstm_forward": (lambda: Ops(lambda s, x: s.l(x.flatten(2).permute(2, 0, 1))[0], l=nn.LSTM(3, 5)), [1, 3, 2, 4]),
    "gemm": (lambda: Ops(lambda s, x: s.fc(torch.flatten(x, 1)), fc=nn.Linear(60, 4)), [2, 3, 4, 5]),
}


# The same models through torch.export (torch 2.15's default exporter): as users run it (its
# optimizer folds batch norms into convolutions) and with optimize=False (batch norms kept, and
# the weight and shape arithmetic the importer folds).
EXPORTER_CASES = {
    "dynamo_resnet18": ("resnet18", {"dynamo": True}),
    "dynamo_crnn": ("crnn", {"dynamo": True}),
    "dynamo_noopt_crnn": ("crnn", {"dynamo": True, "optimize": False}),
}


def gen_ops():
    """crates/qonnx/tests/fixtures/ops/<case>.onnx and ops.safetensors (case: input, ort, torch),
    for OP_CASES and EXPORTER_CASES; two_inputs (a, b, torch_sum, torch_cat, ort_sum, ort_cat)."""
    fx = Fixture("qonnx", "ops")
    for i, (name, (build, shape)) in enumerate(OP_CASES.items()):
        torch.manual_seed(100 + i)
        model = build()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
        model.eval()
        path = FIXTURES / "ops" / f"{name}.onnx"
        export(model, shape, path)
        x = image(shape, 700 + i)
        with torch.no_grad():
            y = model(x)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        fx.case(name, {}, input=x, torch=y, ort=torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]))
    for i, (name, (model_name, kw)) in enumerate(EXPORTER_CASES.items()):
        build, shape = SMALL[model_name]
        _, model = seeded(build, shape)
        path = FIXTURES / "ops" / f"{name}.onnx"
        torch.onnx.export(model, (torch.zeros(shape),), str(path), input_names=["input"], output_names=["output"],
                          verbose=False, **kw)
        x = image(shape, 800 + i)
        with torch.no_grad():
            y = model(x)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        fx.case(name, {}, input=x, torch=y, ort=torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]))
    # Two inputs and two outputs: the graph takes and returns tuples.
    torch.manual_seed(200)
    model = TwoInputs().eval()
    shapes = [[2, 3, 4, 5], [2, 4, 4, 5]]
    path = FIXTURES / "ops" / "two_inputs.onnx"
    torch.onnx.export(model, tuple(torch.zeros(s) for s in shapes), str(path), dynamo=False,
                      do_constant_folding=True, opset_version=17, input_names=["a", "b"],
                      output_names=["sum", "cat"])
    a, b = image(shapes[0], 900), image(shapes[1], 901)
    with torch.no_grad():
        y_sum, y_cat = model(a, b)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o_sum, o_cat = sess.run(None, {"a": a.numpy(), "b": b.numpy()})
    fx.case("two_inputs", {}, a=a, b=b, torch_sum=y_sum, torch_cat=y_cat, ort_sum=torch.from_numpy(o_sum),
            ort_cat=torch.from_numpy(o_cat))
    fx.save()


class TwoInputs(nn.Module):
    """(a, b) -> (conv(a) + b, cat(a, relu(b)))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, a, b):
        return self.conv(a) + b, torch.cat([a, self.relu(b)], 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also write full-size models to target/onnx/")
    args = parser.parse_args()
    for name in SMALL:
        gen(name)
    gen_ops()
    if args.full:
        for name, (build, shape) in FULL.items():
            _, plain = seeded(build, shape)
            path = ROOT / "target" / "onnx" / f"{name}.onnx"
            export(plain, shape, path)
            print(f"  {path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
