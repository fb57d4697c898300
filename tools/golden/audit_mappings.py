"""Audits PyTorch 2.15's eager-mode quantization mappings against qgraph; prints docs/MAPPINGS.md.

    ~/.torch-ref/bin/python tools/golden/audit_mappings.py > docs/MAPPINGS.md

Every entry of torch.ao.quantization.quantization_mappings (static, QAT, dynamic, reference and
sparse module mappings, the functional-to-quantized operator mapping, the qconfig propagation
allow-list, the fixed-qparams table) is listed with what qgraph does with it, and every module of
torch.nn.modules.activation is run on a quantized tensor to record which ones PyTorch runs
un-swapped and with which output parameters. What qgraph does is stated in STATUS below (kept by
hand); an entry PyTorch has that STATUS does not name stops the script, so a new PyTorch entry
cannot go unlisted.
"""

import warnings

import torch
import torch.ao.quantization.quantization_mappings as qm
import torch.nn.modules.activation as activation

warnings.filterwarnings("ignore")
torch.backends.quantized.engine = "fbgemm"

QAT = "not yet: quantization-aware training (#14)"
DYNAMIC = "not yet: a dynamic source qgraph lacks (QAT modules come with #14)"
EMBEDDING = "not yet: static convert does not swap it; `quantize_dynamic` does (see the dynamic table)"
RNN = "float here; `quantize_dynamic` swaps it (see the dynamic table); static int8 LSTM is PyTorch's custom-module flow, not yet here"
REFERENCE = "out of scope: reference modules are FX / PT2E lowering, not eager convert"
SPARSE = "out of scope: sparse quantized linear"
ONEDNN_FUSION = "not yet: eager `fuse_modules` never produces it (only onednn's FX backend config fuses it)"
NORM = "not yet: needs PyTorch's quantized {} kernel (float module missing too)"

# The QAT modules qfake has (its `qat_mappings()` extends qgraph's mappings; `prepare_qat`).


def qat_swap(ours, kind=None):
    as_kind = f" as `{kind}`" if kind else ""
    return f"supported with qfake: `prepare_qat` swaps it for `{ours}`{as_kind} (training forward and backward)"


def qat_convert(ours):
    return f"supported with qfake: `{ours}` -> its quantized module (`qfake::convert`)"


QAT_STATUS = {
    "nn.Conv2d": qat_swap("QatConv", "Conv2d"),
    "nn.Conv3d": qat_swap("QatConv", "Conv3d"),
    "nn.Linear": qat_swap("QatLinear"),
    "nn.NonDynamicallyQuantizableLinear": "not yet: only found inside `nn.MultiheadAttention`, which qgraph lacks",
    "nni.ConvBn1d": qat_swap("QatConv", "ConvBn1d"),
    "nni.ConvBn2d": qat_swap("QatConv", "ConvBn2d"),
    "nni.ConvBn3d": qat_swap("QatConv", "ConvBn3d"),
    "nni.ConvBnReLU1d": qat_swap("QatConv", "ConvBnReLU1d"),
    "nni.ConvBnReLU2d": qat_swap("QatConv", "ConvBnReLU2d"),
    "nni.ConvBnReLU3d": qat_swap("QatConv", "ConvBnReLU3d"),
    "nni.ConvReLU2d": qat_swap("QatConv", "ConvReLU2d"),
    "nni.ConvReLU3d": qat_swap("QatConv", "ConvReLU3d"),
    "nni.LinearReLU": qat_swap("QatLinear", "LinearReLU"),
    "nni.LinearBn1d": qat_swap("QatLinearBn", "LinearBn1d"),
}
DYNAMIC_STATUS = {
    "nn.Linear": "supported: `Linear` -> `DynamicQuantizedLinear` (qint8 per tensor or per channel, float16)",
    "nni.LinearReLU": "supported: fused `LinearReLU` -> `DynamicQuantizedLinearReLU`",
    "nn.Embedding": "supported: `Embedding` -> `QuantizedEmbedding` (quint8, quint4x2)",
    "nn.EmbeddingBag": "supported: `EmbeddingBag` -> `QuantizedEmbeddingBag` (quint8, quint4x2)",
    "nn.LSTM": "supported: `LSTM` -> `DynamicQuantizedLSTM` (qint8, float16)",
    "nn.GRU": "supported: `GRU` -> `DynamicQuantizedGRU` (qint8, float16)",
    "nn.LSTMCell": "supported: `LSTMCell` -> `DynamicQuantizedLSTMCell` (qint8, float16)",
    "nn.GRUCell": "supported: `GRUCell` -> `DynamicQuantizedGRUCell` (qint8, float16)",
    "nn.RNNCell": "supported: `RNNCell` -> `DynamicQuantizedRNNCell` (qint8, float16)",
    "nn.NonDynamicallyQuantizableLinear": "not yet: only found inside `nn.MultiheadAttention`, which qgraph lacks",
}

