"""Golden fixtures for qobserve, produced with PyTorch's own observers (torch.ao.quantization).

Run with the interpreter that ../shared/tools/torch-env.sh sets up:

    ~/.torch-ref/bin/python tools/golden/gen_observers.py

Writes crates/qobserve/tests/fixtures/{minmax,histogram,kernels}.safetensors in the format of
tools/golden/fixtures.py. Batches are "<case>/x0", "<case>/x1", ... and are observed in that order. Everything is deterministic (fixed seeds, one thread).
"""

import math
import warnings

import torch
from fixtures import Fixture
from torch.ao.quantization.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.manual_seed(0)
DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8, "qint32": torch.qint32}
QSCHEMES = {
    "per_tensor_affine": torch.per_tensor_affine,
    "per_tensor_symmetric": torch.per_tensor_symmetric,
    "per_channel_affine": torch.per_channel_affine,
    "per_channel_symmetric": torch.per_channel_symmetric,
    "per_channel_affine_float_qparams": torch.per_channel_affine_float_qparams,
}
CLASSES = {
    "MinMax": MinMaxObserver,
    "MovingAverageMinMax": MovingAverageMinMaxObserver,
    "PerChannelMinMax": PerChannelMinMaxObserver,
    "MovingAveragePerChannelMinMax": MovingAveragePerChannelMinMaxObserver,
    "Histogram": HistogramObserver,
}


def g(*shape, std=1.0, mean=0.0):
    return torch.randn(*shape) * std + mean


