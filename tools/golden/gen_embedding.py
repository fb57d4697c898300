"""Golden fixtures for qgraph's Embedding / EmbeddingBag (float and weight-only quantized) and
`quantize_dynamic` with dtype quint8 and quint4x2, PyTorch 2.15.

    ~/.torch-ref/bin/python tools/golden/gen_embedding.py

Writes crates/qgraph/tests/fixtures/embedding.safetensors (format of tools/golden/fixtures.py):

    float_emb_<D>[_pad]          nn.Embedding: weight, int64 indices, out; params num_embeddings,
                                 embedding_dim, padding_idx (as given), printed
    float_bag_<D>                the weight of the EmbeddingBag cases of dimension D
    float_bag_<D>_<mode>_<form>  nn.EmbeddingBag: input, offsets / psw (when used), out;
                                 params mode, include_last_offset, padding_idx, printed
    q8_<D>                       quantize_dynamic(Sequential(Embedding, EmbeddingBag), dtype=quint8):
                                 weight (float), the float-qparams weights of both ("emb.q", "emb.scales",
                                 "emb.zero_points", "bag.q", ...), outputs "emb.out", "bag.out",
                                 "bag.out_psw"; printed
    q4_<D>                       quantize_dynamic(..., {nn.EmbeddingBag}, dtype=quint4x2): "bag.q" is
                                 quantize_per_channel's int_repr (flat-packed nibbles, as from_float
                                 makes it), "bag.values" the unpacked values, scales, zero points and
                                 outputs as above

PyTorch's 4-bit embedding kernels read each row at row * ceil(D/2) bytes of the weight, but
`quantize_per_channel` packs quint4x2 flat: for odd D its rows are misaligned and the last reads
past the tensor. For odd D the 4-bit outputs here are PyTorch's on the weight padded with a copy
of its first column (same per-row range, so the same scales, zero points and values), cut to D
columns: the embeddings of the weight's own quantized rows.

Deterministic: fixed seeds, one thread, fbgemm engine.
"""

import warnings

import torch
from fixtures import Fixture
from torch import nn
from torch.ao.quantization import (
    default_float_qparams_observer,
    default_float_qparams_observer_4bit,
    float_qparams_weight_only_qconfig_4bit,
    quantize_dynamic,
)

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"

N = 10
DIMS = [1, 7, 8, 33, 257]


def unpack4(packed, count):
    """The `count` values of flat-packed quint4x2 bytes (element 2i in the low nibble)."""
    out = torch.empty(2 * packed.numel(), dtype=torch.uint8)
    out[0::2] = packed & 15
    out[1::2] = packed >> 4
    return out[:count]


def float_qparams_weight(weight, observer):
    """What `from_float` does: run the weight observer, quantize_per_channel with its qparams."""
    obs = observer()
    obs(weight)
    scales, zero_points = obs.calculate_qparams()
    q = torch.quantize_per_channel(weight, scales.float(), zero_points.float(), 0, obs.dtype)
    return q, scales.float(), zero_points.float()


def bag_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, N, (17,), generator=g)
    offsets = torch.tensor([0, 3, 3, 9, 16])  # an empty bag, a bag of one at the end
    psw = torch.randn(17, generator=g)
    return indices, offsets, psw


def gen_float(fx):
    for d in DIMS:
        torch.manual_seed(d)
        for pad in [None, -2]:
            m = nn.Embedding(N, d, padding_idx=pad)
            x = torch.randint(0, N, (3, 4))
            x[0, 0] = N - 2
            name = f"float_emb_{d}" + ("_pad" if pad is not None else "")
            fx.case(name, {"num_embeddings": N, "embedding_dim": d, "padding_idx": pad, "printed": repr(m)},
                    weight=m.weight.detach(), indices=x, out=m(x).detach())
        indices, offsets, psw = bag_inputs(d)
        indices[4] = 1
        weight = torch.randn(N, d)
        fx.case(f"float_bag_{d}", {"dim": d}, weight=weight)
        for mode in ["sum", "mean", "max"]:
            forms = [("offsets", False, None), ("last", True, None), ("pad", False, 1), ("2d", False, None)]
            if mode == "sum":
                forms += [("psw", False, None), ("psw_pad", False, 1), ("psw_2d", False, None)]
            for form, last, pad in forms:
                m = nn.EmbeddingBag(N, d, mode=mode, include_last_offset=last, padding_idx=pad, _weight=weight)
                tensors = {}
                if form in ("2d", "psw_2d"):
                    inp = indices[:16].reshape(4, 4)
                    w = psw[:16].reshape(4, 4) if form == "psw_2d" else None
                    out = m(inp, per_sample_weights=w)
                else:
                    inp = indices
                    offs = torch.cat([offsets, torch.tensor([17])]) if last else offsets
                    w = psw if form.startswith("psw") else None
                    out = m(inp, offs, per_sample_weights=w)
                    tensors["offsets"] = offs
                if w is not None:
                    tensors["psw"] = w
                params = {"mode": mode, "include_last_offset": last, "padding_idx": pad, "printed": repr(m)}
                fx.case(f"float_bag_{d}_{mode}_{form}", params, input=inp, out=out.detach(), **tensors)


