"""ImageNet-1K scale costs, three tables in one run (arms alternated where they are repeated):

1. fine-tuning through engines.train.run.train at 1,000 classes, latent cache eager / lazy / none: time of the
   eager build, steps/s in epoch 1 and epoch 2 (the lazy cache fills in epoch 1), total wall time;
2. the minimax criterion (losses + backward + memory update) per step at 1,000 classes vs 10 (N_M 64, 4096-d,
   batch 8, float16 memories, every memory full);
3. sampling img/s with classes mixed in every batch at IPC 10 vs IPC 50, and one class per batch for contrast.

CPU default (reduced): 1,000 classes x 1 image at 32 px, a random 3-level AutoencoderKL, DiT-S/4 (8x8 latents),
2 epochs of batch 8; sampling DiT-T/2 on 3x8x8 'pixel' latents, 10 steps. CUDA (a lent GPU): DiT-XL/2 at 256 px
(random weights), SD-VAE-shaped encoder/decoder, batch 8 fine-tuning for --steps steps per arm on 1,000 classes x
2 images, sampling 50 steps in bf16 at batch 64, projected to 50,000 images on 8 GPUs.
Run: python benchmarks/run.py imagenet1k [--device cuda] [--threads T] [--parts train,criterion,sample] [--no_append]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import report  # noqa: E402
from data.subsets import imagenet_wnids  # noqa: E402

SETUPS = {  # device -> train (model, image size, VAE widths, images per class, epochs | steps), sample (model, latent)
    "cpu": {"train": ("DiT-S/4", 32, (64, 128, 128), 1, 2), "sample": ("DiT-T/2", 8, 10, 64)},
    "cuda": {"train": ("DiT-XL/2", 256, (128, 256, 512, 512), 2, 1), "sample": ("DiT-XL/2", 32, 50, 64)},
}


def load_note():
    return f"load average {os.getloadavg()[0]:.2f} at the start of this table"


#### 1. fine-tuning: eager / lazy / no cache ###################################################################

def make_tree(root, per_class, size):
    rng = np.random.default_rng(0)
    for w in imagenet_wnids():
        os.makedirs(os.path.join(root, w))
        for i in range(per_class):
            arr = rng.integers(0, 256, (size + 4, size + 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, w, f"{i}.png"), compress_level=1)


def bench_train(dev, steps_cuda):
    from diffusers import AutoencoderKL

    from data.folder import SubsetImageFolder
    from data.latent_cache import build_latent_cache
    from data.subsets import get_subset
    from models.dit import DiT_models
    from engines.train.run import train
    from models.vae import load_vae
    model_name, size, widths, per_class, epochs = SETUPS[dev]["train"]
    note = load_note()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_tree(os.path.join(root, "train"), per_class, size)
        torch.manual_seed(0)
        AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * len(widths),
                      up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=widths,
                      layers_per_block=2, latent_channels=4, norm_num_groups=32,
                      sample_size=size).save_pretrained(os.path.join(root, "vae"))
        latent = size // 2 ** (len(widths) - 1)
        torch.save(DiT_models[model_name](input_size=latent, in_channels=4, num_classes=1000).state_dict(),
                   os.path.join(root, "base.pt"))
        n = 1000 * per_class
        spe = n // 8
        total = epochs * spe if dev == "cpu" else steps_cuda
        chunk = max(1, spe // 5) if dev == "cpu" else max(1, total // 4)
        common = dict(mode="finetune", base=os.path.join(root, "base.pt"), vae=os.path.join(root, "vae"),
                      image_size=size, subset="imagenet1k", data_dir=os.path.join(root, "train"), batch_size=8,
                      epochs=epochs if dev == "cpu" else 100, ckpt_every=chunk, progress=False, device=dev,
                      num_workers=0 if dev == "cpu" else 8, memory_dtype="float16", log_every=chunk)
        arms = ("none", "lazy", "eager")
        build = {a: 0.0 for a in arms}
        t0 = time.perf_counter()  # the eager arm's up-front build, timed on its own
        ds = SubsetImageFolder(common["data_dir"], get_subset("imagenet1k"), size, flip=False)
        build_latent_cache(ds, load_vae(common["vae"], device=dev), os.path.join(root, "cache-eager"), device=dev,
                           progress=False)
        build["eager"] = time.perf_counter() - t0
        # the arms advance `chunk` steps at a time in alternating order (resuming exactly from their checkpoints),
        # so a change of machine load hits every arm alike; each chunk's log window times its steps only
        for c, stop in enumerate(range(chunk, total + 1, chunk)):
            for arm in (arms if c % 2 == 0 else arms[::-1]):
                train(dict(common, run_dir=os.path.join(root, f"run-{arm}"), max_steps=stop,
                           cache_dir=os.path.join(root, f"cache-{arm}"), latent_cache=arm != "none",
                           cache_fill="lazy" if arm == "lazy" else "eager"))
        for arm in arms:
            recs = [json.loads(ln) for ln in open(os.path.join(root, f"run-{arm}", "log.jsonl"))]
            secs = {}  # epoch -> (steps, seconds)
            prev = 0
            for r in recs:
                ep = (r["step"] - 1) // spe if dev == "cpu" else 0
                k = r["step"] - prev
                st, sc = secs.get(ep, (0, 0.0))
                secs[ep] = (st + k, sc + k / r["steps_per_s"])
                prev = r["step"]
            rate = {ep: st / sc for ep, (st, sc) in secs.items()}
            steps_s = sum(sc for _, sc in secs.values())
            row = {"latents": arm, "model": model_name, "image/latent": f"{size}/{latent}", "images": n,
                   "steps": total, "build s": f"{build[arm]:.1f}", "epoch 1 steps/s": f"{rate[0]:.2f}",
                   "epoch 2 steps/s": f"{rate[1]:.2f}" if 1 in rate else "",
                   "build + steps s": f"{build[arm] + steps_s:.1f}"}
            if arm == "lazy":
                lazy = [d for d in os.listdir(os.path.join(root, "cache-lazy")) if d.endswith("-lazy")][0]
                filled = np.load(os.path.join(root, "cache-lazy", lazy, "filled.npy"))
                row["VAE encodings"] = f"{int(filled.sum()):,}"
            else:
                row["VAE encodings"] = f"{total * 8:,}" if arm == "none" else f"{2 * n:,}"
            rows.append(row)
            print(row, flush=True)
    notes = (f"engines.train.run.train at 1,000 classes (subset imagenet1k, all classes in one model), {dev}, random "
             f"weights, batch 8, float16 memories; arms advanced {chunk} steps at a time in alternating order "
             f"(exact resume), steps/s from the log windows (setup excluded). 'build + steps s' = the eager build "
             f"plus the time of the steps. VAE encodings: image and mirror entries encoded (none: one per drawn "
             f"image). {torch.get_num_threads()} thread(s), {note}.")
    return rows, notes


#### 2. criterion at 1,000 vs 10 classes #######################################################################

def bench_criterion(dev, iters=30):
    from models.minimax import MinimaxCriterion
    note = load_note()
    g = torch.Generator().manual_seed(0)
    crits = {}
    for k in (10, 1000):
        c = MinimaxCriterion(k, 4096, 64, memory_dtype="float16", device=dev)
        for bank in (c.real, c.pred):
            for a in range(0, k, 100):  # fill every slot (in blocks: 1 GiB in float16 at 1,000 classes)
                bank[a:a + 100] = torch.randn(bank[a:a + 100].shape, generator=g).to(dev, torch.float16)
        c.count[:] = 64
        crits[k] = c
    times = {10: [], 1000: []}
    for it in range(iters + 3):
        for k in (10, 1000) if it % 2 == 0 else (1000, 10):  # arms alternated
            c = crits[k]
            y = torch.randint(0, k, (8,), generator=g)
            real = torch.randn(8, 4096, generator=g).to(dev)
            pred = torch.randn(8, 4096, generator=g).to(dev).requires_grad_()
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            lr, ld = c.losses(pred, real, y)
            (lr + ld).backward()
            t1 = time.perf_counter()
            c.update(real, pred.detach(), y)
            if dev == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if it >= 3:
                times[k].append((t1 - t0, t2 - t1))
    rows = []
    for k in (10, 1000):
        a = np.array(times[k]) * 1e3
        mem = 2 * crits[k].real.numel() * 2 / 2 ** 20
        rows.append({"classes": k, "memories (MiB, float16)": f"{mem:,.0f}",
                     "losses + backward ms": f"{np.median(a[:, 0]):.2f}",
                     "memory update ms": f"{np.median(a[:, 1]):.3f}",
                     "total ms": f"{np.median(a.sum(1)):.2f}"})
    notes = (f"MinimaxCriterion on {dev}: N_M 64, 4096-d, batch 8 of random classes, every memory full; median of "
             f"{iters} steps per arm, arms alternated. {torch.get_num_threads()} thread(s), {note}.")
    return rows, notes


#### 3. sampling IPC 10 vs 50 ##################################################################################

def bench_sample(dev, images):
    from benchmarks.bench_sample import random_dit, sd_vae
    from models.diffusion import Diffusion
    from engines.sample.run import sample_folder
    from models.vae import PixelVAE
    name, latent, steps, batch = SETUPS[dev]["sample"]
    note = load_note()
    if dev == "cuda":
        vae, vae_name = sd_vae(dev)
    else:
        vae, vae_name = PixelVAE(), "pixel"
    model = random_dit(name, latent, vae.latent_channels, dev)
    diffusion = Diffusion.linear(1000).respaced(steps)
    wnids = imagenet_wnids()
    precision = "bf16" if dev == "cuda" else "fp32"

    def run(ipc, mixed):
        classes = wnids[: max(1, images // ipc)]
        out = tempfile.mkdtemp(prefix="bench_i1k_")
        try:
            t0 = time.perf_counter()
            if mixed:  # the project's sampler: (class, index) pairs in batches of `batch`, classes mixed
                sample_folder(model, vae, diffusion, classes, list(range(len(classes))), ipc, out, batch_size=batch,
                              micro_batch=batch, precision=precision, device=dev, progress=False, grid=0,
                              identity={"weights": "random"})
            else:  # one class per batch (DiT's and the authors' loop): calls of `ipc` images
                for j, w in enumerate(classes):
                    sample_folder(model, vae, diffusion, [w], [j], ipc, os.path.join(out, w), batch_size=batch,
                                  micro_batch=0, precision=precision, device=dev, progress=False, grid=0,
                                  identity={"weights": "random"})
            sec = time.perf_counter() - t0
        finally:
            shutil.rmtree(out)
        return len(classes) * ipc, sec

    run(10, True)  # warm-up
    arms = [(10, True), (50, True), (10, False), (50, False)]
    results = {a: [] for a in arms}
    for rep in range(2):
        for a in (arms if rep == 0 else arms[::-1]):  # alternated, best of 2
            results[a].append(run(*a))
    rows = []
    for (ipc, mixed), rs in results.items():
        n, sec = min(rs, key=lambda r: r[1])
        ips = n / sec
        row = {"batches": "classes mixed" if mixed else "one class per batch", "IPC": ipc, "images": n,
               "seconds": f"{sec:.1f}", "img/s": f"{ips:.2f}"}
        if dev == "cuda":
            row["50,000 images on 8 GPUs"] = f"{50_000 / (8 * ips) / 60:.1f} min"
        rows.append(row)
    notes = (f"engines.sample.run.sample_folder on {dev}: {name}, latent {vae.latent_channels}x{latent}x{latent}, VAE "
             f"{vae_name}, random weights, {steps} ancestral steps, guidance 4.0, batch {batch}, {precision}, PNGs "
             f"written; ~{images} images per arm taken as the first classes of ImageNet-1K; best of 2, arms "
             f"alternated. {torch.get_num_threads()} thread(s), {note}.")
    return rows, notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--parts", default="train,criterion,sample", help="comma-separated: train, criterion, sample")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--steps", type=int, default=200, help="cuda: fine-tuning steps per arm")
    p.add_argument("--images", type=int, default=None, help="images per sampling arm (default 640 cpu, 512 cuda)")
    p.add_argument("--no_append", action="store_true", help="print only, do not append to RESULTS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    out = {}
    if "criterion" in parts:
        rows, notes = bench_criterion(dev)
        report("imagenet1k criterion", rows, list(rows[0]), notes=notes, append=not args.no_append)
        out["criterion"] = rows
    if "sample" in parts:
        rows, notes = bench_sample(dev, args.images or (640 if dev == "cpu" else 512))
        report("imagenet1k sample", rows, list(rows[0]), notes=notes, append=not args.no_append)
        out["sample"] = rows
    if "train" in parts:
        rows, notes = bench_train(dev, args.steps)
        report("imagenet1k train", rows, list(rows[0]), notes=notes, append=not args.no_append)
        out["train"] = rows
    return out


if __name__ == "__main__":
    main()