def datasets(shape):
    """Lists of batches: random, constant, all zero, outlier, one-signed, tiny, several batches."""
    n = math.prod(shape)
    outlier = g(*shape)
    outlier.view(-1)[n // 3] = 1e6
    return {
        "normal": [g(*shape)],
        "wide": [g(*shape, std=300.0, mean=40.0)],
        "uniform": [torch.rand(*shape) * 7 - 2],
        "const_pos": [torch.full(shape, 0.7)],
        "const_neg": [torch.full(shape, -3.25)],
        "zeros": [torch.zeros(shape)],
        "outlier": [outlier],
        "neg_only": [-torch.rand(*shape) * 5 - 0.1],
        "pos_only": [torch.rand(*shape) * 5 + 0.1],
        # Wide enough that qint32's scale exceeds eps, so `round(min / scale)` leaves int32.
        "neg_wide": [-torch.rand(*shape) * 3e4 - 1.0],
        "tiny": [g(*shape, std=1e-9)],
        "batches": [g(*shape), g(*shape, std=3.0, mean=1.0), g(*shape, std=0.5, mean=-2.0), torch.empty(0)],
        "drift": [g(*shape, mean=float(k)) * (1 + k) for k in range(5)],
    }


def args_of(obs_args):
    out = dict(obs_args)
    out["dtype"] = str(out["dtype"]).replace("torch.", "")
    out["qscheme"] = str(out["qscheme"]).replace("torch.", "")
    return out


def run(cls_name, ctor, batches):
    obs = CLASSES[cls_name](**ctor)
    for x in batches:
        obs(x)
    return obs


def gen_minmax():
    fx = Fixture("qobserve", "minmax")
    per_tensor_configs = {
        "u8": dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine),
        "u8_rr": dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=True),
        "u8_sym": dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric),
        "u8_0_127": dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=127),
        "u8_sym_0_15": dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric, quant_min=0, quant_max=15),
        "i8": dict(dtype=torch.qint8, qscheme=torch.per_tensor_affine),
        "i8_sym": dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        "i8_sym_rr": dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, reduce_range=True),
        "i8_sym_127": dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127,
                           eps=2**-12),
        "i8_m8_7_rr": dict(dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=-8, quant_max=7,
                           reduce_range=True),
        "i32": dict(dtype=torch.qint32, qscheme=torch.per_tensor_affine),
        "i32_sym": dict(dtype=torch.qint32, qscheme=torch.per_tensor_symmetric),
    }
    for cls_name in ["MinMax", "MovingAverageMinMax"]:
        for cname, cfg in per_tensor_configs.items():
            if cls_name == "MovingAverageMinMax" and cname not in ("u8", "u8_rr", "i8_sym", "i8_sym_127", "i32"):
                continue
            for dname, batches in datasets((4, 16)).items():
                ctor = dict(cfg)
                extra = {}
                if cls_name == "MovingAverageMinMax":
                    c = 0.25 if dname == "drift" else 0.01
                    ctor["averaging_constant"] = c
                    extra["averaging_constant"] = c
                obs = run(cls_name, ctor, batches)
                scale, zp = obs.calculate_qparams()
                name = f"{cls_name}_{cname}_{dname}"
                fx.case(name, {"observer": cls_name, "args": args_of({**cfg}), "batches": len(batches), **extra},
                        **{f"x{i}": x for i, x in enumerate(batches)},
                        min_val=obs.min_val.reshape(1), max_val=obs.max_val.reshape(1), scale=scale.float(),
                        zero_point=zp.to(torch.int64))
    per_channel_configs = {
        "u8": dict(dtype=torch.quint8, qscheme=torch.per_channel_affine),
        "u8_rr": dict(dtype=torch.quint8, qscheme=torch.per_channel_affine, reduce_range=True),
        "u8_sym": dict(dtype=torch.quint8, qscheme=torch.per_channel_symmetric),
        "i8_sym": dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
        "i8_sym_127": dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127,
                           eps=2**-12),
        "i8": dict(dtype=torch.qint8, qscheme=torch.per_channel_affine),
        "float_qparams": dict(dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams),
    }
    # Axis 0 has runs of 40 values per channel (the contiguous path), the others short runs.
    shapes = {0: (3, 8, 5), 1: (2, 6, 3, 2), 2: (2, 3, 7), -1: (4, 5, 3)}
    for cls_name in ["PerChannelMinMax", "MovingAveragePerChannelMinMax"]:
        for cname, cfg in per_channel_configs.items():
            if cls_name == "MovingAveragePerChannelMinMax" and cname not in ("u8", "i8_sym", "float_qparams"):
                continue
            for axis, shape in shapes.items():
                for dname, batches in datasets(shape).items():
                    if dname in ("uniform", "wide") and axis not in (0, 1):
                        continue
                    # Give channels different ranges: scale channel c by (c + 1) / 2.
                    ch = shape[axis]
                    view = [1] * len(shape)
                    view[axis] = ch
                    mult = (torch.arange(ch, dtype=torch.float32) + 1).reshape(view) / 2
                    batches = [x * mult if x.numel() else x for x in batches]
                    # One channel all zero in the first batch, another constant.
                    if dname == "normal":
                        batches[0] = batches[0].clone()
                        batches[0].select(axis, 0).zero_()
                        batches[0].select(axis, ch - 1).fill_(-0.3)
                    ctor = dict(cfg, ch_axis=axis)
                    extra = {"ch_axis": axis}
                    if cls_name == "MovingAveragePerChannelMinMax":
                        c = 0.25 if dname == "drift" else 0.01
                        ctor["averaging_constant"] = c
                        extra["averaging_constant"] = c
                    obs = run(cls_name, ctor, batches)
                    scale, zp = obs.calculate_qparams()
                    zp = zp.float() if cname == "float_qparams" else zp.to(torch.int64)
                    name = f"{cls_name}_{cname}_ax{axis}_{dname}"
                    fx.case(name, {"observer": cls_name, "args": args_of(cfg), "batches": len(batches), **extra},
                            **{f"x{i}": x for i, x in enumerate(batches)},
                            min_val=obs.min_val, max_val=obs.max_val, scale=scale.float(), zero_point=zp)
    fx.save()


class TracedHistogram(HistogramObserver):
    """HistogramObserver that records every candidate of _non_linear_param_search."""

    def _compute_quantization_error(self, next_start_bin, next_end_bin):
        norm = super()._compute_quantization_error(next_start_bin, next_end_bin)
        self.trace.append((next_start_bin, next_end_bin, norm))
        return norm


def chosen_bins(obs, trace):
    start, end, norm_min, evals = 0, obs.bins - 1, math.inf, 0
    for s, e, norm in trace:
        evals += 1
        if norm > norm_min:
            break
        start, end, norm_min = s, e, norm
    return start, end, norm_min, evals


