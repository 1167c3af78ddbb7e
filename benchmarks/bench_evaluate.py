"""Training throughput of the evaluation protocol: device-resident batched augmentation vs the PIL DataLoader path.

    python benchmarks/bench_evaluate.py                      # CPU at 64 px (+ CUDA at 224 px if a GPU exists)
    python benchmarks/bench_evaluate.py --cpu_size 32 --n 256

Measures (a) data only: augmented images/s with no model, (b) full training steps/s (ResNetAP-10 on CUDA,
ConvNet on CPU), same batch size and CutMix. Appends a table to benchmarks/RESULTS.md.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import make_images  # noqa: E402
from data.eval_data import decode_all  # noqa: E402
from engines.evaluate.common import DeviceTest, DeviceTrain, PilTrain, make_model  # noqa: E402
from engines.evaluate.idc import train_classifier  # noqa: E402
from utils.io import run_info  # noqa: E402


def data_only(source, epochs, device):
    gen = torch.Generator(device=device).manual_seed(0)
    n, t0 = 0, None
    for e in range(epochs + 1):  # epoch 0 warms up (workers start, allocator)
        if e == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
        for x, _ in source.batches(gen):
            n += x.shape[0] if e else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.time() - t0)


def training(source, test, arch, classes, size, epochs, device, amp):
    model = make_model(arch, classes, size, None, device, False, 0)
    train_classifier(model, source, test, 1, 0.01, 0.9, 5e-4, 1, 0, device, amp, log=lambda *a: None)  # warm-up
    res = train_classifier(model, source, test, epochs, 0.01, 0.9, 5e-4, 10 ** 9, 0, device, amp,
                           log=lambda *a: None)
    return res["images_per_sec"]


def bench(device, size, n, arch, epochs, workers, amp):
    classes = 10
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = make_images(tmp, n, classes, size + size // 7, (size + size // 7) * 5 // 4)
        u8 = decode_all(paths, size, workers)
        test = DeviceTest(u8[:classes], labels[:classes], 256, device)
        gpu = DeviceTrain(u8, labels, size, 64, device)
        pil = PilTrain(paths, labels, size, 64, device, workers, 0)
        rows = []
        for name, src in (("gpu-resident", gpu), ("pil-dataloader", pil)):
            rows.append((name, data_only(src, epochs, device), training(src, test, arch, classes, size, epochs,
                                                                          device, amp)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu_size", type=int, default=64)
    ap.add_argument("--n", type=int, default=512, help="train images on CPU (1,000 on CUDA)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpu_arch", default="convnet6")
    ap.add_argument("--no_cuda", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    info = run_info()
    configs = [("cpu", args.cpu_size, args.n, args.cpu_arch, "none")]
    if torch.cuda.is_available() and not args.no_cuda:
        configs.append(("cuda", 224, 1000, "resnetap10", "bf16"))
    lines = []
    for dev, size, n, arch, amp in configs:
        machine = info["device"] if dev == "cuda" else f"cpu: {platform.processor() or platform.machine()}, " \
                                                       f"{os.cpu_count()} cores"
        for name, data_ips, train_ips in bench(torch.device(dev), size, n, arch, args.epochs, args.workers, amp):
            lines.append(f"| {machine} | {dev} | {size} | {n} | {arch} | {amp} | {name} | {data_ips:,.0f} | "
                         f"{train_ips:,.0f} |")
            print(lines[-1], flush=True)
    header = ["", f"## bench_evaluate ({time.strftime('%Y-%m-%d %H:%M')}, git {info['git_sha']}, torch "
                  f"{info['torch']}, host {info['host']})", "",
              "| machine | device | px | images | arch | amp | data path | aug only img/s | training img/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    text = "\n".join(header + lines) + "\n"
    print(text)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    with open(path, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
