"""Golden fixtures for qfake's QAT embeddings (PyTorch 2.15 torch.ao.nn.qat.Embedding /
EmbeddingBag with `default_embedding_qat_qconfig`), made with PyTorch's own modules and autograd.

    ~/.torch-ref/bin/python tools/golden/gen_qat_embedding.py

Writes crates/qfake/tests/fixtures/qat_embedding.safetensors (format: tools/golden/fixtures.py).
One thread, torch.manual_seed(case seed).

Each case: a float nn.Sequential holding one nn.Embedding / nn.EmbeddingBag (PyTorch's N(0, 1)
init; the padding row zeroed), model.qconfig = default_embedding_qat_qconfig (cases *_4bit:
default_embedding_qat_qconfig_4bit), train mode,
prepare_qat with mapping=get_embedding_qat_module_mappings() (PyTorch's default QAT mappings do
not swap embeddings). Steps k = 1, 2, 3: the indices (and offsets, per_sample_weights) "idx.k",
"offsets.k", "psw.k"; the upstream gradient "g.k"; y.k = the model's output; (y * g).sum()
backward: "dweight.k" (the table's gradient), "dpsw.k" (per_sample_weights' gradient, when
given). After each step the weight fake quantizer's buffers "wfq.scale.k", "wfq.zero_point.k"
(float zero points). No optimizer step. Then convert(model.eval(), mapping=get_embedding_static_quant_module_mappings()): "q.weight" (int_repr,
uint8), "q.scales", "q.zero_points" (f32, per row), and "q.y" the quantized module's float
output on the step-3 input.
Params: kind (embedding / bag), num_embeddings, embedding_dim, padding_idx (or null), mode,
include_last_offset, input ("1d" with offsets, or "2d"), psw (bool).
"""

import warnings

import torch
import torch.ao.quantization as tq
from fixtures import Fixture
from torch import nn

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.backends.quantized.engine = "x86"

# name: (kind, num, dim, padding_idx, mode, include_last_offset, input, psw)
CASES = {
    "embedding_padding": ("embedding", 12, 6, 2, None, False, "2d", False),
    "embedding": ("embedding", 9, 5, None, None, False, "2d", False),
    "bag_sum_psw_padding": ("bag", 12, 6, 3, "sum", False, "1d", True),
    "bag_mean_padding": ("bag", 12, 7, 0, "mean", False, "1d", False),
    "bag_mean_last_offset": ("bag", 10, 4, None, "mean", True, "1d", False),
    "bag_max": ("bag", 10, 6, None, "max", False, "2d", False),
    "bag_max_padding": ("bag", 10, 5, 4, "max", False, "1d", False),
    "bag_sum": ("bag", 10, 6, None, "sum", False, "2d", False),
    # default_embedding_qat_qconfig_4bit (quint4x2 table).
    "bag_mean_4bit": ("bag", 12, 6, None, "mean", False, "1d", False),
    "bag_sum_psw_4bit": ("bag", 12, 8, 3, "sum", False, "1d", True),
}


def inputs(case, num, padding_idx, include_last_offset, form, psw):
    """Indices with repeats and (where set) the padding row; offsets with an empty bag."""
    if case == "embedding":
        return (torch.randint(0, num, (4, 5)),)
    if form == "2d":
        idx = torch.randint(0, num, (5, 3))
        if padding_idx is not None:
            idx[1, 1] = padding_idx
        return (idx,)
    idx = torch.randint(0, num, (14,))
    idx[3] = idx[4]
    if padding_idx is not None:
        idx[5] = padding_idx
        idx[9] = padding_idx
    offsets = torch.tensor([0, 3, 3, 8, 10])
    if include_last_offset:
        offsets = torch.cat([offsets, torch.tensor([14])])
    args = (idx, offsets)
    if psw:
        args = args + (torch.rand(14).requires_grad_(),)
    return args


def main():
    fx = Fixture("qfake", "qat_embedding")
    for seed, (name, (kind, num, dim, padding_idx, mode, last, form, psw)) in enumerate(CASES.items()):
        torch.manual_seed(2000 + seed)
        if kind == "embedding":
            float_mod = nn.Embedding(num, dim, padding_idx=padding_idx)
        else:
            float_mod = nn.EmbeddingBag(num, dim, mode=mode, include_last_offset=last, padding_idx=padding_idx)
        model = nn.Sequential(float_mod)
        t = {"weight": float_mod.weight.detach().clone()}
        model.train()
        model.qconfig = (
            tq.default_embedding_qat_qconfig_4bit if name.endswith("4bit") else tq.default_embedding_qat_qconfig
        )
        tq.prepare_qat(model, mapping=tq.quantization_mappings.get_embedding_qat_module_mappings(), inplace=True)
        qat = model[0]
        for k in range(1, 4):
            args = inputs(name, num, padding_idx, last, form, psw)
            y = qat(*args) if len(args) > 1 else model(args[0])
            g = torch.randn(y.shape)
            (y * g).sum().backward()
            t[f"idx.{k}"] = args[0]
            if len(args) > 1:
                t[f"offsets.{k}"] = args[1]
            if len(args) > 2:
                t[f"psw.{k}"] = args[2].detach().clone()
                t[f"dpsw.{k}"] = args[2].grad.clone()
            t[f"g.{k}"], t[f"y.{k}"] = g, y.detach()
            t[f"dweight.{k}"] = qat.weight.grad.clone()
            qat.weight.grad = None
            t[f"wfq.scale.{k}"] = qat.weight_fake_quant.scale.clone()
            t[f"wfq.zero_point.{k}"] = qat.weight_fake_quant.zero_point.clone()
        converted = tq.convert(
            model.eval(), mapping=tq.quantization_mappings.get_embedding_static_quant_module_mappings()
        )
        qmod = converted[0]
        w = qmod.weight()
        t["q.weight"] = w.int_repr()
        t["q.scales"] = w.q_per_channel_scales().float()
        t["q.zero_points"] = w.q_per_channel_zero_points().float()
        last_args = [t["idx.3"]] + ([t["offsets.3"]] if "offsets.3" in t else [])
        if "psw.3" in t:
            last_args.append(t["psw.3"])
        t["q.y"] = qmod(*last_args)
        params = dict(kind=kind, num_embeddings=num, embedding_dim=dim, padding_idx=padding_idx, mode=mode,
                      include_last_offset=last, input=form, psw=psw, qat=type(qat).__name__,
                      quantized=type(qmod).__name__)
        fx.case(name, params, **t)
        print(f"  {name}: {type(qat).__name__} -> {type(qmod).__name__}")
    fx.save()


if __name__ == "__main__":
    main()