def gen_histogram():
    fx = Fixture("qobserve", "histogram")
    configs = {
        "u8": dict(),
        "u8_rr": dict(reduce_range=True),
        "u8_0_127": dict(quant_min=0, quant_max=127),
        "i8_sym": dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        "i8_sym_127": dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127,
                           eps=2**-12),
    }
    n = 1024
    lap = torch.distributions.Laplace(0.0, 1.0)
    with_inf = g(n)
    with_inf[[5, 700]] = math.inf
    with_inf[9] = -math.inf
    outlier = g(n)
    outlier[100] = 80.0
    data = {
        "normal": [g(n)],
        "laplace": [lap.sample((n,))],
        "relu": [torch.relu(g(n, std=2.0))],
        "outlier": [outlier],
        "uniform": [torch.rand(n) * 4 - 1],
        "zeros": [torch.zeros(n)],
        "const": [torch.full((n,), 1.5)],
        "const_then_normal": [torch.full((n,), 0.5), g(n)],
        "grow": [g(n, std=0.5), g(n, std=1.0), g(n, std=3.0)],
        "shift": [g(n, mean=-2.0), g(n, mean=2.0), torch.rand(n) * 10 - 5],
        "shrink": [g(n, std=4.0), g(n, std=0.5), g(n, std=0.1)],
        "same_range": [torch.linspace(-1, 1, n), torch.linspace(-1, 1, n).flip(0)],
        "inf": [with_inf, g(n, std=2.0)],
        "small_batches": [g(64) * (k + 1) for k in range(6)],
        "laplace_batches": [lap.sample((n,)) * s for s in (1.0, 1.7, 0.6)],
        "cauchy": [torch.distributions.Cauchy(0.0, 1.0).sample((n,))],
        "sparse_tail": [torch.cat([g(n - 20), torch.rand(20) * 100 - 50])],
    }
    for cname, cfg in configs.items():
        for dname, batches in data.items():
            if cname not in ("u8", "i8_sym") and dname not in ("normal", "laplace", "grow", "outlier", "relu"):
                continue
            obs = TracedHistogram(**cfg)
            for x in batches:
                obs(x)
            hist = obs.histogram.clone()
            obs.trace = []
            new_min, new_max = obs._non_linear_param_search()
            start, end, norm, evals = chosen_bins(obs, obs.trace)
            scale, zp = obs.calculate_qparams()
            full = {"dtype": torch.quint8, "qscheme": torch.per_tensor_affine, "reduce_range": False,
                    "quant_min": None, "quant_max": None, "eps": torch.finfo(torch.float32).eps, **cfg}
            name = f"Histogram_{cname}_{dname}"
            fx.case(name, {"observer": "Histogram", "args": args_of(full), "batches": len(batches),
                           "start_bin": start, "end_bin": end, "norm": norm if math.isfinite(norm) else None,
                           "evaluations": evals},
                    **{f"x{i}": x for i, x in enumerate(batches)},
                    min_val=obs.min_val.reshape(1), max_val=obs.max_val.reshape(1), histogram=hist,
                    new_min=new_min.reshape(1), new_max=new_max.reshape(1), scale=scale.float(),
                    zero_point=zp.to(torch.int64))
    fx.save()


def gen_kernels():
    """Raw ATen reductions the histogram observer depends on."""
    fx = Fixture("qobserve", "kernels")
    for k, (lo, hi, steps) in enumerate([(-1.2345678, 3.3333, 2049), (-3.0, 7.25, 32769), (0.1, 0.1000001, 257),
                                          (-1e-3, 5e4, 2049)]):
        if steps > 2049:
            # Keep the file small: 2048 values at the start, around the halfway switch of the
            # formula (index steps // 2) and at the end.
            out = torch.linspace(lo, hi, steps)
            mid = steps // 2 - 1024
            fx.case(f"linspace{k}", {"kind": "linspace_parts", "start": lo, "end": hi, "steps": steps,
                                     "offsets": [0, mid, steps - 2048]},
                    part0=out[:2048], part1=out[mid:mid + 2048], part2=out[-2048:])
            continue
        fx.case(f"linspace{k}", {"kind": "linspace", "start": lo, "end": hi, "steps": steps},
                out=torch.linspace(lo, hi, steps))
    for k, n in enumerate([5, 16, 17, 100, 2048, 4099]):
        x = torch.randn(n) * torch.rand(n) * 1000
        fx.case(f"sum{k}", {"kind": "sum"}, x=x, out=torch.sum(x).reshape(1), cumsum=torch.cumsum(x, 0))
    x = torch.randn(3000) * 5
    for k, (lo, hi) in enumerate([(x.min().item(), x.max().item()), (-20.0, 20.0), (0.5, 0.5)]):
        fx.case(f"histc{k}", {"kind": "histc", "min": lo, "max": hi, "bins": 2048}, x=x,
                out=torch.histc(x, 2048, min=lo, max=hi))
    fx.save()


if __name__ == "__main__":
    gen_kernels()
    gen_minmax()
    gen_histogram()
