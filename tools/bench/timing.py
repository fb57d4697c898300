"""Timing shared by the tools/bench/torch_*.py scripts."""

import time


def median_ns(fn, min_time=0.3, min_iters=5):
    """Median of per-call times (ns) over batches of about 20 ms of calls, after a warm-up."""
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    per_batch = max(1, int(0.02 / one))
    samples = []
    start = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - start < min_time:
        t0 = time.perf_counter_ns()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter_ns() - t0) / per_batch)
        if len(samples) >= 200:
            break
    samples.sort()
    return samples[len(samples) // 2]


def bench_args():
    """`--threads N --out FILE` of a tools/bench/torch_*.py script; sets torch's thread count."""
    import argparse

    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args
