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

    for path, m in converted.named_modules():
        if isinstance(m, nnq.QFunctional):
            # QFunctional's ops bypass forward(), so forward hooks never fire; wrap add_relu instead.
            def add_relu(a, b, path=path, op=m.add_relu):
                out = op(a, b)
                record(path, out)
                return out

            m.add_relu = add_relu
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
    # Printed before output_case wraps the QFunctionals' add_relu and hooks the converted model.
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


if __name__ == "__main__":
    gen_seed()
    gen_resnet()
