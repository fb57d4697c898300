"""Writes a model quantized in PyTorch (eager mode) as a qgraph model file.

    python tools/export_quantized.py MODEL OUT.safetensors --input-shape 1,3,224,224 [--verify seed:0]

MODEL is either
  - a file written by `torch.save(model)` (the whole pickled module; its classes must be
    importable, from the current directory or PYTHONPATH, and it is loaded with
    `weights_only=False`, so load only files you trust), or
  - a Python entry point `package.module:function` (or `path/to/file.py:function`) whose function,
    called without arguments, returns the model.

The model is what PyTorch's eager workflow produced: `fuse_modules`, `prepare`, calibration and
`convert` (static int8, fbgemm / x86 engine), or `quantize_dynamic` (qint8 or float16 Linear,
LSTM, GRU and cells; quint8 / quint4x2 Embedding and EmbeddingBag). Nothing is recalibrated or
requantized: the file holds PyTorch's int8 weights (`int_repr`), their exact per-tensor or
per-channel scales (f64) and zero points, the float biases and every module's output scale and
zero point, so `qgraph::io::load` rebuilds a model that computes PyTorch's int8 outputs.

The dataflow comes from `torch.fx` symbolic tracing of the converted model (quantized modules are
leaves, `QFunctional` ops become the file's `Functional` nodes, flatten / reshape / view /
adaptive_avg_pool2d / getitem become graph ops). Every module keeps its PyTorch path
(`layer1.0.conv1`), so the file's module tree is PyTorch's; a module whose forward is a plain
chain of its children is saved as a `Sequential` (a subclass of `Sequential`, such as
torchvision's `Conv2dNormActivation`, as a `Graph` printed under its class name), any other as a
`Graph` named by its class.

`--input-shape` is the shape of an example float input, used to resolve reshape / view, negative
dimensions and tuple indexing, and by `--verify` (omit it for models taking integer indices).
Module paths and the weight and bias names are PyTorch's (`layer1.0.conv1.weight` holds the
int8 `int_repr`, next to `weight_scale` and `weight_zero_point`); output scales and zero points
are in the module's configuration, and recurrent weights are named per layer and direction
(`lstm.l0_reverse.ih.weight`), as qgraph's loaders read them. A module or operation with no
qgraph counterpart stops the export with an error naming it, its type and what is supported.

--engine (default fbgemm) is PyTorch's quantized engine while the model is loaded (a pickled
model packs its weights then) and verified. qgraph reproduces FBGEMM's arithmetic; under "x86"
on a CPU with AVX512-VNNI, PyTorch runs convolutions with symmetric weights on oneDNN, which
rounds a few values differently (docs/NUMERICS.md section 17). The exported file is the same
either way.

--verify INPUT runs PyTorch on INPUT (`seed:N`: `torch.manual_seed(N)`, then `torch.randn` of
--input-shape; or a safetensors file holding a tensor named `input`) and writes
`OUT.verify.safetensors` next to the model file: `input`, and `output` (float outputs as they
are, quantized ones as `output.int_repr`, `output.scale`, `output.zero_point`), so the Rust side
can be checked on the same input.
"""

import argparse
import importlib
import importlib.util
import inspect
import json
import operator
import pathlib
import sys

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.fx.passes.shape_prop import ShapeProp

FORMAT = "qgraph"
FORMAT_VERSION = 1
INPUT = "input"


class ExportError(Exception):
    """A module or operation that has no qgraph counterpart, or a model that is not converted."""


class Saved:
    """One module of the file: its type, configuration, own tensors (by local name) and children."""

    def __init__(self, type_name, config=None, tensors=None, children=None):
        self.type_name = type_name
        self.config = config
        self.tensors = tensors or {}
        self.children = children or []

    def header(self):
        return {
            "type": self.type_name,
            "config": self.config,
            "tensors": list(self.tensors),
            "children": [[name, child.header()] for name, child in self.children],
        }

    def collect(self, prefix, out):
        for name, t in self.tensors.items():
            out[f"{prefix}{name}"] = t.detach().contiguous().clone()
        for name, child in self.children:
            child.collect(f"{prefix}{name}.", out)


# ---------------------------------------------------------------------------------------------
# Leaf modules


def _qweight(w, path):
    """`weight`, `weight_scale`, `weight_zero_point` of a qint8 weight, and whether per channel."""
    if w.dtype != torch.qint8:
        raise ExportError(f"{path}: weight dtype {w.dtype}; quantized conv / linear weights must be qint8")
    scheme = w.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scales = torch.tensor([w.q_scale()], dtype=torch.float64)
        zps = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        per_channel = False
    elif scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
        if w.q_per_channel_axis() != 0:
            raise ExportError(
                f"{path}: per-channel weight along axis {w.q_per_channel_axis()}; qgraph takes axis 0 "
                "(the output channels), as PyTorch's quantized conv and linear"
            )
        scales = w.q_per_channel_scales().to(torch.float64)
        zps = w.q_per_channel_zero_points().to(torch.int64)
        per_channel = True
    else:
        raise ExportError(f"{path}: weight qscheme {scheme}; use per-tensor or per-channel affine / symmetric")
    return {"weight": w.int_repr(), "weight_scale": scales, "weight_zero_point": zps}, per_channel


