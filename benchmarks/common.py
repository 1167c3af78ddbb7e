"""Shared benchmark plumbing: timing with warm-up and device sync, a Markdown table, and RESULTS.md appends."""
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from utils.io import run_info  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device="cpu", warmup=1, iters=3):
    """Median seconds per call of fn() after warm-up, synchronising the device."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def machine_name():
    info = run_info()
    cores = os.cpu_count()
    return f"{info['device']} ({cores} CPU cores, torch {info['torch']})"


def markdown_table(rows, columns):
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def report(stage, rows, columns, notes="", append=True):
    """Print the table and append it, with machine and date, to benchmarks/RESULTS.md."""
    table = markdown_table(rows, columns)
    print(table)
    if append:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(RESULTS, "a") as f:
            f.write(f"\n### {stage} — {machine_name()} — {stamp}\n\n")
            if notes:
                f.write(notes.strip() + "\n\n")
            f.write(table)
    return table


def make_images(root, n, classes, height, width=None):
    """n random JPEGs root/c<k>/<i>.jpg spread over `classes` folders -> (paths, labels)."""
    import numpy as np
    from PIL import Image
    rng = np.random.RandomState(0)
    paths, labels = [], []
    for i in range(n):
        c = i % classes
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        p = os.path.join(root, f"c{c}", f"{i}.jpg")
        Image.fromarray(rng.randint(0, 256, (height, width or height, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
        labels.append(c)
    return paths, labels
