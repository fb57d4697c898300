"""Golden fixtures for qgraph's eager workflow (fuse -> prepare -> calibrate -> convert), PyTorch 2.15.

    ~/.torch-ref/bin/python tools/golden/gen_workflow.py

Writes crates/qgraph/tests/fixtures/workflow_seed.safetensors (a Sequential conv-bn-relu model
with a float Linear/Softmax tail, MinMax observers) and workflow_resnet.safetensors (a small
ResNet with FloatFunctional skip connections, get_default_qconfig("x86")), in the format of
tools/golden/fixtures.py. Each file has the same cases:

    float      the float state_dict before fusion (no num_batches_tracked)
    fused      the state_dict after fuse_modules
    calib      the calibration batches "0".."3"
    input      the test input "x" and the float and fused float outputs on it
    observer   per observed module of the prepared model: [scale, zero_point] (f64), .min, .max
               (and .histogram for HistogramObserver)
    quantized  per quantized module of the converted model: weight, bias and output qparams
    output     per module of the converted model, its output on x in execution order; "final"
               is the model's output
    printed    the fused, prepared and converted models as PyTorch prints them

workflow_se.safetensors has the same cases for a MobileNetV3-style squeeze-excitation model
(conv, AdaptiveAvgPool, conv+ReLU, conv, Hardsigmoid, FloatFunctional.mul, x86 default qconfig).

workflow_observations.safetensors (`gen_observations`) counts how often eager `prepare`'s
observers run: small models (a fused ConvReLU2d, LinearReLU, BNReLU2d, Conv+BN+ReLU folded into a
ConvReLU2d, and an unfused Conv2d + ReLU6) with MovingAverageMinMaxObserver(averaging_constant=0.5)
activations, calibrated on three batches. Weights are powers of two and biases small dyadic
numbers, so every float output is exact and the observers' statistics do not depend on the
summation order. Per model: "<model>" holds its float state_dict, "<model>.calib" the batches,
and per observer "<model>:<path>" its calls, min_val and max_val. PyTorch's fused modules are
nn.Sequential subclasses, so the activation_post_process child prepare adds runs as the last
element of the sequence and the forward hook runs it again: fused outputs are observed twice.

Deterministic: fixed seeds, one thread, fbgemm engine.
"""

import warnings

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from fixtures import Fixture
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams
from torch.ao.quantization import DeQuantStub, MinMaxObserver, QConfig, QuantStub

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"


