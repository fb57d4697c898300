"""Golden fixtures for the memory formats of quantized values and the rounding that depends on them,
produced with PyTorch 2.15 (fbgemm engine).

    ~/.torch-ref/bin/python tools/golden/gen_layouts.py

Writes crates/qgraph/tests/fixtures/layouts.safetensors in the format of tools/golden/fixtures.py.
PyTorch's elementwise kernels round the elements their scalar loop takes (the last elements of each
contiguous run, every element of a run shorter than 64 or of a loop whose operands are not contiguous
in one order) differently from their vector body, so the result depends on the inputs' memory formats
and on odd sizes. Each case: the op, its arguments, each input's int_repr (NCHW order) with its
parameters and memory format ("nchw" or "cl"), and PyTorch's output int_repr (NCHW order), its
parameters and memory format ("nchw", "cl", or "any" when both describe it). Input values are uniform
random bytes. Sizes stay below 65536 elements, so that PyTorch splits a loop into
min(threads, 2) parts: the same on every machine with at least two threads. The metadata records the
machine the fixture was made on. Deterministic.
"""

import warnings

import torch
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from fixtures import Fixture

warnings.filterwarnings("ignore")
torch.manual_seed(0)
torch.backends.quantized.engine = "fbgemm"

# Parameter sets: with input scales half the output scale many sums land on ties, where one f32 ulp
# decides the rounding (the scalar loop's rule shows); the second set is an ordinary one.
# 64792 elements: two parallel parts of 32396 = 506 * 64 + 12.
BIG = (1, 8, 89, 91)
ADD_PARAMS = [((0.1, 117), (0.1, 99), (0.2, 128)), ((0.05, 100), (0.0213, 7), (0.07, 60))]


def qrand(shape, q, fmt):
    """A quint8 tensor of uniform random bytes with parameters q, in memory format fmt."""
    v = torch.randint(0, 256, shape, dtype=torch.uint8)
    t = torch._make_per_tensor_quantized_tensor(v, q[0], q[1])
    t = t.contiguous(memory_format=torch.channels_last) if fmt == "cl" else t
    t.requested_format = fmt
    return t


def fmt_of(t):
    if t.dim() != 4:
        return "nchw"
    c, cl = t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    assert c or cl
    return "any" if c and cl else ("cl" if cl else "nchw")


def record(fx, name, op, args, inputs, y):
    params = {"op": op, "args": args, "in_q": [[t.q_scale(), t.q_zero_point()] for t in inputs],
              "formats": [t.requested_format for t in inputs], "out_q": [y.q_scale(), y.q_zero_point()],
              "out_format": fmt_of(y)}
    tensors = {f"x{i}": t.int_repr().contiguous() for i, t in enumerate(inputs)}
    fx.case(name, params, **tensors, y=y.int_repr().contiguous())


def add_cases(fx):
    # Run lengths below 64, exactly 64, k * 64 + r, and two parallel parts with tails.
    shapes = [(1, 3, 4, 5), (1, 4, 4, 4), (2, 19, 5, 7), BIG, (1, 1, 7, 9), (3, 21, 1, 1)]
    for pi, (qa, qb, qo) in enumerate(ADD_PARAMS):
        for op in ["add", "add_relu"]:
            fn = getattr(torch.ops.quantized, op)
            for si, shape in enumerate(shapes):
                for fa, fb in [("nchw", "nchw"), ("cl", "cl"), ("nchw", "cl"), ("cl", "nchw")]:
                    # The two-part size once per format, for add on the tie-heavy parameters.
                    if shape == BIG and (fa != fb or pi or op != "add"):
                        continue
                    a, b = qrand(shape, qa, fa), qrand(shape, qb, fb)
                    record(fx, f"{op}_p{pi}_s{si}_{fa}_{fb}", op, {"out_q": list(qo)}, [a, b], fn(a, b, *qo))
            # Broadcasts: b along the channels, per row, per column, along the batch.
            n, c, h, w = 2, 19, 3, 70
            for bi, bshape in enumerate([(1, c, 1, 1), (n, c, h, 1), (1, 1, 1, w), (1, c, h, w), (n, 1, h, w),
                                         (n, c, 1, w)]):
                for fa, fb in [("nchw", "nchw"), ("cl", "cl"), ("cl", "nchw")]:
                    a, b = qrand((n, c, h, w), qa, fa), qrand(bshape, qb, fb)
                    record(fx, f"{op}_p{pi}_bcast{bi}_{fa}_{fb}", op, {"out_q": list(qo)}, [a, b], fn(a, b, *qo))


