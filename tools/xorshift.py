"""qtest's deterministic generator (crates/qtest/src/lib.rs: `XorShift`, `random_f32s`) in Python.

Shared by the tools that must produce the same pseudo-random data as the Rust tests and
benchmarks. Import it after putting tools/ on sys.path.

    >>> float(random_f32s(1, 1)[0])  # state 1 -> 8193 -> 8257 -> 1082269761; >> 40 = 0
    -1.0
    >>> [float(v) for v in random_f32s(3, 1000)]  # as printed by the Rust random_f32s
    [-1.0, 0.13263392448425293, 0.949852705001831]

Note that a small seed's first value is always -1.0 (its first output is below 2^40).
"""

import numpy as np

MASK = (1 << 64) - 1


def random_u64s(n: int, seed: int) -> np.ndarray:
    """The first `n` outputs of `XorShift::new(seed).next_u64()` (xorshift64 13/7/17, seed made odd)."""
    x = (seed | 1) & MASK
    out = np.empty(n, np.uint64)
    for i in range(n):
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
        out[i] = x
    return out


def random_f32s(n: int, seed: int) -> np.ndarray:
    """`random_f32s(n, seed)`: f32 in [-1, 1), ((u64 >> 40) / 2^24) * 2 - 1, every step exact in f32."""
    top24 = (random_u64s(n, seed) >> np.uint64(40)).astype(np.float32)
    return top24 / np.float32(1 << 24) * np.float32(2) - np.float32(1)
