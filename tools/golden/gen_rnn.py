"""Golden fixture for the float recurrent modules (crates/qgraph/src/nn/rnn/).

For LSTM, GRU, RNN and their cells: PyTorch's outputs for given weights and inputs, the
state_dict keys and the printouts, plus one step of the LSTM and GRU pointwise math on given
gates. Weights are int8 multiples of a power of two (stored as int8 with the exponent in the
case), so that hidden size 257 stays small and Rust rebuilds them exactly.

PyTorch's float nn.LSTM / GRU / RNN on CPU run oneDNN when it is enabled (ATen RNN.cpp
`use_mkldnn`); the cases are made with oneDNN disabled, which runs ATen's own CPU layers (the
path qgraph reproduces). One case also records the oneDNN output (`out_onednn`).

    ~/.torch-ref/bin/python tools/golden/gen_rnn.py
"""

import math

import torch
from fixtures import Fixture

torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"
torch.manual_seed(0)

fx = Fixture("qgraph", "rnn")


def set_weights(m: torch.nn.Module, hidden: int) -> tuple[dict, int]:
    """Replaces every parameter by int8 * 2^-shift; returns the int8 tensors and shift."""
    shift = round(math.log2(128 * math.sqrt(hidden)))
    q = {}
    with torch.no_grad():
        for name, p in m.named_parameters():
            q[name] = torch.randint(-127, 128, p.shape, dtype=torch.int8)
            p.copy_(q[name].float() * 2.0**-shift)
    return q, shift


def module_case(name, kind, input_size, hidden, x, state=None, **kw):
    nonlinearity = kw.pop("nonlinearity", "tanh")
    cls = getattr(torch.nn, kind)
    if kind == "RNN":
        m = cls(input_size, hidden, nonlinearity=nonlinearity, **kw)
    else:
        m = cls(input_size, hidden, **kw)
    m.eval()
    q, shift = set_weights(m, hidden)
    with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
        out, hn = m(x) if state is None else m(x, state)
    tensors = {f"p.{k}": v for k, v in q.items()}
    tensors["x"] = x
    tensors["out"] = out
    if kind == "LSTM":
        tensors["h_n"], tensors["c_n"] = hn
        if state is not None:
            tensors["h0"], tensors["c0"] = state
    else:
        tensors["h_n"] = hn
        if state is not None:
            tensors["h0"] = state
    params = {
        "kind": kind,
        "input_size": input_size,
        "hidden_size": hidden,
        "num_layers": m.num_layers,
        "bias": m.bias,
        "batch_first": m.batch_first,
        "bidirectional": m.bidirectional,
        "proj_size": m.proj_size,
        "nonlinearity": nonlinearity,
        "shift": shift,
        "repr": repr(m),
        "keys": list(m.state_dict().keys()),
    }
    return m, params, tensors


def add_module(name, kind, input_size, hidden, shape, state_shapes=None, **kw):
    x = torch.randn(*shape)
    state = None
    if state_shapes is not None:
        state = tuple(torch.randn(*s) for s in state_shapes)
        state = state if kind == "LSTM" else state[0]
    m, params, tensors = module_case(name, kind, input_size, hidden, x, state, **kw)
    fx.case(name, params, **tensors)
    return m, x, state


def add_cell(name, kind, input_size, hidden, shape, state_shapes=None, bias=True, nonlinearity="tanh"):
    cls = getattr(torch.nn, kind)
    m = cls(input_size, hidden, bias=bias, nonlinearity=nonlinearity) if kind == "RNNCell" else cls(input_size, hidden, bias=bias)
    q, shift = set_weights(m, hidden)
    x = torch.randn(*shape)
    tensors = {f"p.{k}": v for k, v in q.items()}
    tensors["x"] = x
    with torch.no_grad():
        if state_shapes is None:
            y = m(x)
        else:
            state = tuple(torch.randn(*s) for s in state_shapes)
            tensors["h0"] = state[0]
            if kind == "LSTMCell":
                tensors["c0"] = state[1]
                y = m(x, state)
            else:
                y = m(x, state[0])
    if kind == "LSTMCell":
        tensors["h_n"], tensors["c_n"] = y
    else:
        tensors["h_n"] = y
    params = {
        "kind": kind,
        "input_size": input_size,
        "hidden_size": hidden,
        "bias": bias,
        "nonlinearity": nonlinearity,
        "shift": shift,
        "repr": repr(m),
        "keys": list(m.state_dict().keys()),
    }
    fx.case(name, params, **tensors)


