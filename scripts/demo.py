"""The whole method on CPU in minutes, on real data: scikit-learn's 1,797 handwritten digits (8x8, 10 classes).

  1. split the digits 70/30 per class into an ImageFolder of 8x8 RGB PNGs: train and held-out test;
  2. train a tiny class-conditional DiT from scratch on the train split (train_minimax.py --mode base);
  3. minimax fine-tune it with Difffit (train_minimax.py, the paper's losses and defaults but the epochs);
  4. sample IPC images per class from the base model and from the fine-tuned one (sample.py, 50 steps, CFG 4);
  5. train a small ConvNet on each set and on Random real images and the Full train split, 3 repeats each
     (evaluate.py), test on the held-out split, and print Random / Base model / Minimax / Full.

    python scripts/demo.py [--out demo_out] [--ipc 10] [--quick]

Every step is one of the real command-line tools (see the commands it prints); rerunning skips finished steps.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.config import Key, parse_config  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_save_image, atomic_write_text  # noqa: E402

SIZE = 8  # pixels: the digits at their native resolution (the DiT works on 3x8x8 "latents": 16 tokens)
# step budgets: (full demo, --quick smoke run)
BASE_EPOCHS = (200, 1)       # base DiT: batch 128 over ~1,250 images -> 9 steps per epoch
MINIMAX_STEPS = (0, 10)      # fine-tuning steps cap (0 = the epochs decide)
MINIMAX_EPOCHS = (2, 1)      # fine-tuning at the paper's batch 8 -> ~156 steps per epoch
SAMPLE_STEPS = (50, 5)       # sampling steps (SPEC §4: 50)
EVAL_EPOCHS = (200, 2)       # ConvNet epochs on IPC-sized sets (100 images: 2 steps per epoch)
FULL_EPOCHS = (20, 1)        # ConvNet epochs on the full train split (~20 steps per epoch)
MAX_IPC = 122                # train images of the smallest digit class after the 70/30 split
METHODS = [("random", "Random real"), ("base", "Base model"), ("minimax", "Minimax"), ("full", "Full train set")]


#### Data ######################################################################################################

def prepare_digits(root, test_frac=0.3, seed=0):
    """root/train/digit<k>/<i>.png and root/test/..., a stratified split of the real digits."""
    if os.path.isfile(os.path.join(root, "DONE")):
        return
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == k))
        n_test = int(round(len(idx) * test_frac))
        for split, part in (("test", idx[:n_test]), ("train", idx[n_test:])):
            for i, j in enumerate(part):
                img = Image.fromarray((digits.images[j] * (255 / 16)).round().astype(np.uint8))  # 0..16 -> 0..255
                img = img.resize((SIZE, SIZE), Image.BICUBIC).convert("RGB")  # identity at 8 px
                atomic_save_image(img, os.path.join(root, split, f"digit{k}", f"{i}.png"))
    atomic_write_text(os.path.join(root, "DONE"), "sklearn digits, 70/30 split per class, seed 0\n")


#### Steps #####################################################################################################

def run(cmd, log):
    """Run one of the project's scripts; its output goes to the log file, a failure stops the demo."""
    line = "python " + shlex.join(cmd)
    print(f"  $ {line}", flush=True)
    with open(log, "a") as f:
        f.write(f"\n$ {line}\n")
        f.flush()
        rc = subprocess.run([sys.executable] + cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise UserError(f"step failed (exit {rc}): {line}; see {log}")


def summary(results):
    """{method: (best mean, best std, last mean, last std, n)} from evaluate.py's run records."""
    runs = {}
    with open(results) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "run":
                runs.setdefault(rec["method"], {})[rec["seed"]] = (rec["best"], rec["last"])
    out = {}
    for m, by_seed in runs.items():
        b, l = np.array([v[0] for v in by_seed.values()]), np.array([v[1] for v in by_seed.values()])
        out[m] = (b.mean(), b.std(), l.mean(), l.std(), len(b))
    return out


def comparison_grid(data, samples, path, per_class=10):
    """Real train images | base-model samples | minimax samples, a row per class."""
    panels = [("real", os.path.join(data, "train")), ("base model", os.path.join(samples, "base")),
              ("minimax", os.path.join(samples, "minimax"))]
    tile, gap, head = SIZE * 4, 12, 14
    w = len(panels) * per_class * tile + (len(panels) - 1) * gap
    img = Image.new("RGB", (w, head + 10 * tile), "white")
    draw = ImageDraw.Draw(img)
    for p, (name, folder) in enumerate(panels):
        x0 = p * (per_class * tile + gap)
        draw.text((x0 + 2, 1), name, fill="black")
        for k in range(10):
            for i in range(per_class):
                f = os.path.join(folder, f"digit{k}", f"{i}.png")
                if os.path.isfile(f):
                    t = Image.open(f).convert("RGB").resize((tile, tile), Image.NEAREST)
                    img.paste(t, (x0 + i * tile, head + k * tile))
    atomic_save_image(img, path)


CONFIG = {
    "out": Key("demo_out", path="out_dir", required=True, help="output folder (rerun to continue)"),
    # the smallest digit class keeps 122 of its 174 images for training; Random IPC k selects k of them
    "ipc": Key(10, lo=1, hi=MAX_IPC, help="images per class to sample and to select at random"),
    "quick": Key(False, help="a smoke run of every step with tiny budgets (tests)"),
}


def main(argv=None):
    args = argparse.Namespace(**parse_config(CONFIG, argv, description=__doc__, prog="demo.py"))
    q = int(args.quick)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "demo.log")
    data, samples, runs = os.path.join(out, "data"), os.path.join(out, "samples"), os.path.join(out, "runs")
    results = os.path.join(out, "eval", "results.jsonl")
    cfg = ["--config", os.path.join(ROOT, "configs", "demo.yaml")]
    cache = ["--cache_dir", os.path.join(out, "cache")]
    t0 = time.time()

    print(f"[1/5] real digits -> {data}/train, {data}/test", flush=True)
    prepare_digits(data)
    train_dir, test_dir = os.path.join(data, "train"), os.path.join(data, "test")

    print("[2/5] base DiT from scratch (DiT-T/2, pixel space)", flush=True)
    run(["train_minimax.py", *cfg, *cache, "--mode", "base", "--data_dir", train_dir,
         "--run_dir", os.path.join(runs, "base"),
         "--batch_size", "128", "--lr", "0.003", "--ema_decay", "0.995", "--epochs", str(BASE_EPOCHS[q])], log)
    base_ckpt = os.path.join(runs, "base", "checkpoint.pt")

    print("[3/5] minimax fine-tuning with Difffit (paper defaults: batch 8, lr 1e-3, N_M 64)", flush=True)
    run(["train_minimax.py", *cfg, *cache, "--base", base_ckpt, "--data_dir", train_dir,
         "--run_dir", os.path.join(runs, "minimax"), "--epochs", str(MINIMAX_EPOCHS[q]), "--ema_decay", "0.99",
         "--max_steps", str(MINIMAX_STEPS[q])], log)

    print(f"[4/5] sampling IPC {args.ipc} from the base model and the minimax model", flush=True)
    for name, ckpt in (("base", base_ckpt), ("minimax", os.path.join(runs, "minimax", "checkpoint.pt"))):
        run(["sample.py", *cfg, "--train_dir", train_dir, "--ckpt", ckpt, "--ipc", str(args.ipc),
             "--num_steps", str(SAMPLE_STEPS[q]), "--out", os.path.join(samples, name)], log)

    print("[5/5] ConvNet on each set, 3 repeats, tested on the held-out real digits", flush=True)
    ev = ["evaluate.py", *cfg, "--val", test_dir, "--results", results]
    for name in ("random", "base", "minimax"):
        train = train_dir if name == "random" else os.path.join(samples, name)
        sel = ["--select", "random"] if name == "random" else []
        run(ev + ["--train", train, *sel, "--ipc", str(args.ipc), "--method", name, "--epochs", str(EVAL_EPOCHS[q])],
            log)
    run(ev + ["--train", train_dir, "--select", "full", "--method", "full", "--epochs", str(FULL_EPOCHS[q])], log)

    grid = os.path.join(out, "demo_grid.png")
    comparison_grid(data, samples, grid)
    stats = summary(results)
    lines = [f"Digits demo: ConvNet top-1 (%) on {sum(len(os.listdir(os.path.join(test_dir, d))) for d in os.listdir(test_dir))} "
             f"held-out real digits, mean ± std over 3 runs; IPC {args.ipc} except Full", "",
             "| Training set | images | best | last |", "|---|---|---|---|"]
    n_train = sum(len(os.listdir(os.path.join(train_dir, d))) for d in os.listdir(train_dir))
    for m, label in METHODS:
        if m in stats:
            b, bs, l, ls, n = stats[m]
            imgs = n_train if m == "full" else 10 * args.ipc
            lines.append(f"| {label} | {imgs} | {b:.1f} ± {bs:.1f} | {l:.1f} ± {ls:.1f} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out, "RESULTS.md"), table + f"\nTotal time {time.time() - t0:.0f} s.\n")
    print("\n" + table)
    print(f"sample grid (real | base model | minimax): {grid}")
    print(f"done in {time.time() - t0:.0f} s; logs in {log}")


if __name__ == "__main__":
    run_cli(main)