def _with_bias(tensors, bias):
    if bias is not None:
        tensors["bias"] = bias.detach().to(torch.float32)
    return tensors


def _out_q(m):
    return float(m.scale), int(m.zero_point)


def _size(v):
    return list(v) if isinstance(v, (tuple, list)) else int(v)


def conv(m, path):
    dims = {nnq.Conv1d: 1, nniq.ConvReLU1d: 1, nnq.Conv2d: 2, nniq.ConvReLU2d: 2, nnq.Conv3d: 3, nniq.ConvReLU3d: 3}
    d = dims[type(m)]
    relu = isinstance(m, (nniq.ConvReLU1d, nniq.ConvReLU2d, nniq.ConvReLU3d))
    if m.padding_mode != "zeros":
        raise ExportError(f"{path} ({type(m).__name__}): padding_mode {m.padding_mode!r}; qgraph takes 'zeros'")
    w, b = m._weight_bias()
    tensors, per_channel = _qweight(w, path)
    scale, zp = _out_q(m)
    options = {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": list(m.padding),
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": b is not None,
        "padding_mode": "zeros",
    }
    config = {"options": options, "act": "Relu" if relu else "None", "scale": scale, "zero_point": zp,
              "per_channel": per_channel}
    return Saved(f"QuantizedConv{'ReLU' if relu else ''}{d}d", config, _with_bias(tensors, b))


def linear(m, path):
    relu = isinstance(m, nniq.LinearReLU)
    w, b = m._weight_bias()
    tensors, per_channel = _qweight(w, path)
    scale, zp = _out_q(m)
    options = {"in_features": m.in_features, "out_features": m.out_features, "bias": b is not None}
    config = {"options": options, "act": "Relu" if relu else "None", "scale": scale, "zero_point": zp,
              "per_channel": per_channel}
    return Saved("QuantizedLinearReLU" if relu else "QuantizedLinear", config, _with_bias(tensors, b))


def batch_norm(m, path):
    relu = isinstance(m, (nniq.BNReLU2d, nniq.BNReLU3d))
    dims = 3 if isinstance(m, (nnq.BatchNorm3d, nniq.BNReLU3d)) else 2
    scale, zp = _out_q(m)
    config = {"dims": dims, "num_features": m.num_features, "eps": float(m.eps), "relu": relu, "scale": scale,
              "zero_point": zp}
    tensors = {k: getattr(m, k).detach().to(torch.float32) for k in ("weight", "bias", "running_mean", "running_var")}
    name = f"Quantized{'BNReLU' if relu else 'BatchNorm'}{dims}d"
    return Saved(name, config, tensors)


def quantize(m, path):
    if m.dtype != torch.quint8:
        raise ExportError(f"{path} (Quantize): dtype {m.dtype}; qgraph activations are quint8")
    return Saved("Quantize", {"scale": float(m.scale.item()), "zero_point": int(m.zero_point.item())})


def q_functional(m, path):
    config = {"scale": float(m.scale), "zero_point": int(m.zero_point)}
    return Saved("QFunctional", config, children=[("activation_post_process", Saved("Identity"))])


def with_out(name, **params):
    def build(m, path):
        scale, zp = _out_q(m)
        return Saved(name, {**{k: float(getattr(m, v)) for k, v in params.items()},
                            "out": {"scale": scale, "zero_point": zp}})

    return build


def constant(name, config=None):
    return lambda m, path: Saved(name, {} if config is None else config)


def max_pool(m, path):
    if m.return_indices:
        raise ExportError(f"{path} ({type(m).__name__}): return_indices=True is not supported")
    config = {k: _size(getattr(m, k)) for k in ("kernel_size", "stride", "padding", "dilation")}
    return Saved(type(m).__name__, {**config, "ceil_mode": bool(m.ceil_mode)})


def avg_pool(m, path):
    config = {k: _size(getattr(m, k)) for k in ("kernel_size", "stride", "padding")}
    config.update(ceil_mode=bool(m.ceil_mode), count_include_pad=bool(m.count_include_pad),
                  divisor_override=m.divisor_override)
    return Saved("AvgPool2d", config)


def _adaptive_size(size, where):
    pair = list(size) if isinstance(size, (tuple, list)) else [size, size]
    if len(pair) != 2 or any(not isinstance(v, int) for v in pair):
        raise ExportError(f"{where}: adaptive_avg_pool2d output_size {size!r}; qgraph takes two integers")
    return pair


def adaptive_avg_pool(m, path):
    size = _adaptive_size(m.output_size, f"{path} (AdaptiveAvgPool2d)")
    return Saved("AdaptiveAvgPool2d", {"output_size": size, "scalar": isinstance(m.output_size, int)})


