"""PyTorch's side of the `models` benchmark family (tools/bench/README.md, rule 5).

    ~/.torch-ref/bin/python tools/bench/torch_models.py --threads N --out FILE \\
        [--models resnet18,resnet50,mobilenet_v2] [--weights-dir DIR] [--batch B]

Times whole torchvision models on a Bx3x224x224 input (B = 1 unless --batch), with
torch.set_num_threads(N):
  float  torchvision.models.quantization.<model>(weights=None, quantize=False), eval, under
         torch.inference_mode;
  int8   the same model and weights, eval, fuse_model(), qconfig get_default_qconfig("x86"),
         engine "x86", prepare, calibration on CALIBRATION_IMAGES, convert.
The float weights are DIR/<model>.safetensors as written by tools/export_torchvision.py if that
file exists, else export_torchvision.build(model, None, seed=0) run once here (what
export_torchvision.py writes without --weights).

Calibration images (the Rust side uses the same): image i in 0..4 is qtest's
random_f32s(3*224*224, seed=1000+i) reshaped to 1x3x224x224. Calibration is the same whatever B.
Image j of the timed batch is image j mod 4 (so batch 1 is image 0). Timing (timing.median_ns): at
least 1 s and 10 samples at batch 1, 1 s and 5 samples for B > 1.

Each (model, float|int8) is measured in a fresh subprocess, so that its memory is its own.
Cases are models/<model>_<float|int8> at batch 1 and models/<model>_<float|int8>_b<B> for B > 1
(so that batch-1 JSON stays comparable with older runs); below, <case> is one of these.
Output JSON (all byte counts are bytes; every value is a number, so the file also parses as the
{"<group>/<case>": {"<engine>": median_ns}} map xtask reads, which ignores the extra groups):
  {"<case>": {"torch": median_ns},   # one batch's time; xtask appends /t<N>, as for all families
   ...,
   "memory":    {"<case>": bytes},  # peak RSS while running inference (VmHWM, reset after the
                #   model is built) minus the RSS after imports and inputs (VmRSS)
   "peak_rss":  {"<case>": bytes},  # the subprocess's peak RSS (VmHWM) over its whole life,
                #   building (and calibrating) the model included; absolute, not a delta (not
                #   ru_maxrss, which a subprocess inherits from its forking parent)
   "file_size": {"<case>": bytes}}  # len of torch.save(model.state_dict())
"""

import argparse
import ctypes
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import warnings

import torch
from safetensors.torch import load_file, save_file
from timing import median_ns

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from export_torchvision import BUILDERS, build  # noqa: E402
from xorshift import random_f32s  # noqa: E402

warnings.filterwarnings("ignore")
MODELS = ["resnet18", "resnet50", "mobilenet_v2"]
KINDS = ["float", "int8"]


def calibration_images():
    return [torch.from_numpy(random_f32s(3 * 224 * 224, 1000 + i)).reshape(1, 3, 224, 224) for i in range(4)]


def batch_input(images, batch):
    """The timed input, Bx3x224x224: image j is images[j % len(images)]."""
    return torch.cat([images[j % len(images)] for j in range(batch)])


def case_key(name, kind, batch):
    """models/<model>_<kind>, with _b<B> for batches above 1."""
    return f"models/{name}_{kind}" + (f"_b{batch}" if batch > 1 else "")


def load_model(name, kind, weights, images):
    model = BUILDERS[name]()
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    if kind == "int8":
        torch.backends.quantized.engine = "x86"
        model.fuse_model()
        model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
        torch.ao.quantization.prepare(model, inplace=True)
        with torch.inference_mode():
            for x in images:
                model(x)
        torch.ao.quantization.convert(model, inplace=True)
    return model


def status_kb(field):
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(name, kind, weights, threads, batch):
    """One configuration, in this (fresh) process: its time, memory and state_dict size."""
    torch.set_num_threads(threads)
    images = calibration_images()
    x = batch_input(images, batch)
    base = status_kb("VmRSS")
    model = load_model(name, kind, weights, images)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    file_size = buf.getbuffer().nbytes
    del buf
    build_peak = status_kb("VmHWM")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    with torch.inference_mode():
        ns = median_ns(lambda: model(x), min_time=1.0, min_iters=10 if batch == 1 else 5)
    peak = status_kb("VmHWM")
    return {"ns": ns, "memory": (peak - base) * 1024, "peak_rss": max(peak, build_peak) * 1024, "file_size": file_size}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--out")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--weights-dir", type=pathlib.Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--measure", nargs=3, metavar=("MODEL", "KIND", "WEIGHTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch < 1:
        ap.error(f"--batch must be a positive integer, got {args.batch}")
    if args.measure:
        name, kind, weights = args.measure
        print(json.dumps(measure(name, kind, weights, args.threads, args.batch)))
        return
    if not args.out:
        ap.error("--out is required")
    results = {}
    extra = {"memory": {}, "peak_rss": {}, "file_size": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            weights = args.weights_dir / f"{name}.safetensors" if args.weights_dir else None
            if weights is None or not weights.exists():
                weights = pathlib.Path(tmp) / f"{name}.safetensors"
                state = {k: v.detach().clone().contiguous() for k, v in build(name, None, 0).state_dict().items()}
                save_file(state, str(weights))
            for kind in KINDS:
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                      "--batch", str(args.batch), "--measure", name, kind, str(weights)],
                                     check=True, capture_output=True, text=True).stdout
                m = json.loads(out.strip().splitlines()[-1])
                key = case_key(name, kind, args.batch)
                results[key] = {"torch": m["ns"]}
                for field in extra:
                    extra[field][key] = m[field]
                print(f"{key}/t{args.threads}: {m['ns'] / 1e6:.2f} ms, {args.batch * 1e9 / m['ns']:.1f} images/s, "
                      f"memory {m['memory'] / 2**20:.1f} MiB, peak_rss {m['peak_rss'] / 2**20:.1f} MiB, "
                      f"state_dict {m['file_size'] / 2**20:.2f} MiB",
                      file=sys.stderr)
    results.update(extra)
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
