"""Minimax fine-tuning throughput through the real loop (engines.train.run.train): latent cache vs per-step VAE encoding,
fp32 vs bf16 autocast. Steps/s are steady-state (log windows after the first, which holds the warm-up).

CPU default: DiT-S/2 on 8x8 latents of 32 px images from a tiny random AutoencoderKL (3 levels, so its encoder
cost is visible), batch 8. CUDA default: DiT-XL/2 at 256 px (4x32x32 latents) with a random AutoencoderKL of the
SD-VAE architecture, batch 8; peak memory and the projected time of the authors' 8-epoch ImageWoof run (12.4k steps).
Weights are random (no download): the cost is the same as with the real ones.
Run: python benchmarks/run.py train [--device cuda] [--steps N] [--threads T] [--no_append]"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import report  # noqa: E402
from data.folder import SubsetImageFolder  # noqa: E402
from data.latent_cache import build_latent_cache  # noqa: E402
from data.subsets import custom_subset  # noqa: E402
from models.dit import DiT_models  # noqa: E402
from engines.train.run import train  # noqa: E402
from models.vae import load_vae  # noqa: E402

WOOF = ["n02086240", "n02087394", "n02088364"]
IMAGEWOOF_STEPS = 12400  # 8 epochs x ~12.4k images / batch 8 (SPEC §2)
SETUPS = {  # device -> (model, image size, VAE block widths, layers per block, images per class)
    "cpu": ("DiT-S/2", 32, (64, 128, 128), 2, 16),
    "cuda": ("DiT-XL/2", 256, (128, 256, 512, 512), 2, 24),
}


def make_inputs(root, model_name, image_size, widths, layers, per_class):
    """Random images, a random AutoencoderKL folder and a random base DiT (plain state dict) under `root`."""
    from diffusers import AutoencoderKL
    rng = np.random.default_rng(0)
    for c in WOOF:
        os.makedirs(os.path.join(root, "data", c))
        for i in range(per_class):
            arr = rng.integers(0, 256, (image_size + 8, image_size + 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, "data", c, f"{i}.png"))
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(widths),
                        up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=widths,
                        layers_per_block=layers, latent_channels=4, norm_num_groups=32, sample_size=image_size)
    vae.save_pretrained(os.path.join(root, "vae"))
    latent = image_size // 2 ** (len(widths) - 1)
    base = DiT_models[model_name](input_size=latent, in_channels=4, num_classes=1000)
    torch.save(base.state_dict(), os.path.join(root, "base.pt"))
    return latent


def steady_steps_per_s(log_path):
    """Steps/s over every log window but the first (allocator, kernel and cache warm-up)."""
    recs = [json.loads(ln) for ln in open(log_path)]
    prev = [0] + [r["step"] for r in recs[:-1]]
    windows = [(r["step"] - s, r["steps_per_s"]) for s, r in zip(prev, recs)]
    windows = windows[1:] or windows
    return sum(n for n, _ in windows) / sum(n / sps for n, sps in windows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=None, help="steps per variant (default: 60 cuda; cpu: 24 fp32, "
                                                           "6 bf16, which the CPU emulates ~10x slower)")
    p.add_argument("--batch", type=int, default=8, help="images per step (the authors' 8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 avoids spin-waits on a busy machine)")
    p.add_argument("--no_append", action="store_true", help="print only, do not append to RESULTS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    model_name, size, widths, layers, per_class = SETUPS[dev]

    def plan(bf16):
        """(steps, log window) of a variant: first window = warm-up, the rest timed."""
        if args.steps:
            return args.steps, max(1, args.steps // 4)
        return ((6, 2) if bf16 else (24, 4)) if dev == "cpu" else (60, 10)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        latent = make_inputs(root, model_name, size, widths, layers, per_class)
        common = dict(mode="finetune", base=os.path.join(root, "base.pt"), vae=os.path.join(root, "vae"),
                      image_size=size, subset="custom", data_dir=os.path.join(root, "data"),
                      cache_dir=os.path.join(root, "cache"), batch_size=args.batch, epochs=10_000,
                      ckpt_every=10_000, progress=False, device=dev,
                      num_workers=0 if dev == "cpu" else 4, tf32=True)
        # time the one-off cache build apart from the steps (the runs below reuse it)
        t0 = time.perf_counter()
        dataset = SubsetImageFolder(common["data_dir"], custom_subset(common["data_dir"]), size, flip=False)
        build_latent_cache(dataset, load_vae(common["vae"], device=dev), common["cache_dir"],
                           device=dev, progress=False)
        build_s = (time.perf_counter() - t0) / len(dataset)
        for cache in (True, False):
            for bf16 in (False, True):
                steps, window = plan(bf16)
                best = None
                for rep in range(1 if bf16 and dev == "cpu" else 2):  # best of 2: robust to a busy machine
                    run_dir = os.path.join(root, f"run-{cache}-{bf16}-{rep}")
                    if dev == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t0 = time.perf_counter()
                    out = train(dict(common, latent_cache=cache, bf16=bf16, run_dir=run_dir, max_steps=steps,
                                     log_every=window))
                    wall = time.perf_counter() - t0
                    sps = steady_steps_per_s(os.path.join(run_dir, "log.jsonl"))
                    if best is None or sps > best[0]:
                        best = (sps, wall)
                sps, wall = best
                row = {"model": model_name, "image/latent": f"{size}/{latent}", "batch": args.batch,
                       "latents": "cache" if cache else "VAE per step", "precision": "bf16" if bf16 else
                       ("fp32+TF32" if dev == "cuda" else "fp32"), "steps/s": f"{sps:.2f}",
                       "ms/step": f"{1e3 / sps:.0f}", "timed steps": steps - window,
                       "trainable": f"{out['trainable']:,}", "run wall s": f"{wall:.0f}",
                       "12.4k steps": f"{IMAGEWOOF_STEPS / sps / 3600:.2f} h"}
                if dev == "cuda":
                    row["peak GiB"] = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f}"
                rows.append(row)
                print(row, flush=True)
    notes = (f"engines.train.run.train on {dev}: Difffit + minimax, random weights; steps/s over the log windows after "
             f"the first (warm-up), best of 2 runs (1 for CPU bf16). Latent cache build: {build_s * 1e3:.0f} ms per "
             f"image (image + mirror, once per dataset). '12.4k steps' = the authors' 8-epoch ImageWoof fine-tuning "
             f"at this speed. {torch.get_num_threads()} CPU threads.")
    report("train", rows, list(rows[0].keys()), notes=notes, append=not args.no_append)
    return rows


if __name__ == "__main__":
    main()