def dynamic_linear(m, path):
    relu = isinstance(m, nniqd.LinearReLU)
    w, b = m._weight_bias()
    options = {"in_features": m.in_features, "out_features": m.out_features, "bias": b is not None}
    if b is None:
        raise ExportError(f"{path} ({type(m).__name__}): a dynamic linear layer without bias is not supported")
    if w.is_quantized:
        tensors, per_channel = _qweight(w, path)
        dtype = "qint8"
    else:
        tensors, per_channel, dtype = {"weight": w.to(torch.float32)}, False, "float16"
    config = {"dtype": dtype, "options": options, "per_channel": per_channel, "relu": relu}
    return Saved("DynamicQuantizedLinearReLU" if relu else "DynamicQuantizedLinear", config, _with_bias(tensors, b))


def _projection(w, b, prefix, path):
    """One gate projection's tensors (`<prefix>weight`, ...) and its kind."""
    if b is None:
        raise ExportError(f"{path}: recurrent layers without bias are not supported")
    if w.is_quantized:
        tensors, per_channel = _qweight(w, path)
        kind = {"dtype": "qint8", "per_channel": per_channel}
    else:
        tensors, kind = {"weight": w.to(torch.float32)}, {"dtype": "float16", "per_channel": False}
    tensors["bias"] = b.detach().to(torch.float32)
    return {f"{prefix}{k}": v for k, v in tensors.items()}, kind


def _rnn_mode(m, path):
    if isinstance(m, (nnqd.LSTM, nnqd.LSTMCell)):
        return "Lstm"
    if isinstance(m, (nnqd.GRU, nnqd.GRUCell)):
        return "Gru"
    nonlinearity = getattr(m, "nonlinearity", "tanh")
    return "RnnRelu" if nonlinearity == "relu" else "RnnTanh"


def dynamic_rnn(m, path):
    if getattr(m, "proj_size", 0):
        raise ExportError(f"{path} ({type(m).__name__}): proj_size > 0 is not supported")
    wb = m._weight_bias()
    tensors, kinds = {}, set()
    for layer in range(m.num_layers):
        for suffix in ["", "_reverse"] if m.bidirectional else [""]:
            for gate in ("ih", "hh"):
                t, kind = _projection(wb["weight"][f"weight_{gate}_l{layer}{suffix}"],
                                      wb["bias"][f"bias_{gate}_l{layer}{suffix}"], f"l{layer}{suffix}.{gate}.", path)
                tensors.update(t)
                kinds.add(json.dumps(kind, sort_keys=True))
    if len(kinds) != 1:
        raise ExportError(f"{path} ({type(m).__name__}): layers quantized with different dtypes or schemes")
    options = {"input_size": m.input_size, "hidden_size": m.hidden_size, "num_layers": m.num_layers, "bias": m.bias,
               "batch_first": m.batch_first, "dropout": float(m.dropout), "bidirectional": m.bidirectional,
               "proj_size": 0}
    config = {"mode": _rnn_mode(m, path), "options": options, "kind": json.loads(kinds.pop())}
    return Saved(f"DynamicQuantized{type(m).__name__}", config, tensors)


def dynamic_cell(m, path):
    wb = m._weight_bias()
    tensors, kinds = {}, set()
    for gate in ("ih", "hh"):
        t, kind = _projection(wb["weight"][f"weight_{gate}"], wb["bias"][f"bias_{gate}"], f"{gate}.", path)
        tensors.update(t)
        kinds.add(json.dumps(kind, sort_keys=True))
    if len(kinds) != 1:
        raise ExportError(f"{path} ({type(m).__name__}): ih and hh quantized with different dtypes or schemes")
    options = {"input_size": m.input_size, "hidden_size": m.hidden_size, "bias": m.bias}
    config = {"mode": _rnn_mode(m, path), "options": options, "kind": json.loads(kinds.pop())}
    return Saved(f"DynamicQuantized{type(m).__name__}", config, tensors)


def embedding(m, path):
    w = m.weight()
    if w.qscheme() != torch.per_channel_affine_float_qparams or w.q_per_channel_axis() != 0:
        raise ExportError(f"{path}: embedding weights must be per_channel_affine_float_qparams along axis 0")
    dtypes = {torch.quint8: "QUInt8", torch.quint4x2: "QUInt4x2"}
    if w.dtype not in dtypes:
        raise ExportError(f"{path}: embedding weight dtype {w.dtype}; qgraph takes quint8 or quint4x2")
    rows = m.num_embeddings
    packed = w.int_repr().reshape(rows, -1)
    tensors = {"weight": packed, "scales": w.q_per_channel_scales().to(torch.float32),
               "zero_points": w.q_per_channel_zero_points().to(torch.float32)}
    config = {"dtype": dtypes[w.dtype], "num_embeddings": rows, "embedding_dim": m.embedding_dim,
              "include_last_offset": bool(getattr(m, "include_last_offset", False))}
    if isinstance(m, nnq.EmbeddingBag):
        config["mode"] = m.mode
        return Saved("QuantizedEmbeddingBag", config, tensors)
    return Saved("QuantizedEmbedding", config, tensors)