def cat_cases(fx):
    qo = (0.2, 3)
    for cs in [(13, 21), (5, 8, 19), (16, 37)]:
        for fmts in [["cl"] * len(cs), ["nchw"] * len(cs), ["cl"] + ["nchw"] * (len(cs) - 1)]:
            qs = [(0.1, 117), (0.3, 17), (0.2, 3)][: len(cs)]
            xs = [qrand((2, c, 3, 5), q, f) for c, q, f in zip(cs, qs, fmts)]
            name = f"cat_c{'_'.join(map(str, cs))}_{'_'.join(fmts)}"
            record(fx, name, "cat", {"dim": 1, "out_q": list(qo)}, xs, torch.ops.quantized.cat(xs, 1, *qo))
    for fmt in ["cl", "nchw"]:
        xs = [qrand((2, 13, h, 5), (0.1, 117), fmt) for h in (3, 4)]
        record(fx, f"cat_dim2_{fmt}", "cat", {"dim": 2, "out_q": list(qo)}, xs, torch.ops.quantized.cat(xs, 2, *qo))


def unary_cases(fx):
    q = (0.1, 117)
    mods = [("elu", nnq.ELU(0.027, 70, 0.5), {"scale": 0.027, "zero_point": 70, "alpha": 0.5}),
            ("hardswish", nnq.Hardswish(0.031, 60), {"scale": 0.031, "zero_point": 60}),
            ("leaky_relu", nnq.LeakyReLU(0.04, 20, 0.1), {"scale": 0.04, "zero_point": 20, "negative_slope": 0.1}),
            ("sigmoid", torch.sigmoid, {}), ("tanh", torch.tanh, {})]
    for name, m, args in mods:
        for si, shape in enumerate([(2, 19, 5, 7), (1, 3, 4, 5), BIG]):
            for fmt in ["nchw", "cl"]:
                if shape == BIG and name not in ("elu", "hardswish"):
                    continue
                x = qrand(shape, q, fmt)
                record(fx, f"{name}_s{si}_{fmt}", name, args, [x], m(x))


def pool_cases(fx):
    q = (0.05, 7)
    for c in [13, 19]:
        for fmt in ["nchw", "cl"]:
            x = qrand((2, c, 9, 11), q, fmt)
            for size in [(18, 22), (5, 7), (13, 12)]:
                for ac in [False, True]:
                    y = F.interpolate(x, size=size, mode="bilinear", align_corners=ac)
                    record(fx, f"upsample_bilinear_c{c}_{fmt}_{size[0]}x{size[1]}_ac{int(ac)}", "upsample_bilinear",
                           {"size": list(size), "align_corners": ac}, [x], y)
            for k, s, p in [(3, 2, 1), (2, 2, 0)]:
                y = F.avg_pool2d(x, k, s, p)
                record(fx, f"avg_pool2d_c{c}_{fmt}_k{k}s{s}p{p}", "avg_pool2d",
                       {"kernel_size": k, "stride": s, "padding": p}, [x], y)
            y = F.adaptive_avg_pool2d(x, (4, 5))
            record(fx, f"adaptive_avg_pool2d_c{c}_{fmt}", "adaptive_avg_pool2d", {"output_size": [4, 5]}, [x], y)


def main():
    assert torch.get_num_threads() >= 2, "the fixtures describe PyTorch with at least two threads"
    fx = Fixture("qgraph", "layouts")
    add_cases(fx)
    cat_cases(fx)
    unary_cases(fx)
    pool_cases(fx)
    fx.save()


if __name__ == "__main__":
    main()
