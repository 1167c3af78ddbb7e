"""Sampling throughput: the authors' way (one image at a time, fp32) against batched sampling (fp32, bf16), end to end
(noise, guided steps, decoding, PNG writing) with engines.sample.run.sample_folder.

CPU default (< 2 min on the 2-core machine): DiT-S/4 (DiT-S width and depth, 16 tokens) on 3x16x16 'pixel' latents,
random weights, 20 steps, 4 images one at a time, 16 batched in fp32, 8 in bf16 (no native bf16 on AVX2: slow).
CUDA default: DiT-XL/2 at 256 px (32x32x4 latents) decoded by SD-VAE (stabilityai/sd-vae-ft-mse if available,
else a random AutoencoderKL of the same shape), random DiT weights (speed does not depend on them), with the
compute-floor ratio of SPEC §8: images x steps x 2 (guidance) x 118.6 GFLOP at 800 TFLOP/s.
Run: python benchmarks/run.py sample [--device cuda] [--images N] [--batch B] [--compile] [--no_append]
     python benchmarks/run.py sample --guidance_rounds R [--threads T]   # mode guidance vs none, alternating"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import report, timeit  # noqa: E402
from models.diffusion import Diffusion  # noqa: E402
from models.dit import DiT_models  # noqa: E402
from engines.sample.run import guided_eps, sample_folder  # noqa: E402
from models.vae import PixelVAE, load_vae  # noqa: E402
from utils.io import run_info  # noqa: E402

GFLOP_PER_FORWARD = 118.6  # DiT-XL/2 at 256 px per image (SPEC §8)
PEAK_TFLOPS = 800.0  # H100/H200 dense bf16 (SPEC §8)
WOOF = ["n02086240", "n02087394", "n02088364", "n02089973"]


@torch.no_grad()
def random_dit(name, input_size, in_channels, device):
    """A DiT with every weight random (DiT's zero-init layers would make the output trivial)."""
    torch.manual_seed(0)
    model = DiT_models[name](input_size=input_size, in_channels=in_channels, num_classes=1000)
    for n, p in model.named_parameters():
        if n != "pos_embed":
            p.normal_(0, 0.02)
    return model.to(device).eval()


def sd_vae(device):
    """SD-VAE for decoding if it can be loaded here, else a random AutoencoderKL of the same architecture."""
    try:
        return load_vae("stabilityai/sd-vae-ft-mse", device=device), "sd-vae-ft-mse"
    except Exception:  # offline: any failure means "not available", the shape is what matters for speed
        from diffusers import AutoencoderKL
        from models.vae import SDVAE
        model = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                              block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
        return SDVAE(model.to(device), identity="random"), "random SD-VAE shape"


def run(model, vae, diffusion, images, batch, micro, precision, device, compile=False, guide=None):
    """Seconds and images/s of sampling `images` images (spread over WOOF) into a fresh folder; guide: sample_folder's
    mode-guidance keywords (modes for every class and image, mode_scale, mode_stop)."""
    per_class = -(-images // len(WOOF))
    out = tempfile.mkdtemp(prefix="bench_sample_")
    try:
        stats = sample_folder(model, vae, diffusion, WOOF, [155, 159, 162, 167], per_class, os.path.join(out, "s"),
                              batch_size=batch, micro_batch=micro, precision=precision, device=device,
                              compile=compile, progress=False, grid=0, identity={"weights": "random"},
                              **(guide or {}))
    finally:
        shutil.rmtree(out)
    return stats["seconds"], stats["written"] / stats["seconds"], stats["written"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--model", default=None, help="DiT registry name (default: DiT-XL/2 cuda, DiT-S/4 cpu)")
    p.add_argument("--images", type=int, default=None, help="images, batched fp32 (default: 16 cpu, 256 cuda)")
    p.add_argument("--bf16_images", type=int, default=None, help="images, batched bf16 (default: 8 cpu, 256 cuda)")
    p.add_argument("--authors_images", type=int, default=None, help="images for batch 1 (default: 4 cpu, 16 cuda)")
    p.add_argument("--batch", type=int, default=None, help="batched modes: images per batch (default 16 cpu, 64 cuda)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 50 cuda, 20 cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 avoids spin-waits on a busy machine)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile in bf16")
    p.add_argument("--guidance_rounds", type=int, default=0, help="instead: time mode guidance against none, "
                   "alternating the two arms this many rounds (same images, seeds and batch)")
    p.add_argument("--no_append", action="store_true", help="print only, do not append to RESULTS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run_info()  # imports the libraries it reports once, outside the timings
    if cuda:
        name, latent, (vae, vae_name) = args.model or "DiT-XL/2", 32, sd_vae(dev)
    else:
        name, latent, vae, vae_name = args.model or "DiT-S/4", 16, PixelVAE(), "pixel"
    model = random_dit(name, latent, vae.latent_channels, dev)
    steps = args.steps or (50 if cuda else 20)
    diffusion = Diffusion.linear(1000).respaced(steps)
    n = args.images or (256 if cuda else 16)
    n16 = args.bf16_images or (256 if cuda else 8)
    n1 = args.authors_images or (16 if cuda else 4)
    b = args.batch or (64 if cuda else 16)
    modes = [("authors' way: batch 1", n1, 1, 1, "fp32", False), (f"batched {b}", n, b, b, "fp32", False),
             (f"batched {min(b, n16)}", n16, min(b, n16), min(b, n16), "bf16", False)]
    if args.compile:
        modes.append((f"batched {b} + compile", n, b, b, "bf16", True))
    run(model, vae, Diffusion.linear(1000).respaced(2), 4, 4, 4, "fp32", dev)  # warm-up (allocator, kernels)
    if args.guidance_rounds:
        return guidance_overhead(model, vae, diffusion, n, b, dev, args, f"{name}, latent {vae.latent_channels}x"
                                 f"{latent}x{latent}, VAE {vae_name}")
    rows, base = [], None
    for label, images, batch, micro, precision, comp in modes:
        if comp:
            run(model, vae, diffusion, b, b, b, precision, dev, compile=True)  # compile outside the timing
        sec, ips, done = run(model, vae, diffusion, images, batch, micro, precision, dev, compile=comp)
        base = base or ips
        row = {"mode": label, "precision": precision, "images": done, "seconds": f"{sec:.1f}",
               "img/s": f"{ips:.2f}", "speed-up": f"{ips / base:.1f}x",
               "1000 images": f"{1000 / ips / 60:.1f} min"}
        if cuda:
            floor = 1000 * steps * 2 * GFLOP_PER_FORWARD * 1e9 / (PEAK_TFLOPS * 1e12)  # seconds per 1000 images
            row["time / floor"] = f"{1000 / ips / floor:.1f}x"
        rows.append(row)
    columns = ["mode", "precision", "images", "seconds", "img/s", "speed-up", "1000 images"] + (
        ["time / floor"] if cuda else [])
    notes = (f"sample_folder end to end ({name}, latent {vae.latent_channels}x{latent}x{latent}, VAE {vae_name}, "
             f"random weights, {steps} ancestral steps, guidance 4.0 in one forward, PNGs written), "
             f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}. Authors' way = batch 1, fp32 (SPEC §7: 0.8 s/image on an RTX "
             f"4090 for DiT-XL/2)." + (" Floor: 1000 x steps x 2 x 118.6 GFLOP at 800 TFLOP/s (SPEC §8)." if cuda
                                       else ""))
    report("sample", rows, columns, notes=notes, append=not args.no_append)
    return rows


def guidance_overhead(model, vae, diffusion, images, batch, device, args, what):
    """img/s of mode guidance (lambda 0.1, stop at half the steps as MGD³'s 25 of 50) and of none, alternating."""
    per_class = -(-images // len(WOOF))
    shape = (len(WOOF), per_class, model.in_channels, model.arch["input_size"], model.arch["input_size"])
    modes = 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    guide = {"modes": modes, "mode_scale": 0.1, "mode_stop": diffusion.num_steps // 2,
             "modes_info": {"sha256": "random"}}
    ips, load_before = {"none": [], "mode": []}, os.getloadavg()[0]
    for r in range(args.guidance_rounds):
        for arm in (("none", "mode") if r % 2 == 0 else ("mode", "none")):  # alternate which arm goes first
            ips[arm].append(run(model, vae, diffusion, images, batch, batch, "fp32", device,
                                guide=guide if arm == "mode" else None)[1])
    # the same question without the noise of a shared machine: the guided step's arithmetic against one model call
    g = torch.Generator().manual_seed(1)
    x, noise, m = (torch.randn((batch, *shape[2:]), generator=g).to(device) for _ in range(3))
    t, y = diffusion.model_timesteps(diffusion.num_steps - 1, batch, device), torch.full((batch,), 155, device=device)
    with torch.no_grad():
        out = guided_eps(model, x, t, y, 4.0, 3, batch)  # (B, 2C, H, W)
        calls = {"model call (CFG, both halves)": lambda: guided_eps(model, x, t, y, 4.0, 3, batch),
                 "ancestral step, none": lambda: diffusion.p_step(out, x, diffusion.num_steps - 1, noise),
                 "ancestral step, mode": lambda: diffusion.p_step(out, x, diffusion.num_steps - 1, noise, mode=m,
                                                                  mode_scale=0.1)}
        ms = {k: [] for k in calls}
        for _ in range(5):  # alternate the three, median of medians
            for k, fn in calls.items():
                ms[k].append(1000 * timeit(fn, device, warmup=1, iters=5 if k.startswith("model") else 51))
    ms = {k: sorted(v)[2] for k, v in ms.items()}
    added = ms["ancestral step, mode"] - ms["ancestral step, none"]
    med = {arm: sorted(v)[len(v) // 2] for arm, v in ips.items()}
    ratios = sorted(m / n for m, n in zip(ips["mode"], ips["none"]))
    rows = [{"arm": f"{arm}: img/s", "rounds": len(ips[arm]), "per round": ", ".join(f"{v:.2f}" for v in ips[arm]),
             "median": f"{med[arm]:.2f}"} for arm in ("none", "mode")]
    mid = ratios[len(ratios) // 2]
    rows.append({"arm": "mode / none (per-round ratios, sorted)", "rounds": len(ratios),
                 "per round": ", ".join(f"{v:.3f}" for v in ratios),
                 "median": f"{mid:.3f} (overhead {100 * (1 / mid - 1):+.1f} %)"})
    rows += [{"arm": f"{k}, batch {batch}", "median": f"{v:.3f} ms"} for k, v in ms.items()]
    rows.append({"arm": "guidance added per step / model call", "median":
                 f"{added:.3f} ms / {ms['model call (CFG, both halves)']:.1f} ms = "
                 f"{100 * added / ms['model call (CFG, both halves)']:.3f} %"})
    notes = (f"Mode guidance overhead: sample_folder end to end ({what}, random weights, {diffusion.num_steps} "
             f"ancestral steps, CFG 4.0, {images} images in batches of {batch}, PNGs written), guidance lambda 0.1 "
             f"while step > {diffusion.num_steps // 2}, arms alternated each round, {torch.get_num_threads()} "
             f"thread(s), load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after (2-core machine "
             f"shared with other jobs). Per-round ratio mode/none (1.000 = no cost). Below: one step's parts timed "
             f"alone (median ms, alternated).")
    report("sample", rows, ["arm", "rounds", "per round", "median"], notes=notes, append=not args.no_append)
    return rows


if __name__ == "__main__":
    main()
