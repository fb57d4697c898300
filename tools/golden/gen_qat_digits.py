"""Quantization-aware training of the digits demo's model in PyTorch 2.15: the recipes, their
accuracies and golden tensors for qfake's QAT of the same model.

    ~/.torch-ref/bin/python tools/golden/gen_qat_digits.py

The model, data, split and float weights are those of tools/train_digits.py
(crates/qgraph/assets/digits/: DigitsNet, digits.csv.gz, digits_cnn.safetensors, and the split
permutation in digits_cnn.json: train = its first 1437 indices, test = the last 360). Engine
"x86", one thread. Every recipe starts from the float checkpoint.

Recipes:
  ptq8   eval, fuse_modules(features, FUSE), get_default_qconfig("x86"), prepare, calibrate on the
         training images in split order in batches of 64, convert.
  ptq4   the same with weight = PerChannelMinMaxObserver(qint8, per_channel_symmetric, -8..7).
  qat8   train(), fuse_modules_qat(features, FUSE), qconfig get_default_qat_qconfig("x86"),
         prepare_qat; SGD(lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY) over model.parameters()
         (created after prepare_qat); EPOCHS epochs; at the start of epoch e (0-based):
         if e >= FREEZE_BN_EPOCH: model.apply(freeze_bn_stats); if e >= DISABLE_OBSERVER_EPOCH:
         model.apply(disable_observer); then model.train(); the epoch's order is
         train[torch.randperm(1437, generator=torch.Generator().manual_seed(1000 + e))], split
         into batches of 64 (the last has 29); per batch: zero_grad, loss = F.cross_entropy(model(x),
         y) (mean), backward, step. After each epoch the QAT model's test accuracy is measured on
         copy.deepcopy(model).eval() (a copy: an eval forward still moves enabled observers, and
         the training run must not see the test set). At the end: the QAT model's accuracy (on a
         copy, in eval mode) and that of convert(copy.deepcopy(model).eval()).
  qat4   as qat8 with weight = FusedMovingAvgObsFakeQuantize.with_args(observer=
         MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7, dtype=torch.qint8,
         qscheme=torch.per_channel_symmetric) and the x86 QAT default activation.

crates/qfake/tests/fixtures/qat_digits.json: "recipe" (every hyperparameter, freeze epochs,
qconfig reprs), "epoch_permutations" (per epoch, the randperm(1437) before indexing the training
part), "losses" {qat8, qat4: every step's loss, Python floats}, "epoch_accuracy" {qat8, qat4:
QAT-model test accuracy after each epoch, counts out of 360}, "accuracy" {float, ptq8, ptq4,
qat8_model, qat8_converted, qat4_model, qat4_converted; counts out of 360}, "pytorch_epoch_seconds"
(median of 3 timings of qat8's first epoch from the prepared model), "cpu", "torch",
"engine_check" (per recipe and layer, how many output elements "fbgemm" gives differently from
"x86" on the same quantized input).

crates/qfake/tests/fixtures/qat_digits.safetensors (tools/golden/fixtures.py format), cases:
  qat8, qat4:
    loss                      f32 [steps], every step's loss
    grad1.<name>              f32, every parameter's gradient after the first backward (names of
                              the QAT model's named_parameters(), e.g. "features.0.weight",
                              "features.0.bn.weight", "fc.bias")
    param10.<name>            f32, the parameters after the tenth optimizer step (qat8 only)
    final.<name>              the whole final state_dict (parameters, BN buffers incl.
                              num_batches_tracked i64, fake quantizers' scale f32, zero_point
                              i32, fake_quant_enabled / observer_enabled i64, observers' min_val,
                              max_val, eps f32), names as PyTorch's state_dict
  qat8_layers, qat4_layers: the converted model on the first 32 test images (test[:32]), one
    record per quantized layer L in LAYERS (quant, features.0, features.3, features.7, fc):
    L.input (f32 for quant, else u8 int_repr), L.input.scale (f64 [1]), L.input.zero_point
    (i64 [1]) (absent for quant), L (u8 int_repr of the output, NCHW / [N, 10]), L.scale,
    L.zero_point; "final" f32 [32, 10] the model's dequantized output; "labels" i64 [32].
    Params: layers, images (the dataset indices), input_of (which earlier output each input
    equals: features.0's input is quant's output, features.3's is features.0's).
To keep the files under 900 KB, the parameters after step 10 are recorded for qat8 only (the
optimizer is the same in both recipes), and those after step 1 not at all: with momentum buffers
starting empty, step 1 is p - lr * (grad1 + weight_decay * p) from the float checkpoint and grad1.
"""

import copy
import json
import pathlib
import re
import statistics
import sys
import time
import warnings

import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.quantization as tq
import torch.nn.functional as F
from fixtures import Fixture, made_on
from safetensors.torch import load_file
from gen_qat_modules import X86, X86_4BIT
from torch.ao.quantization.observer import PerChannelMinMaxObserver

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from train_digits import ASSETS, FUSE, DigitsNet, load_digits  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.backends.quantized.engine = "x86"