def dequant_stub(m, path):
    return Saved("DeQuantStub", {"qconfig": None})


def quant_stub(m, path):
    raise ExportError(
        f"{path} (QuantStub): the model is not converted; run torch.ao.quantization.convert on it first"
    )


LEAVES = {
    nnq.Quantize: quantize,
    nnq.DeQuantize: lambda m, path: Saved("DeQuantize"),
    torch.ao.quantization.QuantStub: quant_stub,
    torch.ao.quantization.DeQuantStub: dequant_stub,
    nnq.Conv1d: conv, nnq.Conv2d: conv, nnq.Conv3d: conv,
    nniq.ConvReLU1d: conv, nniq.ConvReLU2d: conv, nniq.ConvReLU3d: conv,
    nnq.Linear: linear, nniq.LinearReLU: linear,
    nnq.BatchNorm2d: batch_norm, nnq.BatchNorm3d: batch_norm, nniq.BNReLU2d: batch_norm, nniq.BNReLU3d: batch_norm,
    nnq.QFunctional: q_functional,
    nnq.ReLU6: constant("QuantizedReLU6"),
    nnq.Hardswish: with_out("QuantizedHardswish"),
    nnq.LeakyReLU: with_out("QuantizedLeakyReLU", negative_slope="negative_slope"),
    nnq.ELU: with_out("QuantizedELU", alpha="alpha"),
    nnq.Dropout: lambda m, path: Saved("QuantizedDropout", {"p": float(m.p), "inplace": bool(m.inplace)}),
    nn.Dropout: lambda m, path: Saved("Dropout", {"p": float(m.p), "inplace": bool(m.inplace)}),
    nn.ReLU: constant("ReLU"), nn.ReLU6: constant("ReLU6"), nn.Hardsigmoid: constant("Hardsigmoid"),
    nn.Sigmoid: constant("Sigmoid"), nn.Tanh: constant("Tanh"), nn.Hardswish: constant("Hardswish"),
    nn.LeakyReLU: lambda m, path: Saved("LeakyReLU", {"negative_slope": float(m.negative_slope)}),
    nn.ELU: lambda m, path: Saved("ELU", {"alpha": float(m.alpha)}),
    nn.Identity: lambda m, path: Saved("Identity"),
    nn.Flatten: lambda m, path: Saved("Flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    nn.MaxPool1d: max_pool, nn.MaxPool2d: max_pool, nn.MaxPool3d: max_pool,
    nn.AvgPool2d: avg_pool,
    nn.AdaptiveAvgPool2d: adaptive_avg_pool,
    nnqd.Linear: dynamic_linear, nniqd.LinearReLU: dynamic_linear,
    nnqd.LSTM: dynamic_rnn, nnqd.GRU: dynamic_rnn,
    nnqd.LSTMCell: dynamic_cell, nnqd.GRUCell: dynamic_cell, nnqd.RNNCell: dynamic_cell,
    nnq.Embedding: embedding, nnq.EmbeddingBag: embedding,
}
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


ALIASES = [("torch.ao.nn.intrinsic.quantized.dynamic", "nniqd"), ("torch.ao.nn.intrinsic.quantized", "nniq"),
           ("torch.ao.nn.quantized.dynamic", "nnqd"), ("torch.ao.nn.quantized", "nnq"), ("torch.nn", "nn"),
           ("torch.ao.quantization", "tq")]


def supported():
    """The supported module classes, as `nnq.Conv2d`, `nn.ReLU`, ..."""

    def short(c):
        alias = next((a for prefix, a in ALIASES if c.__module__.startswith(prefix)), c.__module__)
        return f"{alias}.{c.__name__}"

    return ", ".join(sorted(short(c) for c in LEAVES))


def convert_leaf(module, path):
    build = LEAVES.get(type(module))
    if build is None:
        raise ExportError(f"{path or '<model>'}: {type(module).__qualname__} has no qgraph counterpart; "
                          f"supported modules: {supported()}")
    return build(module, path)


# ---------------------------------------------------------------------------------------------
# Tracing


class Scope:
    """One call of a non-leaf module during tracing: its path, inputs and output."""

    def __init__(self, path, module, args, kwargs):
        self.path, self.module, self.args, self.kwargs = path, module, args, kwargs
        self.output = None


QUANTIZED_OPS = {"add": "Add", "add_relu": "AddRelu", "mul": "Mul", "cat": "Cat", "add_scalar": "AddScalar",
                 "mul_scalar": "MulScalar"}


class Tracer(torch.fx.Tracer):
    """Symbolic tracing with the modules of LEAVES as leaves, recording for every node the non-leaf
    module calls it happens in and the QFunctional op it belongs to."""

    def __init__(self):
        super().__init__()
        self.stack = []
        self.functional = None

    def is_leaf_module(self, m, qualified_name):
        if type(m) in LEAVES:
            return True
        if isinstance(m, CONTAINERS):
            return False
        if type(m).__module__.startswith(("torch.nn.", "torch.ao.nn.")):
            raise ExportError(f"{qualified_name or '<model>'}: {type(m).__qualname__} has no qgraph counterpart "
                              f"(is the model converted?); supported modules: {supported()}")
        return False

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        scope = Scope(path, m, args, kwargs)
        self.stack.append(scope)
        try:
            scope.output = forward(*args, **kwargs)
        finally:
            self.stack.pop()
        return scope.output

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["scopes"] = tuple(self.stack)
        node.meta["functional"] = self.functional
        return node


def trace(model):
    """The FX graph of `model` with scope and QFunctional marks (see Tracer)."""
    tracer = Tracer()
    patched = []
    for path, m in model.named_modules():
        if type(m) is nnq.QFunctional:
            for op in QUANTIZED_OPS:
                original = getattr(m, op)

                def wrapper(*args, _path=path, _op=op, _original=original, **kwargs):
                    previous, tracer.functional = tracer.functional, (_path, _op)
                    try:
                        return _original(*args, **kwargs)
                    finally:
                        tracer.functional = previous

                setattr(m, op, wrapper)
                patched.append((m, op))
        elif isinstance(m, torch.ao.nn.quantized.FloatFunctional):
            raise ExportError(f"{path}: FloatFunctional left unconverted; convert the model (with a qconfig on it)")
    try:
        graph = tracer.trace(model)
    finally:
        for m, op in patched:
            delattr(m, op)
    return graph


def _is_proxy(a):
    return isinstance(a, torch.fx.Proxy)


def _nodes_of(value, where):
    """The FX nodes of a traced value: a proxy or a flat tuple / list of proxies."""
    if _is_proxy(value):
        return [value.node]
    if isinstance(value, (tuple, list)) and all(_is_proxy(v) for v in value):
        return [v.node for v in value]
    raise ExportError(f"{where}: takes or returns {type(value).__name__} values that are not tensors; qgraph graphs "
                      "pass tensors and flat tuples of tensors")


class GraphBuild:
    """The nodes of one Graph being built: FX node -> value name, node names, QFunctionals used."""

    def __init__(self, where, prefix):
        self.where, self.prefix = where, prefix
        self.env, self.nodes, self.names, self.functionals = {}, [], set(), set()

    def fresh(self, base):
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def value(self, n, user):
        if n not in self.env:
            raise ExportError(f"{self.where}: node `{user.name}` reads `{n.name}`, which qgraph cannot represent "
                              f"({n.op} {getattr(n.target, '__name__', n.target)})")
        if self.env[n] is None:
            raise ExportError(f"{self.where}: node `{user.name}` uses the non-tensor value `{n.name}` "
                              "(a size or shape) other than in reshape / view")
        return self.env[n]

    def add(self, base, op, inputs):
        name = self.fresh(base)
        self.nodes.append({"name": name, "op": op, "inputs": inputs})
        return name

    def prune(self, outputs):
        """Drops the tuple items, flattens and pools nothing reads (`out, _ = self.lstm(x)`)."""
        used = set(outputs)
        kept = []
        for node in reversed(self.nodes):
            pure = not any(k in node["op"] for k in ("Call", "Functional"))
            if pure and node["name"] not in used:
                continue
            used.update(node["inputs"])
            kept.append(node)
        self.nodes = kept[::-1]

    def child(self, path, what):
        """The name of `path` as a child of this graph's module."""
        name = path[len(self.prefix):] if path.startswith(self.prefix) else path
        if not path.startswith(self.prefix) or "." in name:
            raise ExportError(f"{self.where}: uses {what} {path}, which is not one of its own children; qgraph "
                              "modules call their own children only")
        return name


def _trim(args):
    args = list(args)
    while args and args[-1] is None:
        args.pop()
    return args


class Exporter:
    """Builds the Saved tree of a traced model."""

    def __init__(self, model, graph):
        self.model, self.graph = model, graph
        self.modules = dict(model.named_modules())
        self.built = {}
        self.scopes = {}
        for node in graph.nodes:
            for scope in node.meta.get("scopes", ()):
                self.scopes.setdefault(scope.path, scope)

    def module(self, path, module):
        """A module's Saved, whether it is a leaf, traced or never called."""
        if path in self.built:
            return self.built[path]
        if type(module) in LEAVES:
            saved = convert_leaf(module, path)
        elif path == "" or path in self.scopes:
            saved = self.scope(self.scopes.get(path) or Scope("", module, (), {}))
        elif isinstance(module, nn.Sequential):
            saved = Saved("Sequential", None, children=self.children(path, module))
        else:
            raise ExportError(f"{path or '<model>'}: {type(module).__qualname__} is never called in forward and is "
                              "not a quantized module; remove it or make it a Sequential")
        self.built[path] = saved
        return saved

    def children(self, path, module):
        prefix = f"{path}." if path else ""
        return [(name, self.module(prefix + name, child)) for name, child in module.named_children()]

    def scope(self, scope):
        """The Saved of a traced non-leaf module call: a Sequential or a Graph."""
        where = f"{scope.path or '<model>'} ({type(scope.module).__qualname__})"
        b = GraphBuild(where, f"{scope.path}." if scope.path else "")
        inputs = []
        if scope.path == "":
            placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
            for n in placeholders:
                b.env[n] = b.fresh(INPUT if len(placeholders) == 1 else n.name)
                inputs.append(b.env[n])
            members = [n for n in self.graph.nodes if n.op != "placeholder"]
            depth = 0
        else:
            if scope.kwargs:
                raise ExportError(f"{where}: called with keyword arguments {sorted(scope.kwargs)}; pass them by "
                                  "position")
            args = _trim(scope.args)
            if not all(_is_proxy(a) for a in args):
                raise ExportError(f"{where}: called with arguments that are not tensors; qgraph graphs take tensors")
            params = [p for p in inspect.signature(scope.module.forward).parameters]
            for i, a in enumerate(args):
                base = INPUT if len(args) == 1 else (params[i] if i < len(params) else f"input{i}")
                b.env[a.node] = b.fresh(base)
                inputs.append(b.env[a.node])
            members = [n for n in self.graph.nodes if scope in n.meta.get("scopes", ())]
            depth = members[0].meta["scopes"].index(scope) + 1 if members else 0
        calls, entered, outputs = [], set(), None
        for n in members:
            scopes = n.meta.get("scopes", ())
            if len(scopes) > depth:
                inner = scopes[depth]
                if inner not in entered:
                    entered.add(inner)
                    calls.append(self.call_scope(b, inner, n))
                continue
            if n.op == "call_module":
                functional = n.meta.get("functional")
                if functional and n.target == f"{functional[0]}.activation_post_process":
                    b.env[n] = b.value(n.args[0], n)
                    continue
                calls.append(self.call_leaf(b, n))
            elif n.op in ("call_function", "call_method"):
                self.operation(b, n)
            elif n.op == "output":
                out = n.args[0]
                outputs = b.value(out, n) if isinstance(out, torch.fx.Node) else [
                    b.value(o, n) for o in _nodes_of_fx(out, where)]
            else:
                raise ExportError(f"{where}: node `{n.name}` ({n.op} {n.target}) is not supported; parameters and "
                                  "buffers are read by modules, not by forward")
        if scope.path != "":
            out = scope.output
            outs = [out.node] if _is_proxy(out) else _nodes_of(out, where)
            if any(o not in b.env for o in outs):
                raise ExportError(f"{where}: returns a value computed outside it")
            outputs = b.env[outs[0]] if _is_proxy(out) else [b.env[o] for o in outs]
        b.prune(outputs if isinstance(outputs, list) else [outputs])
        children = self.children(scope.path, scope.module)
        chain_inputs = [INPUT] + [nd["name"] for nd in b.nodes]
        is_chain = (
            type(scope.module) is nn.Sequential
            and inputs == [INPUT]
            and [c for c, _ in calls] == [name for name, _ in children]
            and len(b.nodes) == len(calls)
            and all(ins == [prev] for (_, ins), prev in zip(calls, chain_inputs))
            and outputs == (b.nodes[-1]["name"] if b.nodes else None)
        )
        if is_chain:
            return Saved("Sequential", None, children=children)
        config = {"type_name": type(scope.module).__name__, "nodes": b.nodes}
        if inputs != [INPUT]:
            config["inputs"] = inputs
        config["outputs" if isinstance(outputs, list) else "output"] = outputs
        return Saved(type(scope.module).__name__, config, children=children)

    def call_scope(self, b, inner, first):
        """A call of a non-leaf child module (its nodes collapse into one Call)."""
        child = b.child(inner.path, "module")
        self.module(inner.path, inner.module)
        args = _trim(inner.args)
        if not all(_is_proxy(a) for a in args):
            raise ExportError(f"{inner.path}: called with arguments that are not tensors")
        ins = [b.value(a.node, first) for a in args]
        name = b.add(child, {"Call": child}, ins)
        out = inner.output
        if _is_proxy(out):
            b.env[out.node] = name
        else:
            for i, o in enumerate(_nodes_of(out, inner.path)):
                b.env[o] = b.add(f"{name}_{i}", {"GetItem": i}, [name])
        return child, ins

    def call_leaf(self, b, n):
        """A call of a leaf child module."""
        child = b.child(n.target, "module")
        module = self.modules[n.target]
        self.module(n.target, module)
        args = _trim(n.args)
        if n.kwargs or not all(isinstance(a, torch.fx.Node) for a in args):
            raise ExportError(f"{n.target} ({type(module).__name__}): called with arguments that are not tensors")
        ins = [b.value(a, n) for a in args]
        b.env[n] = b.add(child, {"Call": child}, ins)
        return child, ins

    def is_tuple(self, n):
        """True if node `n` gives a tuple: by its propagated shape, else by the module it calls."""
        meta = n.meta.get("tensor_meta")
        if meta is not None:
            # TensorMetadata is a NamedTuple itself: a tensor has a shape.
            return not hasattr(meta, "shape")
        return n.op == "call_module" and isinstance(self.modules[n.target], TUPLE_MODULES)

    def functional(self, b, n):
        """A QFunctional op (add, add_relu, mul, cat, add_scalar, mul_scalar)."""
        path, op = n.meta["functional"]
        child = b.child(path, "QFunctional")
        self.module(path, self.modules[path])
        if child in b.functionals:
            raise ExportError(f"{path}: QFunctional used by two call sites; give each call site its own "
                              "FloatFunctional (one instance has one set of output parameters)")
        b.functionals.add(child)
        if op == "cat":
            tensors = n.args[0]
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            ins = [b.value(t, n) for t in tensors]
            if dim < 0:
                rank = _rank(tensors[0])
                if rank is None:
                    raise ExportError(f"{path}: cat along dim {dim} needs the input rank; pass --input-shape")
                dim += rank
            fop = {"Cat": dim}
        elif op in ("add_scalar", "mul_scalar"):
            ins = [b.value(n.args[0], n)]
            fop = {QUANTIZED_OPS[op]: float(n.args[1])}
        else:
            ins = [b.value(a, n) for a in n.args[:2]]
            fop = QUANTIZED_OPS[op]
        b.env[n] = b.add(child, {"Functional": [child, fop]}, ins)

    def operation(self, b, n):
        """A call_function / call_method node."""
        target = n.target
        tname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if n.meta.get("functional") and isinstance(target, torch._ops.OpOverloadPacket):
            self.functional(b, n)
        elif target is torch.flatten or target == "flatten":
            args = list(n.args) + [None] * 3
            start = n.kwargs.get("start_dim", args[1] if args[1] is not None else 0)
            end = n.kwargs.get("end_dim", args[2] if args[2] is not None else -1)
            rank = _rank(n.args[0])
            if end != -1 and not (rank is not None and end == rank - 1):
                raise ExportError(f"{b.where}: flatten({start}, {end}) at `{n.name}`; qgraph flattens to the last "
                                  "dimension (end_dim=-1)")
            if start < 0:
                if rank is None:
                    raise ExportError(f"{b.where}: flatten with a negative start_dim needs --input-shape")
                start += rank
            b.env[n] = b.add(n.name, {"Flatten": start}, [b.value(n.args[0], n)])
        elif target in ("reshape", "view") or target is torch.reshape:
            start = _flatten_equivalent(n)
            if start is None:
                raise ExportError(f"{b.where}: {tname} at `{n.name}` is not a flatten of trailing dimensions "
                                  f"(shapes {_shape(n.args[0])} -> {_shape(n)}; pass --input-shape to resolve "
                                  "them); qgraph reshapes only so")
            b.env[n] = b.add(n.name, {"Flatten": start}, [b.value(n.args[0], n)])
        elif target in ("size", "dim") or (target is getattr and n.args[1] == "shape"):
            b.env[n] = None
        elif target is operator.getitem:
            source = n.args[0]
            if b.env.get(source, "") is None:
                b.env[n] = None
            elif isinstance(n.args[1], int) and self.is_tuple(source):
                b.env[n] = b.add(n.name, {"GetItem": n.args[1]}, [b.value(source, n)])
            else:
                raise ExportError(f"{b.where}: `{n.name}` indexes `{source.name}` with {n.args[1]!r}; qgraph takes "
                                  "items of the tuples recurrent modules return, not tensor slices (pass "
                                  f"--input-shape if `{source.name}` is such a tuple)")
        elif target is F.adaptive_avg_pool2d or target is torch._C._nn.adaptive_avg_pool2d:
            size = n.args[1] if len(n.args) > 1 else n.kwargs["output_size"]
            pair = _adaptive_size(size, f"{b.where}: `{n.name}`")
            b.env[n] = b.add(n.name, {"AdaptiveAvgPool2d": pair}, [b.value(n.args[0], n)])
        elif target == "contiguous":
            b.env[n] = b.value(n.args[0], n)
        else:
            raise ExportError(f"{b.where}: operation `{n.name}` ({n.op} {tname}) has no qgraph counterpart; "
                              "supported in forward: module calls, QFunctional ops, flatten, reshape / view (as a "
                              "flatten), adaptive_avg_pool2d, tuple indexing")


TUPLE_MODULES = (nnqd.LSTM, nnqd.GRU, nnqd.LSTMCell)


def _shape(n):
    meta = n.meta.get("tensor_meta") if isinstance(n, torch.fx.Node) else None
    return list(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _rank(n):
    shape = _shape(n)
    return None if shape is None else len(shape)


def _flatten_equivalent(n):
    """k if reshaping node `n` flattens its input's dimensions k.. into one, else None."""
    before, after = _shape(n.args[0]), _shape(n)
    if before is None or after is None or not after:
        return None
    k = len(after) - 1
    if before[:k] != after[:k]:
        return None
    prod = 1
    for d in before[k:]:
        prod *= d
    return k if prod == after[k] else None


def _nodes_of_fx(out, where):
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.fx.Node) for o in out):
        return list(out)
    raise ExportError(f"{where}: returns {out!r}; qgraph graphs return a tensor or a flat tuple of tensors")


