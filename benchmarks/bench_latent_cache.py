"""Per-step cost of the minimax criterion and of drawing latents from the cache (DiT-XL/2 shapes, batch 8).

Run: python benchmarks/bench_latent_cache.py [--device cuda] [--items 12400]
Compare with one DiT-XL/2 training step (~0.1-0.2 s on an H100): both should be a small fraction of it.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.latent_cache import LatentCache  # noqa: E402
from models.minimax import MinimaxCriterion  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402


def timeit(fn, device, n=50):
    for _ in range(5):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def fake_cache(path, n, shape=(4, 32, 32)):
    """A complete cache of random float16 stats (same layout as build_latent_cache writes)."""
    rng = np.random.default_rng(0)
    for name, scale in (("mean", 5.0), ("std", 0.01)):
        a = np.lib.format.open_memmap(os.path.join(path, f"{name}.npy"), mode="w+", dtype=np.float16,
                                      shape=(n, 2, *shape))
        for s in range(0, n, 1024):
            a[s:s + 1024] = (rng.standard_normal((min(1024, n - s), 2, *shape)) * scale).astype(np.float16)
        a.flush()
    np.save(os.path.join(path, "labels.npy"), rng.integers(0, 10, n))
    atomic_write_json(os.path.join(path, "meta.json"), {"scale": 0.18215, "latent_shape": list(shape)})
    atomic_write_json(os.path.join(path, "progress.json"), {"chunks_done": 1, "num_chunks": 1})


def main(argv=None):
    from benchmarks.common import report
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--items", type=int, default=12400)  # ImageWoof train images
    ap.add_argument("--threads", type=int, default=None)  # CPU threads; 1 avoids spin-wait on a busy machine
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    crit = MinimaxCriterion(10, 4096, device=dev)
    labels = torch.randint(0, 10, (8,), device=dev)
    real = torch.randn(8, 4, 32, 32, device=dev)
    for _ in range(100):  # fill the memories
        crit(torch.randn(8, 4, 32, 32, device=dev), real, torch.randint(0, 10, (8,), device=dev))
    pred = torch.randn(8, 4, 32, 32, device=dev, requires_grad=True)

    def step():
        lr, ld = crit(pred, real, labels)
        (lr + ld).backward()

    rows = [{"what": "minimax criterion: 10 classes, N_M 64, 4096-d, batch 8, loss + backward + update",
             "device": str(dev), "ms": f"{timeit(step, dev):.2f}"}]

    with tempfile.TemporaryDirectory() as d:
        fake_cache(d, args.items)
        g = torch.Generator().manual_seed(0)
        for resident in (False, True):
            cache = LatentCache(d, device=dev, resident=resident)
            ms = timeit(lambda: cache.draw(torch.randint(0, args.items, (8,), generator=g), g), dev)
            rows.append({"what": f"latent cache draw: batch 8 of {args.items} items, "
                                 f"{'resident on the device' if resident else 'memory-mapped float16'}",
                         "device": str(dev), "ms": f"{ms:.3f}"})
    report("latent_cache", rows, ["what", "device", "ms"], notes="Per-step costs the latent cache and the minimax "
           "criterion add to a fine-tuning step (mean of 50 calls after 5 warm-up calls).")


if __name__ == "__main__":
    main()
