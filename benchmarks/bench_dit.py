"""DiT forward throughput, fp32 eager vs bf16 autocast (both on SDPA attention): images/s and achieved TFLOP/s.

CPU default: DiT-S/2 on 32x32 latents, batch 16. CUDA default: DiT-XL/2 on 32x32 latents (256 px), batch 16, against
the compute floor of SPEC §8 (800 TFLOP/s dense bf16). FLOPs are counted as 2 x multiply-accumulates; DiT's
"118.6 Gflops" for XL/2 is a multiply-accumulate count (fvcore), i.e. 237 GFLOP per forward per image.
Run: python benchmarks/run.py dit [--model DiT-B/4] [--batch 16] [--iters N] [--no_append]"""
import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import report, timeit  # noqa: E402
from models.dit import DiT_models  # noqa: E402
from utils.errors import UserError  # noqa: E402

PEAK_TFLOPS = 800.0  # H100/H200 dense bf16, SPEC §8


def dit_macs(arch):
    """Multiply-accumulates of one DiT forward for one image (matmuls and attention; norms/activations ignored)."""
    d, p, c = arch["hidden_size"], arch["patch_size"], arch["in_channels"]
    tokens = (arch["input_size"] // p) ** 2
    out = 2 * c if arch["learn_sigma"] else c
    mlp = int(d * arch["mlp_ratio"])
    per_block = tokens * (4 * d * d + 2 * d * mlp) + 2 * tokens * tokens * d + 6 * d * d  # qkv+proj+mlp, attn, adaLN
    embed = tokens * d * c * p * p + 256 * d + d * d
    final = tokens * d * p * p * out + 2 * d * d
    return arch["depth"] * per_block + embed + final


def _modes(device):
    """name -> (autocast context factory, TF32 on?)."""
    modes = {"fp32 eager": (contextlib.nullcontext, False)}
    if device == "cuda":
        modes["tf32 eager"] = (contextlib.nullcontext, True)
    modes["bf16 autocast"] = (lambda: torch.autocast(device, dtype=torch.bfloat16), False)
    return modes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--model", default=None, help="registry name (default: DiT-XL/2 on cuda, DiT-S/2 on cpu)")
    p.add_argument("--input_size", type=int, default=32, help="latent side (32 = 256 px images)")
    p.add_argument("--batch", type=int, default=16, help="images per forward")
    p.add_argument("--iters", type=int, default=None, help="timed forwards per mode (default: 10 cuda, 2 cpu)")
    p.add_argument("--no_append", action="store_true", help="print only, do not append to RESULTS.md")
    args = p.parse_args(argv)
    device = args.device
    name = args.model or ("DiT-XL/2" if device == "cuda" else "DiT-S/2")
    iters = args.iters or (10 if device == "cuda" else 2)
    if name not in DiT_models:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(DiT_models)}")
    torch.manual_seed(0)
    model = DiT_models[name](input_size=args.input_size).to(device).eval()
    n, s = args.batch, args.input_size
    x = torch.randn(n, 4, s, s, device=device)
    t = torch.randint(0, 1000, (n,), device=device)
    y = torch.randint(0, 1000, (n,), device=device)
    macs = dit_macs(model.arch)
    rows = []
    for mode, (autocast, tf32) in _modes(device).items():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

        def fwd(k=n):
            with torch.inference_mode(), autocast():
                model(x[:k], t[:k], y[:k])
        if device == "cpu":
            fwd(2)  # kernel warm-up on 2 images: a full CPU batch costs seconds
        sec = timeit(fwd, device, warmup=0 if device == "cpu" else 3, iters=iters)
        tflops = 2 * macs * n / sec / 1e12
        row = {"model": name, "latent": s, "batch": n, "mode": mode, "ms/batch": f"{sec * 1e3:.0f}",
               "img/s": f"{n / sec:.2f}", "GMAC/img": f"{macs / 1e9:.1f}", "TFLOP/s": f"{tflops:.3f}"}
        if device == "cuda":
            row[f"% of {PEAK_TFLOPS:.0f}"] = f"{100 * tflops / PEAK_TFLOPS:.1f}"
        rows.append(row)
        print(row, flush=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    notes = (f"DiT forward (inference_mode, SDPA), {iters} timed batches per mode after warm-up; TFLOP/s = "
             f"2 x {macs / 1e9:.1f} GMAC/img (DiT's '118.6 Gflops' for XL/2 is this MAC count).")
    report("dit", rows, list(rows[0].keys()), notes=notes, append=not args.no_append)


if __name__ == "__main__":
    main()
