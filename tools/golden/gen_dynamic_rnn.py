"""Golden fixtures for dynamically quantized recurrent modules (PyTorch's `quantize_dynamic`).

Writes crates/qgraph/tests/fixtures/dynamic_rnn.safetensors. Weights and inputs are not stored:
every tensor is `det_tensor(shape, seed, scale)` = qtest's `random_f32s(numel, seed) * scale`,
which the Rust tests compute identically, so hidden sizes up to 257 keep the file small. The
k-th parameter in `named_parameters()` order (PyTorch's state_dict order) has seed
`case seed + 17 k` and scale `f32(hidden_size ** -0.5)`; the input has seed `case seed + 1000`
and scale 2, the initial states seeds +1001 (h) and +1002 (c) and scale 0.8. Each case stores PyTorch's outputs (fbgemm engine,
one thread) of the dynamic module, the float module's outputs on the same input (small cases only), and how far
PyTorch's own engines (fbgemm, qnnpack) are apart on the dynamic module
(`cross_engine_max_abs`, None for float16, which QNNPACK lacks), the tolerance a stack over many steps is held to.

PyTorch's float tanh is MKL's (closed); the library's is tanh in f64 rounded to f32 (NUMERICS §12).
So each case also stores where ATen's computation with that tanh (`reference`: PyTorch's own
quantized linear ops and sigmoid, ATen's cell and layer order, only tanh swapped) differs from
PyTorch's output: `<field>.tanh64_index` (flat int32 indices) and `<field>.tanh64_value`, absent
when nothing differs. `reference` run with torch.tanh is asserted to give PyTorch's output bit for
bit, so it follows ATen exactly.

Run: ~/.torch-ref/bin/python tools/golden/gen_dynamic_rnn.py
"""

import math
import warnings

import pathlib
import sys

import numpy as np
import torch
import torch.ao.quantization as tq
from fixtures import Fixture
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from xorshift import random_f32s  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

MODULES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "LSTMCell": nn.LSTMCell, "GRUCell": nn.GRUCell, "RNNCell": nn.RNNCell}
QCONFIGS = {
    "qint8": (tq.default_dynamic_qconfig, torch.qint8),
    "qint8_per_channel": (tq.per_channel_dynamic_qconfig, torch.qint8),
    "float16": (tq.float16_dynamic_qconfig, torch.float16),
}


def det_tensor(shape, seed, scale):
    """qtest's `random_f32s(numel, seed)` (tools/xorshift.py) laid out in `shape` row-major, times
    `scale` (one f32 multiply)."""
    n = 1
    for d in shape:
        n *= d
    return torch.from_numpy(random_f32s(n, seed) * np.float32(scale)).reshape(shape)


def set_weights(module, seed):
    """Every parameter, in state_dict order, from det_tensor with scale 1/sqrt(hidden)."""
    bound = np.float32(module.hidden_size**-0.5)
    with torch.no_grad():
        for k, (name, p) in enumerate(module.named_parameters()):
            p.copy_(det_tensor(tuple(p.shape), seed + 17 * k, bound))


def quantized(module, qconfig_name):
    qconfig, dtype = QCONFIGS[qconfig_name]
    model = nn.Sequential(module)
    return tq.quantize_dynamic(model, {type(module): qconfig}, dtype=dtype)[0]


def run(module, kind, inputs):
    with torch.no_grad():
        x, state = inputs
        if kind == "LSTMCell":
            h, c = module(x, state) if state is not None else module(x)
            return {"h": h, "c": c}
        if kind in ("GRUCell", "RNNCell"):
            return {"h": module(x, state) if state is not None else module(x)}
        out = module(x, state) if state is not None else module(x)
        if kind == "LSTM":
            return {"output": out[0], "h": out[1][0], "c": out[1][1]}
        return {"output": out[0], "h": out[1]}


def tanh64(t):
    """tanh of every element computed in f64 (libm) and rounded to f32, as a new tensor."""
    v = t.detach().double().contiguous().numpy().ravel()
    out = np.array([math.tanh(a) for a in v], dtype=np.float64).astype(np.float32)
    return torch.from_numpy(out).reshape(t.shape)