def export(model, example):
    """The Saved tree of a converted model; `example` (a tensor or None) resolves shapes."""
    model = model.eval()
    graph = trace(model)
    if example is not None:
        gm = torch.fx.GraphModule(model, graph)
        try:
            ShapeProp(gm).propagate(example)
        except Exception as e:  # noqa: BLE001 - shapes are optional; report and go on
            print(f"note: shape propagation failed ({e}); reshape / view cannot be resolved", file=sys.stderr)
    return Exporter(model, graph).module("", model)


def write(saved, out):
    """Writes the model file."""
    tensors = {}
    saved.collect("", tensors)
    header = {"format_version": FORMAT_VERSION, "model": saved.header()}
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={FORMAT: json.dumps(header)})
    return len(tensors)


# ---------------------------------------------------------------------------------------------
# Command line


def load_model(spec):
    """A model from a `torch.save` file or a `module:function` entry point."""
    path = pathlib.Path(spec)
    sys.path.insert(0, str(pathlib.Path.cwd()))
    if path.is_file():
        return _repair(torch.load(path, map_location="cpu", weights_only=False))
    if ":" not in spec:
        raise ExportError(f"{spec}: neither a file nor an entry point `module:function`")
    module_name, function = spec.rsplit(":", 1)
    if module_name.endswith(".py"):
        file = pathlib.Path(module_name).resolve()
        sys.path.insert(0, str(file.parent))
        loader = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(loader)
        sys.modules[file.stem] = module
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, function)()