class Pair(nn.Module):
    def __init__(self, d, mode):
        super().__init__()
        self.emb = nn.Embedding(N, d)
        self.bag = nn.EmbeddingBag(N, d, mode=mode)


def quantized_outputs(model, indices, offsets, psw, x):
    out = {"bag.out": model.bag(indices, offsets)}
    if model.bag.mode == "sum" or not isinstance(model.bag, nn.EmbeddingBag):
        out["bag.out_psw"] = model.bag(indices, offsets, per_sample_weights=psw)
    out["emb.out"] = model.emb(x)
    return {k: v.detach() for k, v in out.items()}


def gen_quantized(fx):
    for d in DIMS:
        for mode in ["sum", "max"]:
            torch.manual_seed(100 + d)
            model = Pair(d, mode)
            indices, offsets, psw = bag_inputs(d + 1)
            x = torch.randint(0, N, (2, 3))
            tag = "" if mode == "sum" else "_max"

            q8 = quantize_dynamic(model, dtype=torch.quint8)
            t = {"emb.weight": model.emb.weight.detach(), "bag.weight": model.bag.weight.detach(),
                 "indices": indices, "offsets": offsets, "psw": psw, "x": x}
            for child in ["emb", "bag"]:
                qw, s, z = float_qparams_weight(getattr(model, child).weight.detach(), default_float_qparams_observer)
                assert torch.equal(getattr(q8, child).weight().int_repr(), qw.int_repr())
                t.update({f"{child}.q": qw.int_repr(), f"{child}.scales": s, f"{child}.zero_points": z})
            t.update(quantized_outputs(q8, indices, offsets, psw, x))
            fx.case(f"q8_{d}{tag}", {"dim": d, "mode": mode, "printed": repr(q8)}, **t)

            q4 = quantize_dynamic(model, {nn.EmbeddingBag}, dtype=torch.quint4x2)
            qw, s, z = float_qparams_weight(model.bag.weight.detach(), default_float_qparams_observer_4bit)
            t = {"bag.weight": model.bag.weight.detach(), "indices": indices, "offsets": offsets, "psw": psw,
                 "x": x, "bag.q": qw.int_repr(), "bag.values": unpack4(qw.int_repr(), N * d).reshape(N, d),
                 "bag.scales": s, "bag.zero_points": z}
            reference = q4
            if d % 2:
                padded = Pair(d + 1, mode)
                with torch.no_grad():
                    padded.emb.weight.copy_(torch.cat([model.emb.weight, model.emb.weight[:, :1]], 1))
                    padded.bag.weight.copy_(torch.cat([model.bag.weight, model.bag.weight[:, :1]], 1))
                reference = quantize_dynamic(padded, {nn.EmbeddingBag: float_qparams_weight_only_qconfig_4bit})
                qp, sp, zp = float_qparams_weight(padded.bag.weight.detach(), default_float_qparams_observer_4bit)
                assert torch.equal(sp, s) and torch.equal(zp, z)
                assert torch.equal(unpack4(qp.int_repr(), N * (d + 1)).reshape(N, d + 1)[:, :d], t["bag.values"])
            outs = quantized_outputs(reference, indices, offsets, psw, x)
            for k, v in outs.items():
                t[k] = v[..., :d] if k.startswith("bag") else v
            fx.case(f"q4_{d}{tag}", {"dim": d, "mode": mode, "printed": repr(q4)}, **t)


def main():
    fx = Fixture("qgraph", "embedding")
    gen_float(fx)
    gen_quantized(fx)
    fx.save()


if __name__ == "__main__":
    main()
