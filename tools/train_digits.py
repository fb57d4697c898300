"""Trains the small CNN of the digits demo on scikit-learn's 8x8 digits and records PyTorch's
float and int8 accuracies.

Run with the interpreter that ../shared/tools/torch-env.sh sets up (scikit-learn is not needed:
the data is read from the committed crates/qgraph/assets/digits/digits.csv.gz).

    ~/.torch-ref/bin/python tools/train_digits.py

Writes crates/qgraph/assets/digits/digits_cnn.safetensors (the float state_dict, PyTorch names,
eval-mode running statistics, and the JSON record in its metadata) and digits_cnn.json (the
same record, readable; it lists the permutation, for programs that cannot reproduce
torch.randperm). Deterministic: fixed seed, fixed split, single thread.
"""

import gzip
import json
import pathlib
import re

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torch.ao.quantization import DeQuantStub, QuantStub, convert, fuse_modules, get_default_qconfig, prepare

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "crates" / "qgraph" / "assets" / "digits"
SEED, TRAIN_SIZE, EPOCHS, BATCH, LR = 0, 1437, 40, 64, 3e-3
FUSE = [["0", "1", "2"], ["3", "4", "5"], ["7", "8", "9"]]


class DigitsNet(nn.Module):
    """Conv-BN-ReLU x2, max pool, Conv-BN-ReLU, global average pool, linear: quantizable in eager mode."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc(self.flatten(self.features(self.quant(x)))))

    def fuse_model(self):
        fuse_modules(self.features, FUSE, inplace=True)


def load_digits():
    """Images as float32 N x 1 x 8 x 8 scaled to [0, 1] (pixel / 16), labels as int64."""
    rows = [list(map(int, line.split(","))) for line in gzip.open(ASSETS / "digits.csv.gz", "rt").read().split()]
    data = torch.tensor(rows, dtype=torch.int64)
    return (data[:, :64].float() / 16.0).reshape(-1, 1, 8, 8), data[:, 64]


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x, y = load_digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    train, test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]

    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(EPOCHS):
        model.train()
        for batch in train[torch.randperm(len(train))].split(BATCH):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    # Quantized ops have no "deterministic" flag; single-threaded inference is deterministic anyway.
    torch.use_deterministic_algorithms(False)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    float_acc = accuracy(model, x[test], y[test])
    float_pred = model(x[test]).argmax(1)

    torch.backends.quantized.engine = "x86"
    qmodel = DigitsNet()
    qmodel.load_state_dict(state)
    qmodel.eval()
    qmodel.fuse_model()
    qmodel.qconfig = get_default_qconfig("x86")
    prepare(qmodel, inplace=True)
    with torch.no_grad():
        for batch in train.split(BATCH):
            qmodel(x[batch])
    convert(qmodel, inplace=True)
    int8_acc = accuracy(qmodel, x[test], y[test])
    agreement = (qmodel(x[test]).argmax(1) == float_pred).float().mean().item()

    record = {
        "model": "DigitsNet: quant, features=[Conv2d(1,16,3,p1,no bias), BN, ReLU, Conv2d(16,32,3,p1,no bias), BN, "
                 "ReLU, MaxPool2d(2), Conv2d(32,64,3,p1,no bias), BN, ReLU, AdaptiveAvgPool2d(1)], flatten, "
                 "fc=Linear(64,10), dequant",
        "fuse_modules": {"features": FUSE},
        "input": "pixels / 16.0 as float32, shape N x 1 x 8 x 8",
        "split": {"seed": SEED, "permutation": "torch.randperm(1797, generator=manual_seed(seed))",
                  "train": "first 1437 of the permutation", "test": "last 360",
                  "permutation_indices": order.tolist()},
        "training": {"epochs": EPOCHS, "batch": BATCH, "optimizer": f"Adam(lr={LR})", "seed": SEED},
        "pytorch": {"version": torch.__version__, "float_test_accuracy": float_acc,
                    "int8_test_accuracy": int8_acc, "int8_float_agreement": agreement,
                    "int8_recipe": "fuse_model, get_default_qconfig('x86'), prepare, calibrate on the 1437 "
                                   "training images in batches of 64, convert; engine x86"},
    }
    save_file(state, str(ASSETS / "digits_cnn.safetensors"), metadata={"record": json.dumps(record)})
    # Lists of numbers (the permutation) on one line each.
    text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group())), json.dumps(record, indent=2))
    (ASSETS / "digits_cnn.json").write_text(text + "\n")
    print(json.dumps(record["pytorch"], indent=2))


if __name__ == "__main__":
    main()