# What qgraph does with each PyTorch name (float module, fused module or op).
STATUS = {
    "nnqat.Linear": qat_convert("QatLinear"),
    "nnqat.Conv2d": qat_convert("QatConv"),
    "nnqat.Conv3d": qat_convert("QatConv"),
    "nniqat.ConvBn1d": qat_convert("QatConv"),
    "nniqat.ConvBn2d": qat_convert("QatConv"),
    "nniqat.ConvBn3d": qat_convert("QatConv"),
    "nniqat.ConvBnReLU1d": qat_convert("QatConv"),
    "nniqat.ConvBnReLU2d": qat_convert("QatConv"),
    "nniqat.ConvBnReLU3d": qat_convert("QatConv"),
    "nniqat.ConvReLU2d": qat_convert("QatConv"),
    "nniqat.ConvReLU3d": qat_convert("QatConv"),
    "nniqat.LinearReLU": qat_convert("QatLinear"),
    "nniqat.LinearBn1d": qat_convert("QatLinearBn"),
    "QuantStub": "supported: `QuantStub` -> `Quantize`",
    "DeQuantStub": "supported: `DeQuantStub` -> `DeQuantize`",
    "nn.BatchNorm2d": "supported: `BatchNorm2d` -> `QuantizedBatchNorm2d`",
    "nn.BatchNorm3d": "supported: `BatchNorm3d` -> `QuantizedBatchNorm3d`",
    "nn.Dropout": "supported: `Dropout` -> `QuantizedDropout` (the identity)",
    "nn.Conv1d": "supported: `Conv1d` -> `QuantizedConv1d`",
    "nn.Conv2d": "supported: `Conv2d` -> `QuantizedConv2d`",
    "nn.Conv3d": "supported: `Conv3d` -> `QuantizedConv3d`",
    "nn.ConvTranspose1d": "not yet: needs transposed-convolution kernels, float and quantized",
    "nn.ConvTranspose2d": "not yet: needs transposed-convolution kernels, float and quantized",
    "nn.ConvTranspose3d": "not yet: needs transposed-convolution kernels, float and quantized",
    "nn.ELU": "supported: `ELU` -> `QuantizedELU`",
    "nn.Embedding": EMBEDDING,
    "nn.EmbeddingBag": EMBEDDING,
    "nn.GroupNorm": NORM.format("group_norm"),
    "nn.Hardswish": "supported: `Hardswish` -> `QuantizedHardswish`",
    "nn.InstanceNorm1d": NORM.format("instance_norm"),
    "nn.InstanceNorm2d": NORM.format("instance_norm"),
    "nn.InstanceNorm3d": NORM.format("instance_norm"),
    "nn.LayerNorm": NORM.format("layer_norm"),
    "nn.LeakyReLU": "supported: `LeakyReLU` -> `QuantizedLeakyReLU`",
    "nn.NonDynamicallyQuantizableLinear": "not yet: only found inside `nn.MultiheadAttention`, which qgraph lacks",
    "nn.Linear": "supported: `Linear` -> `QuantizedLinear`",
    "nn.ReLU6": "supported: `ReLU6` -> `QuantizedReLU6`",
    "nn.PReLU": "not yet: needs `nn.PReLU` (a weighted activation) and `quantized::prelu`",
    "nnq.FloatFunctional": "supported: `FloatFunctional` -> `QFunctional`",
    "nni.BNReLU2d": "supported: `BNReLU2d` -> `QuantizedBNReLU2d`",
    "nni.BNReLU3d": "supported: `BNReLU3d` -> `QuantizedBNReLU3d`",
    "nni.ConvReLU1d": "supported: `ConvReLU1d` -> `QuantizedConvReLU1d`",
    "nni.ConvReLU2d": "supported: `ConvReLU2d` -> `QuantizedConvReLU2d`",
    "nni.ConvReLU3d": "supported: `ConvReLU3d` -> `QuantizedConvReLU3d`",
    "nni.ConvAdd2d": ONEDNN_FUSION,
    "nni.ConvAddReLU2d": ONEDNN_FUSION,
    "nni.LinearReLU": "supported: `LinearReLU` -> `QuantizedLinearReLU`",
    "nni.LinearLeakyReLU": ONEDNN_FUSION,
    "nni.LinearTanh": ONEDNN_FUSION,
    "nni.ConvBn1d": "supported: `fuse_modules_qat` makes `ConvBn1d` for `prepare_qat` (no post-training counterpart, as in PyTorch)",
    "nni.ConvBn2d": "supported: `fuse_modules_qat` makes `ConvBn2d` for `prepare_qat` (no post-training counterpart, as in PyTorch)",
    "nni.ConvBn3d": "supported: `fuse_modules_qat` makes `ConvBn3d` for `prepare_qat` (no post-training counterpart, as in PyTorch)",
    "nni.ConvBnReLU1d": "supported: `fuse_modules_qat` makes `ConvBnReLU1d` for `prepare_qat` (no post-training counterpart, as in PyTorch)",
    "nni.ConvBnReLU2d": "supported: `fuse_modules_qat` makes `ConvBnReLU2d` for `prepare_qat` (no post-training counterpart, as in PyTorch)",
    "nni.ConvBnReLU3d": "supported: `fuse_modules_qat` makes `ConvBnReLU3d` for `prepare_qat` (no post-training counterpart, as in PyTorch)",
    "nni.LinearBn1d": "supported: `fuse_modules_qat` makes `LinearBn1d` for `prepare_qat` (no post-training counterpart, as in PyTorch)",
    "nn.GRUCell": RNN,
    "nn.LSTMCell": RNN,
    "nn.RNNCell": RNN,
    "nn.LSTM": RNN,
    "nn.GRU": RNN,
    "nn.Sequential": "supported: `Sequential` (qconfigs propagate through it)",
    # Modules PyTorch runs un-swapped on quantized tensors, with fixed output parameters.
    "nn.Hardsigmoid": "added now: `Hardsigmoid` (float; `quantized::hardsigmoid` on quantized values)",
    "nn.Sigmoid": "supported: `Sigmoid` (float; `quantized::sigmoid` on quantized values)",
    "nn.Tanh": "supported: `Tanh` (float; `quantized::tanh` on quantized values)",
    "nn.Softmax": "supported in float: `Softmax`; a quantized input is an error, as in PyTorch",
    # Functional ops.
    "F.elu": "supported: what `QuantizedELU` runs",
    "F.hardswish": "supported: what `QuantizedHardswish` runs",
    "F.instance_norm": NORM.format("instance_norm"),
    "F.layer_norm": NORM.format("layer_norm"),
    "F.leaky_relu": "supported: what `QuantizedLeakyReLU` and `LeakyReLU` run",
    "F.dropout": "supported: the identity (inference only)",
    # The other activations of torch.nn.modules.activation.
    "nn.Threshold": "added now: `Threshold` (float; PyTorch's quantized `threshold` kernel on quantized values)",
    "nn.ReLU": "supported: `ReLU` (an integer clamp on quantized values)",
    "nn.Hardtanh": "supported: `Hardtanh` (an integer clamp on quantized values)",
    "nn.GELU": "not yet: PyTorch runs it on quantized values (`qgelu`, input parameters); matching it bit "
               "for bit needs ATen's vectorized erf / tanh in Rust",
    "nn.MultiheadAttention": "not yet: needs `nn.quantizable.MultiheadAttention` (a custom-module flow)",
}
NO_QUANTIZED_KERNEL = "float only: PyTorch has no quantized kernel for it; not in qgraph"

