"""How hard do the minimax losses pull, next to the diffusion loss? Gradient norms on the Difffit parameters.

    python scripts/demo_gradients.py demo_out [--batches 40] [--lambda_scale 1]

On the demo's base DiT (demo_out/runs/base) with Difffit applied, batches of 8 train digits as in fine-tuning:
the memories are first filled by 80 batches (no update of the weights), then for each of `batches` batches the
L2 norms of the gradients of the diffusion loss, L_r and L_d (paper defaults 0.002 / 0.008 times lambda_scale) on
the trainable parameters are measured separately. Prints the medians and L_r / L_d as a fraction of the diffusion
gradient (README, demo section: 14% and 35% at the paper's lambdas on the demo's base model).
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.transforms import to_tensor_m11  # noqa: E402
from models.difffit import apply_difffit  # noqa: E402
from models.diffusion import Diffusion  # noqa: E402
from models.loading import load_dit  # noqa: E402
from models.minimax import MinimaxCriterion  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402


def load_split(folder):
    """(N, 3, 8, 8) in [-1, 1] and labels 0..9 from folder/digit<k>/<i>.png."""
    xs, ys = [], []
    for k in range(10):
        d = os.path.join(folder, f"digit{k}")
        for f in sorted(os.listdir(d)):
            xs.append(to_tensor_m11(Image.open(os.path.join(d, f)).convert("RGB")))
            ys.append(k)
    return torch.stack(xs), torch.tensor(ys)


def gradient_norms(model, diffusion, crit, x, y, gen, warmup, batches, batch=8):
    """{"diffusion" | "L_r" | "L_d": per-batch gradient norms} on the parameters that require grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    norms = {"diffusion": [], "L_r": [], "L_d": []}
    for i in range(warmup + batches):
        idx = torch.randperm(x.shape[0], generator=gen)[:batch]
        z, lab = x[idx], y[idx]
        t = torch.randint(0, diffusion.num_steps, (batch,), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        with torch.set_grad_enabled(i >= warmup):
            out = diffusion.training_losses(model, z, t, lab, noise)
            if i >= warmup:
                loss_r, loss_d = crit.losses(out["pred_x0"], z, lab)
                for name, loss in (("diffusion", out["loss"].mean()), ("L_r", loss_r), ("L_d", loss_d)):
                    g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                    norms[name].append(float(torch.sqrt(sum((gi ** 2).sum() for gi in g if gi is not None))))
        crit.update(z, out["pred_x0"].detach(), lab)
    return norms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the demo's output folder (runs/base/checkpoint.pt, data/train)")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--lambda_scale", type=float, default=1.0)
    args = p.parse_args(argv)
    ckpt = os.path.join(args.out, "runs", "base", "checkpoint.pt")
    if not os.path.isfile(ckpt):
        raise UserError(f"no base checkpoint at {ckpt}; run bash scripts/demo.sh --out {args.out} first")
    torch.manual_seed(0)
    model = load_dit(ckpt, device="cpu")
    apply_difffit(model)
    x, y = load_split(os.path.join(args.out, "data", "train"))
    crit = MinimaxCriterion(10, x[0].numel(), 64, 0.002 * args.lambda_scale, 0.008 * args.lambda_scale)
    norms = gradient_norms(model, Diffusion.linear(1000), crit, x, y, torch.Generator().manual_seed(0), 80,
                           args.batches)
    med = {k: float(np.median(v)) for k, v in norms.items()}
    print(f"median gradient norm over {args.batches} batches of 8 (lambdas x{args.lambda_scale:g}): "
          + ", ".join(f"{k} {v:.3g}" for k, v in med.items())
          + f"; L_r / diffusion {med['L_r'] / med['diffusion']:.3f}, "
          f"L_d / diffusion {med['L_d'] / med['diffusion']:.3f}")


if __name__ == "__main__":
    run_cli(main)
