"""Golden fixture for `impl Display for QTensor` (crates/qcore/src/display.rs).

Builds quantized tensors with PyTorch from explicit float32 inputs, scales and zero points, and
writes each case's inputs (exact: f32 inputs as u32 bit patterns, f64 scales as u64 bit patterns)
with the expected `str(q)` to crates/qcore/tests/fixtures/display/cases.json.

Run with PyTorch's reference environment (the output path does not depend on the working directory):

    ~/.torch-ref/bin/python tools/golden/gen_display.py
"""

import json
import struct
import warnings
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "crates/qcore/tests/fixtures/display/cases.json"

DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8, "qint32": torch.qint32}


def f32_bits(x: torch.Tensor) -> list[int]:
    """The float32 values of `x`, flattened in C order, as u32 bit patterns."""
    return [v & 0xFFFFFFFF for v in x.contiguous().view(torch.int32).flatten().tolist()]


def f64_bits(x: float) -> int:
    """A Python float as its u64 bit pattern."""
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def f32(values) -> torch.Tensor:
    """A float32 tensor from (nested) lists."""
    return torch.tensor(values, dtype=torch.float32)


def seeded(seed: int, *shape, mult: float = 1.0) -> torch.Tensor:
    """Deterministic normal float32 values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32) * mult


def zero_hidden(x: torch.Tensor) -> torch.Tensor:
    """`x` with the elements a summarized print leaves out set to zero, to keep the fixture small.

    The printed text does not change: PyTorch formats (and sizes its columns from) the kept
    elements only.
    """
    keep = torch.ones(x.shape, dtype=torch.bool)
    for d, n in enumerate(x.shape):
        if n > 6:
            mask = torch.zeros(n, dtype=torch.bool)
            mask[:3] = True
            mask[-3:] = True
            shape = [1] * x.dim()
            shape[d] = n
            keep = keep & mask.reshape(shape)
    return torch.where(keep, x, torch.zeros_like(x))


CASES = []


def per_tensor(name: str, x: torch.Tensor, scale: float, zero_point: int, dtype: str) -> None:
    """Adds a `torch.quantize_per_tensor` case."""
    x = x.to(torch.float32)
    q = torch.quantize_per_tensor(x, scale, zero_point, DTYPES[dtype])
    assert q.q_scale() == scale
    CASES.append(
        {
            "name": name,
            "shape": list(x.shape),
            "input_bits": f32_bits(x),
            "dtype": dtype,
            "qscheme": "per_tensor_affine",
            "scale_bits": f64_bits(scale),
            "zero_point": zero_point,
            "expected": str(q),
        }
    )


def per_channel(name: str, x: torch.Tensor, scales: list, zero_points: list, axis: int, dtype: str) -> None:
    """Adds a `torch.quantize_per_channel` case."""
    x = x.to(torch.float32)
    s = torch.tensor(scales, dtype=torch.float64)
    zp = torch.tensor(zero_points, dtype=torch.int64)
    q = torch.quantize_per_channel(x, s, zp, axis, DTYPES[dtype])
    assert q.q_per_channel_scales().tolist() == [float(v) for v in scales]
    CASES.append(
        {
            "name": name,
            "shape": list(x.shape),
            "input_bits": f32_bits(x),
            "dtype": dtype,
            "qscheme": "per_channel_affine",
            "scales_bits": [f64_bits(float(v)) for v in scales],
            "zero_points": [int(v) for v in zero_points],
            "axis": axis,
            "expected": str(q),
        }
    )


def per_channel_float(name: str, x: torch.Tensor, scales: list, zero_points: list, axis: int, dtype: str) -> None:
    """Adds a `torch.quantize_per_channel` case with float32 scales and float32 zero points."""
    x = x.to(torch.float32)
    s = torch.tensor(scales, dtype=torch.float32)
    zp = torch.tensor(zero_points, dtype=torch.float32)
    q = torch.quantize_per_channel(x, s, zp, axis, DTYPES[dtype])
    assert q.qscheme() == torch.per_channel_affine_float_qparams
    CASES.append(
        {
            "name": name,
            "shape": list(x.shape),
            "input_bits": f32_bits(x),
            "dtype": dtype,
            "qscheme": "per_channel_affine_float_qparams",
            "float_scales_bits": f32_bits(s),
            "float_zero_points_bits": f32_bits(zp),
            "axis": axis,
            "expected": str(q),
        }
    )


def build() -> None:
    """Every case, in a fixed order."""
    # The seed example of the crate docs.
    per_tensor("seed_quint8", f32([0.7, 0.5, -0.7]), 0.25, 4, "quint8")

    # Fixed notation, every dtype, negative zero points.
    per_tensor("fixed_qint8_neg_zp_2d", f32([[-1.3, 0.2, 2.9], [0.05, -0.6, 1.1]]), 0.1, -3, "qint8")
    per_tensor("fixed_qint32_neg_zp", f32([0.5, -12.25, 3.75, 100.0]), 0.5, -100, "qint32")
    per_tensor("fixed_scale_third", f32([0.1, 0.2, 0.9, -0.4]), 1.0 / 3.0, 0, "qint8")
    per_tensor("fixed_scale_1e-05", f32([0.001, 0.0005, -0.0002]), 1e-05, 0, "qint8")
    per_tensor("fixed_scale_0.0001", f32([0.01, 0.0123]), 0.0001, 0, "qint32")

    # Integer mode: every nonzero finite value integral.
    per_tensor("int_mode_qint8", f32([1.0, 2.0, -3.0, 10.0, -128.0]), 1.0, 0, "qint8")
    per_tensor("int_mode_scale2_quint8", f32([0.0, 2.0, 4.0, 100.0, 254.0]), 2.0, 0, "quint8")
    per_tensor("int_mode_scale123", f32([[123.0, 0.0], [-246.0, 1230.0]]), 123.0, 0, "qint8")
    per_tensor("int_mode_huge_scale_1e4", f32([1e4, -2e5, 1.27e6, 0.0]), 1e4, 0, "qint8")
    per_tensor("int_mode_50", torch.arange(50, dtype=torch.float32) - 20, 1.0, 0, "qint8")

    # Scientific notation.
    per_tensor("sci_tiny_scale_1e-06", f32([1e-5, 5e-5, 2e-4, 0.0, 3.3e-6]), 1e-06, 10, "quint8")
    per_tensor("sci_tiny_negative", f32([-1e-5, 5e-5, -2e-4]), 1e-06, 0, "qint8")
    per_tensor("sci_huge_scale_qint32", f32([1e9, -3e8, 1e4, 0.0]), 1e4, 0, "qint32")
    per_tensor("sci_qint32_big_ints", f32([123456789.0, -2e9, 7.0, 0.0]), 1.0, 0, "qint32")
    per_tensor("sci_qint32_ratio", f32([0.001, 12.5, -3.25, 0.0]), 0.001, 0, "qint32")
    per_tensor("sci_scale_1e16", f32([5e16, -1e17, 0.0]), 1e16, 0, "qint8")
    per_tensor("sci_2d_ratio", f32([[0.01, 20.0], [-15.0, 0.0]]), 0.01, 0, "qint32")

    # Non-finite dequantized values: the f32 product overflows.
    per_tensor("inf_overflow_qint8", f32([3.2e38, -3.2e38, 1.0]), 2e38, 0, "qint8")

    # All zeros: width 1 but each value prints as `0.`.
    per_tensor("all_zero_30", torch.zeros(30), 0.1, 7, "quint8")
    per_tensor("all_zero_2d", torch.zeros(3, 4), 0.5, -2, "qint8")

    # 0-dim.
    per_tensor("zero_dim", torch.tensor(0.7), 0.25, 4, "quint8")
    per_tensor("zero_dim_zero", torch.tensor(0.0), 0.25, 4, "quint8")
    per_tensor("zero_dim_int", torch.tensor(-3.0), 1.0, 0, "qint8")
    per_tensor("zero_dim_sci", torch.tensor(1e-5), 1e-06, 0, "qint32")

    # Empty.
    per_tensor("empty_0", torch.zeros(0), 0.5, 1, "quint8")
    per_tensor("empty_2x0", torch.zeros(2, 0), 0.5, 1, "qint8")
    per_tensor("empty_2x0x3", torch.zeros(2, 0, 3), 0.5, 1, "qint32")

    # N-D nesting.
    per_tensor("nd_2d", seeded(1, 3, 4), 0.05, 128, "quint8")
    per_tensor("nd_3d", seeded(2, 2, 3, 4), 0.03, 0, "qint8")
    per_tensor("nd_4d", seeded(3, 2, 2, 2, 3), 0.1, -5, "qint8")
    per_tensor("nd_2d_wide_rows", seeded(4, 2, 20), 0.02, 0, "qint32")
    per_tensor("nd_5d", seeded(5, 2, 1, 2, 1, 2), 0.125, 3, "qint8")

    # Line wrapping.
    per_tensor("wrap_30", seeded(6, 30), 0.05, 128, "quint8")
    per_tensor("wrap_30_qint32_sci", seeded(7, 30, mult=100.0), 0.0007, 0, "qint32")
    # Vector lengths around the suffix line-width limit (the `+ 1` quirk of `_add_suffixes`).
    for n in range(1, 23):
        per_tensor(f"suffix_sweep_{n}", seeded(100 + n, n), 0.25, 4, "quint8")

    # Lines the over-counted `last_line_len` of `_add_suffixes` wraps earlier than their length needs.
    for n, scale in [(7, 1.0), (10, 2.0)]:
        x = torch.full((n,), 100.0) * (torch.arange(n) % 3 + 1)
        per_tensor(f"suffix_quirk_{n}", x, scale, 0, "qint8")

    # Summarization above 1000 elements; the formatter sees the kept values only.
    per_tensor("summarize_1d_1001", zero_hidden(seeded(8, 1001)), 0.02, 128, "quint8")
    per_tensor("summarize_3d", zero_hidden(seeded(9, 7, 13, 11)), 0.03, 0, "qint8")
    per_tensor("summarize_2d_short_rows", zero_hidden(seeded(10, 3, 334)), 0.05, 0, "qint8")
    per_tensor("summarize_4d", zero_hidden(seeded(11, 7, 2, 2, 36)), 0.05, 0, "qint8")
    hidden = torch.zeros(1001)
    hidden[:3] = torch.tensor([0.0, 1.0, 2.0])
    hidden[-3:] = torch.tensor([998.0, 999.0, 1000.0])
    hidden[500] = 0.5  # not integral, but summarized away: int mode
    hidden[501] = 1e6  # would force sci mode if it were printed
    per_tensor("summarize_hides_non_int", hidden, 0.5, 0, "qint32")
    exact = torch.zeros(1000)
    exact[-1] = 1.0
    per_tensor("exactly_1000_not_summarized", exact, 0.5, 0, "qint32")

    # Per-channel.
    per_channel("pc_axis0_qint8", seeded(12, 3, 4), [0.1, 0.02, 1.5], [0, 10, -5], 0, "qint8")
    per_channel("pc_axis1_quint8", seeded(13, 2, 3, 4), [0.05, 0.1, 0.2], [128, 100, 0], 1, "quint8")
    per_channel(
        "pc_last_axis_4d", seeded(14, 2, 2, 3, 5), [1e-05, 0.01, 0.1, 0.5, 2.0], [0, 1, -1, 127, -128], 3, "qint8"
    )
    per_channel("pc_qint32", seeded(15, 4, 2, mult=50.0), [0.001, 0.5, 3.0, 1e-05], [0, -1000, 7, 0], 0, "qint32")
    per_channel("pc_int_scales", f32([[1.0, 2.0], [3.0, 4.0], [8.0, -8.0]]), [1.0, 2.0, 4.0], [0, 0, 0], 0, "qint8")
    per_channel("pc_sci_scales", seeded(16, 2, 3), [1e-05, 0.5], [0, 0], 0, "qint8")
    g = torch.Generator().manual_seed(17)
    many_scales = [float(v) for v in torch.rand(25, generator=g, dtype=torch.float64) * 0.1 + 0.001]
    many_zps = [int(v) for v in torch.randint(-128, 128, (25,), generator=g)]
    per_channel("pc_many_channels", seeded(18, 2, 25), many_scales, many_zps, 1, "qint8")
    per_channel("pc_inf_mixed", f32([[3.2e38, 1.0], [0.123, -0.5]]), [2e38, 0.1], [0, 0], 0, "qint8")
    per_channel("pc_empty_axis", torch.zeros(0, 3), [], [], 0, "quint8")
    per_channel("pc_empty_other_dim", torch.zeros(3, 0), [0.1, 0.2, 0.3], [1, 2, 3], 0, "quint8")
    per_channel_float("pcf_quint8", f32([[0.5, -1.0, 2.0], [3.0, 0.25, -0.7]]), [0.1, 0.2], [10.0, 3.5], 0, "quint8")
    per_channel_float("pcf_axis1_qint8", seeded(21, 2, 3, 4), [0.05, 1e-05, 0.3], [0.5, -3.25, 7.0], 1, "qint8")
    per_channel_float("pcf_int_qparams", seeded(22, 3, 5, mult=20.0), [1.0, 2.0, 4.0], [0.0, 1.0, 2.0], 0, "quint8")
    per_channel("pc_1d", f32([0.5, -0.25, 3.0]), [0.25, 0.5, 1.0], [0, 0, 0], 0, "qint8")
    g = torch.Generator().manual_seed(19)
    big_scales = [float(v) for v in torch.rand(1001, generator=g, dtype=torch.float64) + 0.01]
    big_zps = [int(v) for v in torch.randint(-128, 128, (1001,), generator=g)]
    per_channel("pc_1001_channels_summarized", zero_hidden(seeded(20, 1001)), big_scales, big_zps, 0, "qint8")


def main() -> None:
    """Builds every case and writes the fixture."""
    warnings.filterwarnings("ignore", category=UserWarning)
    build()
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # One case per line, for readable diffs.
    header = json.dumps({"generator": "tools/golden/gen_display.py", "torch": torch.__version__})
    body = ",\n".join(json.dumps(c, separators=(",", ":")) for c in CASES)
    OUT.write_text(header[:-1] + ',"cases":[\n' + body + "\n]}\n")
    print(f"wrote {len(CASES)} cases, {OUT.stat().st_size} bytes to {OUT}")


if __name__ == "__main__":
    main()