def reference(qmod, kind, inputs, tanh):
    """ATen's CPU path of the dynamic module (RNN.cpp: FullLayer, FullBidirectionalLayer, the
    cells over QuantizedCellParamsDynamic / FP16) with PyTorch's quantized linear ops and sigmoid
    and the given `tanh`."""

    def linear(packed, fp16):
        if fp16:
            return lambda x: torch.ops.quantized.linear_dynamic_fp16(x, packed)
        return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)

    def tanh_(t):
        t.copy_(tanh(t))
        return t

    def cell(mode, ig, hidden, hh):
        if mode == "LSTM":
            hx, cx = hidden
            gates = hh(hx).add_(ig)
            ch = gates.unsafe_chunk(4, 1)
            i, f, g, o = ch[0].sigmoid_(), ch[1].sigmoid_(), tanh_(ch[2]), ch[3].sigmoid_()
            cy = (f * cx).add_(i * g)
            return (o * tanh(cy), cy)
        if mode == "GRU":
            ci, chh = ig.unsafe_chunk(3, 1), hh(hidden).unsafe_chunk(3, 1)
            r = chh[0].add_(ci[0]).sigmoid_()
            z = chh[1].add_(ci[1]).sigmoid_()
            n = tanh(ci[2].add(chh[2].mul_(r)))
            return (hidden - n).mul_(z).add_(n)
        pre = hh(hidden).add_(ig)
        return tanh(pre) if mode == "tanh" else torch.relu(pre)

    x, state = inputs
    with torch.no_grad():
        if kind.endswith("Cell"):
            fp16 = qmod.weight_dtype == torch.float16
            ih, hh = linear(qmod._packed_weight_ih, fp16), linear(qmod._packed_weight_hh, fp16)
            mode = {"LSTMCell": "LSTM", "GRUCell": "GRU"}.get(kind, getattr(qmod, "nonlinearity", "tanh"))
            b, h = x.shape[0], qmod.hidden_size
            if state is None:
                zeros = torch.zeros(b, h)
                state = (zeros, zeros) if mode == "LSTM" else zeros
            out = cell(mode, ih(x), state, hh)
            return {"h": out[0], "c": out[1]} if mode == "LSTM" else {"h": out}
        lstm = kind == "LSTM"
        dirs = 2 if qmod.bidirectional else 1
        layers = qmod.num_layers * dirs
        inp = x.transpose(0, 1) if qmod.batch_first else x
        b = inp.shape[1]
        if state is None:
            zeros = torch.zeros(layers, b, qmod.hidden_size)
            state = (zeros, zeros) if lstm else zeros
        hs, cs = [], []
        for layer in range(qmod.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                st = qmod._all_weight_values[k].param.__getstate__()[0]
                fp16 = st[0] == "quantized_fp16"
                ih, hh = linear(st[4][0], fp16), linear(st[4][1], fp16)
                steps = list(ih(inp).unbind(0))
                hidden = (state[0][k], state[1][k]) if lstm else state[k]
                order = range(len(steps)) if d == 0 else reversed(range(len(steps)))
                step_out = [None] * len(steps)
                for t in order:
                    hidden = cell(kind, steps[t], hidden, hh)
                    step_out[t] = hidden[0] if lstm else hidden
                outs.append(torch.stack(step_out, 0))
                hs.append(hidden[0] if lstm else hidden)
                if lstm:
                    cs.append(hidden[1])
            inp = torch.cat(outs, -1) if dirs == 2 else outs[0]
        output = inp.transpose(0, 1) if qmod.batch_first else inp
        res = {"output": output, "h": torch.stack(hs, 0)}
        if lstm:
            res["c"] = torch.stack(cs, 0)
        return res


def case_inputs(kind, params, seed):
    h, i = params["hidden_size"], params["input_size"]
    b, t = params["batch"], params.get("seq_len", 1)
    if kind in ("LSTMCell", "GRUCell", "RNNCell"):
        x = det_tensor((b, i), seed, 2.0)
        if not params["initial_state"]:
            return x, None
        hx = det_tensor((b, h), seed + 1, 0.8)
        return (x, (hx, det_tensor((b, h), seed + 2, 0.8))) if kind == "LSTMCell" else (x, hx)
    shape = (b, t, i) if params["batch_first"] else (t, b, i)
    x = det_tensor(shape, seed, 2.0)
    if not params["initial_state"]:
        return x, None
    layers = params["num_layers"] * (2 if params["bidirectional"] else 1)
    hx = det_tensor((layers, b, h), seed + 1, 0.8)
    return (x, (hx, det_tensor((layers, b, h), seed + 2, 0.8))) if kind == "LSTM" else (x, hx)


def build(kind, params):
    h, i = params["hidden_size"], params["input_size"]
    if kind in ("LSTMCell", "GRUCell"):
        return MODULES[kind](i, h, bias=params["bias"])
    if kind == "RNNCell":
        return nn.RNNCell(i, h, bias=params["bias"], nonlinearity=params["nonlinearity"])
    return MODULES[kind](
        i,
        h,
        num_layers=params["num_layers"],
        bias=params["bias"],
        batch_first=params["batch_first"],
        bidirectional=params["bidirectional"],
    ).eval()


def add_case(fx, name, kind, qconfig_name, seed, **params):
    params = {
        "kind": kind,
        "qconfig": qconfig_name,
        "seed": seed,
        "bias": True,  # PyTorch's dynamic RNN modules require a bias
        "initial_state": False,
        "batch": 1,
        **params,
    }
    if kind in ("LSTM", "GRU"):
        params = {"num_layers": 1, "batch_first": False, "bidirectional": False, **params}
    if kind == "RNNCell":
        params = {"nonlinearity": "tanh", **params}
    torch.backends.quantized.engine = "fbgemm"
    module = build(kind, params)
    set_weights(module, seed)
    inputs = case_inputs(kind, params, seed + 1000)
    float_out = run(module, kind, inputs)
    qmod = quantized(module, qconfig_name)
    out = run(qmod, kind, inputs)
    torch.backends.quantized.engine = "x86"
    x86_out = run(quantized(module, qconfig_name), kind, inputs)
    same_x86 = all(torch.equal(out[k], x86_out[k]) for k in out)
    cross = None  # QNNPACK has no float16 dynamic path
    if qconfig_name != "float16":
        torch.backends.quantized.engine = "qnnpack"
        qn_out = run(quantized(module, qconfig_name), kind, inputs)
        cross = max(float((out[k] - qn_out[k]).abs().max()) for k in out)
    torch.backends.quantized.engine = "fbgemm"
    params["repr"] = repr(qmod)
    params["float_repr"] = repr(module)
    params["x86_engine_equal"] = same_x86
    params["cross_engine_max_abs"] = cross
    params["float_max_abs"] = max(float((out[k] - float_out[k]).abs().max()) for k in out)
    tensors = {k: v for k, v in out.items()}
    torch_ref = reference(qmod, kind, inputs, torch.tanh)
    for k in out:
        assert torch.equal(torch_ref[k], out[k]), f"{name}/{k}: the reference is not ATen's order"
    ref = reference(qmod, kind, inputs, tanh64)
    for k in out:
        differ = (ref[k].view(torch.int32) != out[k].view(torch.int32)).flatten().nonzero().flatten()
        if differ.numel():
            tensors[f"{k}.tanh64_index"] = differ.to(torch.int32)
            tensors[f"{k}.tanh64_value"] = ref[k].flatten()[differ]
    if out["h"].numel() * params.get("seq_len", 1) <= 5000:  # keeps the file small
        tensors.update({f"float_{k}": v for k, v in float_out.items()})
    fx.case(name, params, **tensors)


def main():
    fx = Fixture("qgraph", "dynamic_rnn")
    seed = 1
    for kind in ("LSTMCell", "GRUCell", "RNNCell"):
        for qc in QCONFIGS:
            for h, i, b in ((1, 3, 1), (7, 5, 3), (33, 16, 3), (257, 20, 1)):
                add_case(fx, f"{kind}_{qc}_h{h}_b{b}", kind, qc, seed, hidden_size=h, input_size=i, batch=b, initial_state=b == 3)
                seed += 100
        if kind == "RNNCell":
            add_case(fx, "RNNCell_relu_qint8", kind, "qint8", seed, hidden_size=7, input_size=5, batch=3, nonlinearity="relu", initial_state=True)
            seed += 100
    for kind in ("LSTM", "GRU"):
        for qc in QCONFIGS:
            add_case(fx, f"{kind}_{qc}_h7_t50_b3", kind, qc, seed, hidden_size=7, input_size=5, seq_len=50, batch=3, initial_state=True)
            seed += 100
            add_case(fx, f"{kind}_{qc}_h33_t1", kind, qc, seed, hidden_size=33, input_size=16, seq_len=1)
            seed += 100
        add_case(fx, f"{kind}_qint8_h1_t50", kind, "qint8", seed, hidden_size=1, input_size=3, seq_len=50)
        seed += 100
        add_case(fx, f"{kind}_qint8_h257_t50_bi", kind, "qint8", seed, hidden_size=257, input_size=24, seq_len=50, bidirectional=True)
        seed += 100
        add_case(fx, f"{kind}_qint8_h33_2layers_bi_bf", kind, "qint8", seed, hidden_size=33, input_size=16, seq_len=50, batch=3, num_layers=2, bidirectional=True, batch_first=True)
        seed += 100
        add_case(fx, f"{kind}_float16_h33_2layers_bi", kind, "float16", seed, hidden_size=33, input_size=16, seq_len=20, batch=3, num_layers=2, bidirectional=True, initial_state=True)
        seed += 100
    fx.save()


if __name__ == "__main__":
    main()