TRAIN_SIZE, BATCH = 1437, 64
LR, MOMENTUM, WEIGHT_DECAY = 4e-3, 0.9, 1e-5
EPOCHS, FREEZE_BN_EPOCH, DISABLE_OBSERVER_EPOCH = 5, 2, 3
PERM_SEED = 1000
LAYERS = ["quant", "features.0", "features.3", "features.7", "fc"]
INPUT_OF = {"features.0": "quant", "features.3": "features.0"}
RECORD_IMAGES = 32

PTQ8 = tq.get_default_qconfig("x86")
PTQ4 = tq.QConfig(
    activation=PTQ8.activation,
    weight=PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-8, quant_max=7
    ),
)
# get_default_qat_qconfig("x86"), and the same with the 4-bit per-channel weight fake quantizer.
QAT8, QAT4 = X86, X86_4BIT


class Data:
    def __init__(self):
        self.x, self.y = load_digits()
        record = json.loads((ASSETS / "digits_cnn.json").read_text())
        order = torch.tensor(record["split"]["permutation_indices"])
        self.train, self.test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
        self.state = load_file(str(ASSETS / "digits_cnn.safetensors"))

    def float_model(self):
        model = DigitsNet()
        model.load_state_dict(self.state)
        return model

    def accuracy(self, model):
        with torch.no_grad():
            return int((model(self.x[self.test]).argmax(1) == self.y[self.test]).sum())


def epoch_permutation(epoch):
    return torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(PERM_SEED + epoch))


def ptq(data, qconfig):
    model = data.float_model().eval()
    model.fuse_model()
    model.qconfig = qconfig
    tq.prepare(model, inplace=True)
    with torch.no_grad():
        for batch in data.train.split(BATCH):
            model(data.x[batch])
    return data.accuracy(tq.convert(model))


def prepared_qat(data, qconfig):
    model = data.float_model().train()
    tq.fuse_modules_qat(model.features, FUSE, inplace=True)
    model.qconfig = qconfig
    tq.prepare_qat(model, inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return model, optimizer


def run_epoch(data, model, optimizer, epoch, on_step=None):
    if epoch >= FREEZE_BN_EPOCH:
        model.apply(nniqat.freeze_bn_stats)
    if epoch >= DISABLE_OBSERVER_EPOCH:
        model.apply(tq.disable_observer)
    model.train()
    losses = []
    for batch in data.train[epoch_permutation(epoch)].split(BATCH):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data.x[batch]), data.y[batch])
        loss.backward()
        if on_step is not None:
            on_step("grad", len(losses) + 1)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step("param", len(losses))
    return losses


def qat(data, qconfig, full_record):
    model, optimizer = prepared_qat(data, qconfig)
    tensors = {}

    def on_step(when, step):
        params = dict(model.named_parameters())
        if when == "grad" and step == 1:
            tensors.update({f"grad1.{n}": p.grad.detach().clone() for n, p in params.items()})
        if when == "param" and full_record and step == 10:
            tensors.update({f"param{step}.{n}": p.detach().clone() for n, p in params.items()})

    losses, accuracies = [], []
    for epoch in range(EPOCHS):
        # run_epoch counts steps within the epoch; on_step takes them counted from the first.
        done = len(losses)
        losses += run_epoch(data, model, optimizer, epoch, lambda when, step: on_step(when, done + step))
        accuracies.append(data.accuracy(copy.deepcopy(model).eval()))
    tensors.update({f"final.{n}": t.detach().clone() for n, t in model.state_dict().items()})
    tensors["loss"] = torch.tensor(losses, dtype=torch.float32)
    converted = tq.convert(copy.deepcopy(model).eval())
    return {
        "model": model,
        "converted": converted,
        "tensors": tensors,
        "losses": losses,
        "epoch_accuracy": accuracies,
        "model_accuracy": accuracies[-1],
        "converted_accuracy": data.accuracy(converted),
    }


def layer_record(converted, x):
    """Each LAYERS module's quantized input and output on x (forward hooks)."""
    seen = {}
    handles = [
        converted.get_submodule(path).register_forward_hook(
            lambda m, inputs, out, path=path: seen.update({path: (inputs[0], out)})
        )
        for path in LAYERS
    ]
    with torch.no_grad():
        final = converted(x)
    for h in handles:
        h.remove()
    tensors = {"final": final}
    for path, (inp, out) in seen.items():
        if inp.is_quantized:
            if path not in INPUT_OF:
                tensors[f"{path}.input"] = inp.int_repr()
            tensors[f"{path}.input.scale"] = torch.tensor([inp.q_scale()], dtype=torch.float64)
            tensors[f"{path}.input.zero_point"] = torch.tensor([inp.q_zero_point()], dtype=torch.int64)
        else:
            tensors[f"{path}.input"] = inp
        tensors[path] = out.int_repr()
        tensors[f"{path}.scale"] = torch.tensor([out.q_scale()], dtype=torch.float64)
        tensors[f"{path}.zero_point"] = torch.tensor([out.q_zero_point()], dtype=torch.int64)
    return tensors, seen