# Multi-layer modules: hidden 1, 7, 33, 257; sequence 1 and 50; batch 1 and 3; batch_first,
# bidirectional, 2 layers, proj_size, no bias, with and without states, unbatched.
add_module("lstm_h1", "LSTM", 3, 1, (5, 1, 3))
add_module("lstm_h7_seq50_b3_state", "LSTM", 5, 7, (50, 3, 5), [(1, 3, 7), (1, 3, 7)])
m, x, state = add_module(
    "lstm_h33_bidir_2layers_bf_state", "LSTM", 10, 33, (3, 12, 10), [(4, 3, 33), (4, 3, 33)],
    num_layers=2, batch_first=True, bidirectional=True,
)
add_module("lstm_h257_seq3", "LSTM", 16, 257, (3, 1, 16))
add_module(
    "lstm_proj_bidir_2layers_seq50_state", "LSTM", 6, 7, (50, 3, 6), [(4, 3, 3), (4, 3, 7)],
    num_layers=2, bidirectional=True, proj_size=3,
)
add_module("lstm_nobias_unbatched_state", "LSTM", 4, 7, (9, 4), [(1, 7), (1, 7)], bias=False)
add_module("lstm_unbatched_bf_seq1", "LSTM", 4, 33, (1, 4), batch_first=True)
add_module("gru_h7_seq50_b3_state", "GRU", 5, 7, (50, 3, 5), [(1, 3, 7)])
add_module(
    "gru_h33_bidir_2layers_bf_nobias", "GRU", 6, 33, (3, 8, 6),
    num_layers=2, batch_first=True, bidirectional=True, bias=False,
)
add_module("gru_h1_unbatched_seq50", "GRU", 2, 1, (50, 2))
add_module("rnn_tanh_h33_seq50_b3", "RNN", 5, 33, (50, 3, 5))
add_module(
    "rnn_relu_h7_bidir_2layers_state", "RNN", 4, 7, (6, 3, 4), [(4, 3, 7)],
    num_layers=2, bidirectional=True, nonlinearity="relu",
)
add_module("rnn_tanh_h257_seq1", "RNN", 8, 257, (1, 1, 8))

# PyTorch's default CPU path (oneDNN) on the bidirectional LSTM case above.
with torch.no_grad():
    onednn, _ = m(x, state)
fx.case("lstm_onednn", {"of": "lstm_h33_bidir_2layers_bf_state"}, out=onednn)

add_cell("lstmcell_h7_b3_state", "LSTMCell", 5, 7, (3, 5), [(3, 7), (3, 7)])
add_cell("lstmcell_h33_unbatched", "LSTMCell", 9, 33, (9,))
add_cell("grucell_h7_b3_state", "GRUCell", 5, 7, (3, 5), [(3, 7)])
add_cell("grucell_h1_nobias_unbatched_state", "GRUCell", 3, 1, (3,), [(1,)], bias=False)
add_cell("rnncell_relu_h33_b3", "RNNCell", 6, 33, (3, 6), nonlinearity="relu")
add_cell("rnncell_tanh_h7_nobias_unbatched_state", "RNNCell", 4, 7, (4,), [(7,)], bias=False)

# One step of the pointwise math on given gates, with ATen's operations (RNN.cpp LSTMCell /
# GRUCell operator(), CPU branch).
B, H = 3, 33
gates = torch.randn(B, 4 * H) * 3
cx = torch.randn(B, H)
g = gates.clone()
i, f, c, o = g.unsafe_chunk(4, 1)
i.sigmoid_(), f.sigmoid_(), c.tanh_(), o.sigmoid_()
cy = (f * cx).add_(i * c)
tanh_cy = cy.tanh()
hy = o * tanh_cy
fx.case("lstm_pointwise", {"batch": B, "hidden": H}, gates=gates, cx=cx, act=g, cy=cy, tanh_cy=tanh_cy, hy=hy)

igates = torch.randn(B, 3 * H) * 3
hgates = torch.randn(B, 3 * H) * 3
hx = torch.randn(B, H)
ci = igates.unsafe_chunk(3, 1)
ch = hgates.clone().unsafe_chunk(3, 1)
r = ch[0].add_(ci[0]).sigmoid_()
z = ch[1].add_(ci[1]).sigmoid_()
n = ci[2].add(ch[2].mul_(r)).tanh_()
gy = (hx - n).mul_(z).add_(n)
fx.case("gru_pointwise", {"batch": B, "hidden": H}, igates=igates, hgates=hgates, hx=hx, hy=gy)

# Printouts of argument combinations no case above covers.
reprs = [
    ("LSTM", dict(input_size=10, hidden_size=20, num_layers=2, batch_first=True, bidirectional=True)),
    ("LSTM", dict(input_size=10, hidden_size=20, proj_size=5, dropout=0.5, num_layers=3)),
    ("LSTM", dict(input_size=3, hidden_size=4, dropout=1.0, num_layers=2)),
    ("GRU", dict(input_size=4, hidden_size=8, bias=False)),
    ("RNN", dict(input_size=4, hidden_size=8, nonlinearity="relu", dropout=0.25, num_layers=2)),
    ("LSTMCell", dict(input_size=10, hidden_size=20)),
    ("GRUCell", dict(input_size=3, hidden_size=4, bias=False)),
    ("RNNCell", dict(input_size=4, hidden_size=8, bias=False, nonlinearity="relu")),
]
fx.case("printouts", {"modules": [{"kind": k, **a, "repr": repr(getattr(torch.nn, k)(**a))} for k, a in reprs]})

fx.save()