def _repair(module):
    """Completes the modules a pickle left half-built. PyTorch's quantized conv modules pickle
    through their own `__getstate__` / `__setstate__`, which skip `nn.Module.__init__`, so an
    unpickled one has no `_modules` or hook dictionaries; rebuilt here as their `__deepcopy__`
    does (`Module.__init__`, then `__setstate__`)."""
    if "_modules" not in module.__dict__:
        state = module.__getstate__()
        torch.nn.Module.__init__(module)
        module.__setstate__(state)
    for child in module._modules.values():
        if child is not None:
            _repair(child)
    return module


def verify_input(spec, shape):
    if spec.startswith("seed:"):
        if shape is None:
            raise ExportError("--verify seed:N needs --input-shape")
        torch.manual_seed(int(spec[5:]))
        return torch.randn(*shape)
    from safetensors.torch import load_file

    return load_file(spec)["input"]


def verify(model, x, out):
    """Runs PyTorch on `x` and writes input and output next to the model file."""
    with torch.no_grad():
        y = model(x)
    if isinstance(y, tuple):
        y = y[0]
    tensors = {"input": x.contiguous()}
    if y.is_quantized:
        tensors.update({"output.int_repr": y.int_repr().contiguous(),
                        "output.scale": torch.tensor([y.q_scale()], dtype=torch.float64),
                        "output.zero_point": torch.tensor([y.q_zero_point()], dtype=torch.int64)})
    else:
        tensors["output"] = y.contiguous()
    path = pathlib.Path(out).with_suffix(".verify.safetensors")
    save_file(tensors, str(path), metadata={"torch": torch.__version__})
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a torch.save(model) file, or an entry point module:function")
    parser.add_argument("out", type=pathlib.Path, help="the model file to write (.safetensors)")
    parser.add_argument("--input-shape", help="an example float input's shape, e.g. 1,3,224,224")
    parser.add_argument("--verify", metavar="INPUT", help="seed:N or a safetensors file with a tensor `input`")
    parser.add_argument("--engine", default="fbgemm", choices=torch.backends.quantized.supported_engines,
                        help="PyTorch's quantized engine while loading and verifying (default fbgemm)")
    args = parser.parse_args()
    torch.backends.quantized.engine = args.engine
    shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    try:
        model = load_model(args.model)
        example = torch.randn(*shape) if shape else None
        count = write(export(model, example), args.out)
        print(f"{args.out}: {count} tensors")
        if args.verify:
            print(f"{verify(model, verify_input(args.verify, shape), args.out)}: PyTorch's output")
    except ExportError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