def init_batchnorms(model):
    """Non-trivial running statistics and affine parameters for every BatchNorm, in module order."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n) * 0.1)
                m.running_var.copy_(torch.rand(n) * 0.5 + 0.5)
                m.weight.copy_(1 + torch.randn(n) * 0.1)
                m.bias.copy_(torch.randn(n) * 0.1)


def float_state(model):
    return {k: v.detach().float() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def observer_case(prepared):
    tensors, paths, types = {}, [], {}
    for path, m in prepared.named_modules():
        if not hasattr(m, "activation_post_process"):
            continue
        obs = m.activation_post_process
        scale, zero_point = obs.calculate_qparams()
        tensors[path] = torch.tensor([float(scale), float(zero_point)], dtype=torch.float64)
        tensors[f"{path}.min"] = obs.min_val.reshape(1).float()
        tensors[f"{path}.max"] = obs.max_val.reshape(1).float()
        if isinstance(obs, tq.HistogramObserver):
            tensors[f"{path}.histogram"] = obs.histogram.float()
        paths.append(path)
        types[path] = type(obs).__name__
    return {"paths": paths, "observer_types": types}, tensors


def qparams(scale, zero_point):
    return torch.tensor([scale], dtype=torch.float64), torch.tensor([zero_point], dtype=torch.int64)


def quantized_case(converted):
    tensors, modules = {}, {}
    for path, m in converted.named_modules():
        if hasattr(m, "weight") and callable(m.weight):
            w = m.weight()
            tensors[f"{path}.weight_int"] = w.int_repr()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                tensors[f"{path}.weight_scale"] = w.q_per_channel_scales().double()
                tensors[f"{path}.weight_zero_point"] = w.q_per_channel_zero_points().long()
            else:
                scale, zero_point = qparams(w.q_scale(), w.q_zero_point())
                tensors[f"{path}.weight_scale"], tensors[f"{path}.weight_zero_point"] = scale, zero_point
            if m.bias() is not None:
                tensors[f"{path}.bias"] = m.bias().detach().float()
        elif not isinstance(m, (nnq.Quantize, nnq.QFunctional)):
            continue
        tensors[f"{path}.scale"], tensors[f"{path}.zero_point"] = qparams(float(m.scale), int(m.zero_point))
        modules[path] = type(m).__name__
    return {"modules": modules}, tensors


def output_case(converted, x):
    """Runs x through the converted model, recording each leaf module's (and each QFunctional's) output.

    Quantized Linear holds its weight in a LinearPackedParams child; it counts as a leaf all the same.
    """
    tensors, order = {}, []

    def record(path, out):
        field = path or "final"
        if field in tensors:
            raise RuntimeError(f"module {field} ran twice")
        order.append(field)
        if out.is_quantized:
            tensors[field] = out.int_repr()
            tensors[f"{field}.scale"], tensors[f"{field}.zero_point"] = qparams(out.q_scale(), out.q_zero_point())
        else:
            tensors[field] = out.detach().float()
        return out

    for path, m in converted.named_modules():
        if isinstance(m, nnq.QFunctional):
            # QFunctional's ops bypass forward(), so forward hooks never fire; wrap the ops instead.
            for op in ("add_relu", "mul"):
                setattr(m, op, lambda *args, path=path, run=getattr(m, op): record(path, run(*args)))
        elif path == "" or all(isinstance(c, LinearPackedParams) for c in m.children()):
            m.register_forward_hook(lambda mod, inp, out, path=path: record(path, out))
    with torch.no_grad():
        converted(x)
    return {"order": order}, tensors


def run_workflow(name, model, fuse_lists, calib, x):
    """Fuses, prepares, calibrates and converts `model` (eval mode, qconfig set), writing the fixture."""
    fx = Fixture("qgraph", name)
    fused = tq.fuse_modules(model, fuse_lists)
    prepared = tq.prepare(fused)
    with torch.no_grad():
        for batch in calib:
            prepared(batch)
        float_out, fused_out = model(x), fused(x)
    converted = tq.convert(prepared)

    fx.case("float", {}, **float_state(model))
    fx.case("fused", {}, **float_state(fused))
    fx.case("calib", {}, **{str(i): b for i, b in enumerate(calib)})
    fx.case("input", {}, x=x, float_out=float_out, fused_out=fused_out)
    # Printed before output_case wraps the QFunctionals' ops and hooks the converted model.
    printed = {"fused": str(fused), "prepared": str(prepared), "converted": str(converted)}
    for case, (params, tensors) in [("observer", observer_case(prepared)), ("quantized", quantized_case(converted)),
                                    ("output", output_case(converted, x))]:
        fx.case(case, params, **tensors)
    fx.case("printed", printed)
    fx.save()


def seed_model():
    model = nn.Sequential(QuantStub(), nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), DeQuantStub(), nn.Flatten(),
                          nn.Linear(24 * 28 * 28, 10), nn.Softmax(dim=1))
    init_batchnorms(model)
    model.eval()
    model.qconfig = QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8),
                            weight=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_affine))
    model[9].qconfig = None
    model[10].qconfig = None
    return model


def gen_seed():
    torch.manual_seed(0)
    model = seed_model()
    calib = [torch.rand(2, 3, 28, 28) for _ in range(4)]
    x = torch.rand(2, 3, 28, 28)
    run_workflow("workflow_seed", model, [["1", "2", "3"], ["4", "5", "6"]], calib, x)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.skip_add_relu = nnq.FloatFunctional()

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.skip_add_relu.add_relu(out, identity)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.quant(x)))))
        x = self.layer2(self.layer1(x))
        return self.dequant(self.fc(self.flatten(self.avgpool(x))))


def gen_resnet():
    torch.manual_seed(0)
    model = Net()
    init_batchnorms(model)
    model.eval()
    model.qconfig = tq.get_default_qconfig("x86")
    calib = [torch.randn(2, 3, 32, 32) for _ in range(4)]
    x = torch.randn(2, 3, 32, 32)
    fuse_lists = [["conv1", "bn1", "relu"], ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu"],
                  ["layer1.0.conv2", "layer1.0.bn2"], ["layer2.0.conv1", "layer2.0.bn1", "layer2.0.relu"],
                  ["layer2.0.conv2", "layer2.0.bn2"], ["layer2.0.downsample.0", "layer2.0.downsample.1"]]
    run_workflow("workflow_resnet", model, fuse_lists, calib, x)


class SqueezeExcitation(nn.Module):
    """torchvision's MobileNetV3 squeeze-excitation after a stem conv: scale = hardsigmoid(fc2(relu(fc1(
    avgpool(x))))), out = x * scale (a FloatFunctional mul, as torchvision's quantizable version)."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(16, 8, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(8, 16, 1)
        self.scale_activation = nn.Hardsigmoid()
        self.skip_mul = nnq.FloatFunctional()
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv(self.quant(x))
        scale = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return self.dequant(self.skip_mul.mul(x, scale))


def gen_se():
    torch.manual_seed(0)
    model = SqueezeExcitation().eval()
    model.qconfig = tq.get_default_qconfig("x86")
    calib = [torch.randn(2, 3, 12, 12) for _ in range(4)]
    x = torch.randn(2, 3, 12, 12)
    run_workflow("workflow_se", model, [["fc1", "relu"]], calib, x)


def observation_models():
    """(name, model, fuse list, input shape): Sequential(QuantStub, layers..., DeQuantStub)."""
    conv = lambda: nn.Conv2d(1, 4, 1)  # noqa: E731
    yield "conv_relu", [conv(), nn.ReLU()], ["1", "2"], (2, 1, 5, 5)
    yield "linear_relu", [nn.Linear(1, 4), nn.ReLU()], ["1", "2"], (6, 1)
    yield "bn_relu", [nn.BatchNorm2d(4, eps=0.0), nn.ReLU()], ["1", "2"], (2, 4, 3, 3)
    yield "conv_bn_relu", [conv(), nn.BatchNorm2d(4, eps=0.0), nn.ReLU()], ["1", "2", "3"], (2, 1, 5, 5)
    yield "conv_relu6", [conv(), nn.ReLU6()], None, (2, 1, 5, 5)


def exact_parameters(model):
    """Weights +-2^k, biases and BN statistics small dyadic numbers, variances 1/4 (eps 0): every
    product is exact and every sum rounds once, in any order."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                sign = torch.randint(0, 2, p.shape, generator=gen) * 2 - 1
                p.copy_(sign * 2.0 ** torch.randint(-2, 2, p.shape, generator=gen))
            else:
                p.copy_(torch.randint(-8, 9, p.shape, generator=gen) / 16)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randint(-8, 9, (m.num_features,), generator=gen) / 16)
                m.running_var.fill_(0.25)


def gen_observations():
    torch.manual_seed(0)
    fx = Fixture("qgraph", "workflow_observations")
    qconfig = QConfig(activation=tq.MovingAverageMinMaxObserver.with_args(averaging_constant=0.5),
                      weight=tq.default_weight_observer)
    for name, layers, fuse, shape in observation_models():
        model = nn.Sequential(QuantStub(), *layers, DeQuantStub())
        exact_parameters(model)
        model.eval()
        fx.case(name, {"fuse": fuse, "shape": list(shape)}, **float_state(model))
        fused = tq.fuse_modules(model, [fuse]) if fuse else model
        fused.qconfig = qconfig
        prepared = tq.prepare(fused)
        calls = {}
        for path, m in prepared.named_modules():
            if path.endswith("activation_post_process"):
                calls[path] = 0
                m.register_forward_hook(lambda mod, inp, out, path=path: calls.__setitem__(path, calls[path] + 1))
        calib = [torch.randn(shape) for _ in range(3)]
        with torch.no_grad():
            for batch in calib:
                prepared(batch)
        fx.case(f"{name}.calib", {}, **{str(i): b for i, b in enumerate(calib)})
        for path, count in calls.items():
            obs = prepared.get_submodule(path)
            fx.case(f"{name}:{path}", {"calls": count, "batches": len(calib), "type": type(obs).__name__},
                    min=obs.min_val.reshape(1), max=obs.max_val.reshape(1))
            print(f"{name}: {path} observed {count} times in {len(calib)} batches")
    fx.save()


if __name__ == "__main__":
    gen_seed()
    gen_resnet()
    gen_se()
    gen_observations()