def engine_check(model, seen):
    """Per layer: output elements "fbgemm" computes differently from "x86" on x86's own input."""
    torch.backends.quantized.engine = "fbgemm"
    fbgemm = tq.convert(copy.deepcopy(model).eval())
    counts = {}
    with torch.no_grad():
        for path, (inp, out) in seen.items():
            other = fbgemm.get_submodule(path)(inp)
            counts[path] = int((other.int_repr() != out.int_repr()).sum())
    torch.backends.quantized.engine = "x86"
    return counts


def epoch_seconds(data):
    """Median of three timings of qat8's first epoch, each from a freshly prepared model."""
    times = []
    for _ in range(3):
        model, optimizer = prepared_qat(data, QAT8)
        start = time.perf_counter()
        run_epoch(data, model, optimizer, 0)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main():
    data = Data()
    float_model = data.float_model().eval()
    accuracy = {"float": data.accuracy(float_model), "ptq8": ptq(data, PTQ8), "ptq4": ptq(data, PTQ4)}
    fx = Fixture("qfake", "qat_digits")
    images = data.test[:RECORD_IMAGES]
    record_x = data.x[images]
    losses, epoch_accuracy, engines = {}, {}, {}
    for name, qconfig, full in [("qat8", QAT8, True), ("qat4", QAT4, False)]:
        result = qat(data, qconfig, full)
        accuracy[f"{name}_model"] = result["model_accuracy"]
        accuracy[f"{name}_converted"] = result["converted_accuracy"]
        losses[name] = result["losses"]
        epoch_accuracy[name] = result["epoch_accuracy"]
        fx.case(name, {"qconfig": repr(qconfig), "steps": len(result["losses"])}, **result["tensors"])
        layers, seen = layer_record(result["converted"], record_x)
        engines[name] = engine_check(result["model"], seen)
        fx.case(
            f"{name}_layers",
            {"layers": LAYERS, "images": images.tolist(), "input_of": INPUT_OF},
            labels=data.y[images],
            **layers,
        )
        print(f"  {name}: epochs {result['epoch_accuracy']}, converted {result['converted_accuracy']}, "
              f"fbgemm vs x86 {engines[name]}")
    median, times = epoch_seconds(data)
    record = {
        "recipe": {
            "source": "tools/golden/gen_qat_digits.py (module docstring)",
            "float_checkpoint": "crates/qgraph/assets/digits/digits_cnn.safetensors",
            "split": "digits_cnn.json split.permutation_indices: train = first 1437, test = last 360",
            "fuse": {"features": FUSE},
            "engine": "x86",
            "threads": 1,
            "ptq": {"calibration": "training images in split order, batches of 64",
                    "ptq8_qconfig": repr(PTQ8), "ptq4_qconfig": repr(PTQ4)},
            "qat": {
                "optimizer": "torch.optim.SGD(model.parameters(), lr, momentum, weight_decay) after prepare_qat",
                "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "dampening": 0,
                "nesterov": False, "scheduler": None, "batch": BATCH, "epochs": EPOCHS,
                "loss": "F.cross_entropy (mean)",
                "epoch_order": f"train[torch.randperm(1437, generator=torch.Generator().manual_seed({PERM_SEED} + "
                               "epoch))], epoch 0-based",
                "freeze_bn_stats_from_epoch": FREEZE_BN_EPOCH,
                "disable_observer_from_epoch": DISABLE_OBSERVER_EPOCH,
                "toggles": "applied at the start of each epoch from that epoch on (0-based), then model.train()",
                "epoch_accuracy": "copy.deepcopy(model).eval() on the 360 test images after each epoch",
                "qat8_qconfig": repr(QAT8), "qat4_qconfig": repr(QAT4),
            },
        },
        "accuracy": accuracy,
        "accuracy_of": 360,
        "epoch_accuracy": epoch_accuracy,
        "pytorch_epoch_seconds": median,
        "pytorch_epoch_seconds_all": times,
        "engine_check": engines,
        "torch": torch.__version__,
        **made_on(),
        "losses": losses,
        "epoch_permutations": [epoch_permutation(e).tolist() for e in range(EPOCHS)],
    }
    fx.save()
    # Lists of numbers on one line each; floats printed with repr (round-trip exact).
    text = re.sub(r"\[[-\d.e,\s]*\]", lambda m: json.dumps(json.loads(m.group())), json.dumps(record, indent=2))
    json_path = fx.path.with_suffix(".json")
    json_path.write_text(text + "\n")
    print(json.dumps({k: record[k] for k in ["accuracy", "pytorch_epoch_seconds", "pytorch_epoch_seconds_all"]}))
    print(f"  {fx.path.stat().st_size} + {json_path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
