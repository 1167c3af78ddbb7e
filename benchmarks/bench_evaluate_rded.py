"""RDED soft-label evaluation throughput: student + teacher training images/s, device-resident vs DataLoader path.

    python benchmarks/run.py evaluate_rded                   # CPU at 64 px (+ CUDA at 224 px when a GPU exists)
    python benchmarks/run.py evaluate_rded --cpu_size 32 --n 100 --threads 2

Per data path: (a) data only: augmented + CutMixed batches/s with no network, (b) the teacher's forward alone on
those batches, (c) whole training steps (data, teacher forward, student forward + backward + AdamW). The shares
are (c)/(a) and (c)/(b): the fraction of a step the data path and the teacher cost. Arms alternate (rounds) so a
load change hits both; the load average is recorded. ResNet-18 student and teacher (random weights: speed only).
On CUDA the 224 px run projects ImageNet-1K IPC 10 (3.0M student images) and IPC 50 (15.0M) from (c).
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.eval_augment import PilRdedTrainSet, cutmix, rded_train_batch  # noqa: E402
from benchmarks.common import make_images  # noqa: E402
from data.eval_data import decode_all  # noqa: E402
from engines.evaluate import rded  # noqa: E402
from engines.evaluate.common import (DeviceTest, DeviceTrain, PilTrain, make_model,  # noqa: E402
                                      memory_format_for, to_device_format)
from utils.io import run_info  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def data_only(source, device):
    gen = torch.Generator(device=device).manual_seed(0)
    _sync(device)
    t0, n = time.perf_counter(), 0
    for x, y in source.batches(gen):
        x = cutmix(x, y, gen)[0]
        n += x.shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def teacher_only(teacher, source, device, amp, steps):
    gen = torch.Generator(device=device).manual_seed(0)
    batches = [x for x, _ in source.batches(gen)][:steps]
    for x in batches[:2]:  # warm-up (cudnn autotune, allocator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            teacher(to_device_format(x))
    _sync(device)
    t0 = time.perf_counter()
    for x in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            teacher(to_device_format(x))
    _sync(device)
    return sum(x.shape[0] for x in batches) / (time.perf_counter() - t0)


def training(teacher, source, test, classes, size, epochs, device, amp):
    model = make_model("resnet18_bn", classes, size, None, device, False, 0)
    kw = dict(lr=1e-3, weight_decay=0.01, temperature=20.0, eval_every=10 ** 9, best_after=0, seed=0,
              device=device, amp=amp, log=lambda *a: None)
    rded.train_student(model, teacher, source, test, epochs=1, **kw)  # warm-up
    _sync(device)
    return rded.train_student(model, teacher, source, test, epochs=epochs, **kw)["images_per_sec"]


def bench(device, size, n, classes, batch, epochs, workers, amp, rounds):
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = make_images(tmp, n, classes, size * 8 // 7)
        u8 = decode_all(paths, size, workers)
        test = DeviceTest(u8[:classes], labels[:classes], 256, device)
        teacher = torchvision.models.resnet18(num_classes=classes).eval().requires_grad_(False)
        teacher = teacher.to(device, memory_format=memory_format_for(device))
        scale = (0.5, 1.0)
        arms = {"device-resident": DeviceTrain(u8, labels, size, batch, device,
                                               augment=lambda x, s, g: rded_train_batch(x, s, 2, scale, g)),
                "pil-dataloader": PilTrain(paths, labels, size, batch, device, workers, 0,
                                           PilRdedTrainSet(paths, labels, size, 2, scale))}
        res = {name: [] for name in arms}
        for _ in range(rounds):  # alternate the arms: a load change hits both
            for name, src in arms.items():
                res[name].append((data_only(src, device), teacher_only(teacher, src, device, amp, 8),
                                  training(teacher, src, test, classes, size, epochs, device, amp)))
    return {name: tuple(float(np.mean(v)) for v in zip(*r)) for name, r in res.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu_size", type=int, default=64)
    ap.add_argument("--n", type=int, default=200, help="train images on CPU (2,000 on CUDA)")
    ap.add_argument("--batch", type=int, default=50, help="batch on CPU (100 on CUDA, the IPC 10 protocol's)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no_cuda", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = run_info()
    configs = [("cpu", args.cpu_size, args.n, args.batch, "none")]
    if torch.cuda.is_available() and not args.no_cuda:
        torch.backends.cudnn.benchmark = True
        configs += [("cuda", 224, 2000, 100, "none"), ("cuda", 224, 2000, 100, "bf16")]
    lines = []
    for dev, size, n, batch, amp in configs:
        load = os.getloadavg()[0]
        machine = info["device"] if dev == "cuda" else f"cpu: {platform.machine()}, {os.cpu_count()} cores, " \
                                                       f"{args.threads} threads"
        for name, (data, teach, step) in bench(torch.device(dev), size, n, 10, batch, args.epochs, args.workers,
                                               amp, args.rounds).items():
            proj = (f"{3.0e6 / step / 60:.0f} min / {15.0e6 / step / 60:.0f} min" if dev == "cuda" else "-")
            lines.append(f"| {machine} | {size} | {n} | {batch} | {amp} | {name} | {data:,.0f} | {teach:,.0f} | "
                         f"{step:,.1f} | {100 * step / data:.1f} % | {100 * step / teach:.0f} % | {proj} | "
                         f"{load:.1f} |")
            print(lines[-1], flush=True)
    header = ["", f"## bench_evaluate_rded ({time.strftime('%Y-%m-%d %H:%M')}, git {info['git_sha']}, torch "
                  f"{info['torch']}, host {info['host']})", "",
              "RDED protocol training step: ResNet-18 student + ResNet-18 teacher (random weights), ShufflePatches(2) "
              "+ RandomResizedCrop + flip + CutMix, KL soft labels, AdamW; arms alternated "
              f"({args.rounds} rounds, mean). Shares = step img/s / (data or teacher-forward img/s).", "",
              "| machine | px | images | batch | amp | data path | data img/s | teacher fwd img/s | training img/s | "
              "data share | teacher share | IPC 10 / IPC 50 (1K) | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    text = "\n".join(header + lines) + "\n"
    print(text)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"), "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