ALIASES = [("torch.ao.nn.intrinsic.qat", "nniqat"), ("torch.ao.nn.intrinsic.quantized", "nniq"),
           ("torch.ao.nn.intrinsic", "nni"), ("torch.ao.nn.qat", "nnqat"),
           ("torch.ao.nn.quantized.reference", "nnqr"), ("torch.ao.nn.quantized.dynamic", "nnqd"),
           ("torch.ao.nn.quantized", "nnq"), ("torch.ao.nn.sparse", "sparse"), ("torch.nn.functional", "F"),
           ("torch.ao.quantization.stubs", ""), ("torch.nn", "nn")]


def short(obj):
    """`nn.Conv2d`, `nni.ConvReLU2d`, `F.elu`, `QuantStub`, `quantized.elu`: PyTorch's usual spelling."""
    if isinstance(obj, str):
        return obj
    module = getattr(obj, "__module__", "") or ""
    name = getattr(obj, "__name__", str(obj))
    if module.startswith("torch._ops") or "OpOverloadPacket" in type(obj).__name__:
        return f"torch.ops.{obj._qualified_op_name.replace('::', '.')}"
    for prefix, alias in ALIASES:
        if module == prefix or module.startswith(prefix + "."):
            return f"{alias}.{name}" if alias else name
    return f"{module}.{name}"


def status(key, default=None):
    if key in STATUS:
        return STATUS[key]
    if key.startswith(("nniqat.", "nnqat.")):
        return QAT
    if default is not None:
        return default
    raise SystemExit(f"audit_mappings.py: PyTorch has {key}, which STATUS does not describe")


def table(title, note, rows, header=("PyTorch", "maps to", "here")):
    print(f"## {title}\n")
    if note:
        print(f"{note}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"`{c}`" if i < len(row) - 1 else c for i, c in enumerate(row)) + " |")
    print()


def module_rows(mapping, scope=None):
    """One row per entry; `scope` (a workflow other than static quantization) overrides the status."""
    return [(short(k), short(v), scope or status(short(k))) for k, v in mapping.items()]


def fixed_qparams_rows():
    rows = []
    for module, make in qm.DEFAULT_MODULE_TO_ACT_POST_PROCESS.items():
        fq = make()
        rows.append((short(module), f"scale={fq.scale.item()!r}, zero_point={fq.zero_point.item()}",
                     status(short(module))))
    return rows


def quantized_activation_rows():
    """Every activation module with its default arguments on a quantized NCHW tensor."""
    x = torch.quantize_per_tensor(torch.randn(1, 4, 3, 4) * 3, 0.05, 100, torch.quint8)
    rows = []
    for name in activation.__all__:
        cls = getattr(activation, name)
        if name == "MultiheadAttention":
            rows.append((short(cls), "not elementwise (eager mode swaps in nn.quantizable.MultiheadAttention)",
                         status(short(cls))))
            continue
        m = cls(0.1, 20.0) if name == "Threshold" else cls()
        try:
            y = m(x)
            runs = f"runs: output scale {y.q_scale()!r}, zero point {y.q_zero_point()}"
            here = status(short(cls))
        except (RuntimeError, NotImplementedError, TypeError, AssertionError) as e:
            runs = "error: " + str(e).split("\n")[0].split(" with arguments")[0][:70].replace("|", "/")
            here = status(short(cls), NO_QUANTIZED_KERNEL)
        rows.append((short(cls), runs, here))
    return rows


def main():
    sections = [
        ("DEFAULT_STATIC_QUANT_MODULE_MAPPINGS",
         "What eager `convert` swaps (post-training static quantization, what qgraph does).",
         module_rows(qm.DEFAULT_STATIC_QUANT_MODULE_MAPPINGS)),
        ("DEFAULT_QAT_MODULE_MAPPINGS", "What `prepare_qat` swaps.",
         [(k, v, QAT_STATUS.get(k, here)) for k, v, here in module_rows(qm.DEFAULT_QAT_MODULE_MAPPINGS, QAT)]),
        ("DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS", "What `quantize_dynamic` swaps.",
         [(k, v, DYNAMIC_STATUS.get(k, here))
          for k, v, here in module_rows(qm.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS, DYNAMIC)]),
        ("DEFAULT_REFERENCE_STATIC_QUANT_MODULE_MAPPINGS", None,
         module_rows(qm.DEFAULT_REFERENCE_STATIC_QUANT_MODULE_MAPPINGS, REFERENCE)),
        ("DEFAULT_STATIC_SPARSE_QUANT_MODULE_MAPPINGS and DEFAULT_DYNAMIC_SPARSE_QUANT_MODULE_MAPPINGS", None,
         module_rows(qm.DEFAULT_STATIC_SPARSE_QUANT_MODULE_MAPPINGS, SPARSE)
         + module_rows(qm.DEFAULT_DYNAMIC_SPARSE_QUANT_MODULE_MAPPINGS, SPARSE)),
        ("DEFAULT_FLOAT_TO_QUANTIZED_OPERATOR_MAPPINGS", "Functional ops and their quantized operators.",
         module_rows(qm.DEFAULT_FLOAT_TO_QUANTIZED_OPERATOR_MAPPINGS)),
        ("_INCLUDE_QCONFIG_PROPAGATE_LIST", "Types `prepare` propagates qconfigs through besides the mappings' keys.",
         [(short(k), "", status(short(k))) for k in qm._INCLUDE_QCONFIG_PROPAGATE_LIST]),
        ("DEFAULT_MODULE_TO_ACT_POST_PROCESS (fixed output parameters)",
         "`prepare` gives these a `FixedQParamsFakeQuantize` only in training mode "
         "(`_has_special_act_post_process` checks `module.training`); in eval-mode post-training "
         "quantization they get no observer, `convert` leaves them in place, and on quantized values "
         "their kernels pick these parameters themselves (quint8).",
         fixed_qparams_rows()),
        ("torch.nn activations on a quantized tensor",
         "Each module of `torch.nn.modules.activation` with default arguments, called on a quint8 tensor "
         "(scale 0.05, zero point 100): what PyTorch does when `convert` leaves it in place.",
         quantized_activation_rows()),
    ]
    print("# PyTorch's eager quantization mappings and qgraph\n")
    print(f"Generated by `tools/golden/audit_mappings.py` with PyTorch {torch.__version__}. "
          "\"supported\" names qgraph's module (float -> quantized), \"added now\" what the audit added, "
          "\"not yet\" what is missing with the reason, \"out of scope\" what belongs to other workflows.\n")
    counts = {}
    for _, _, rows in sections:
        for row in rows:
            word = row[-1].split(":")[0].split(" in float")[0]  # "supported in float" counts as supported
            counts[word] = counts.get(word, 0) + 1
    print("Rows by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ".\n")
    for title, note, rows in sections:
        table(title, note, rows)


if __name__ == "__main__":
    main()
