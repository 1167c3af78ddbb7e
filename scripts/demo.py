"""The whole method on CPU in minutes, on real data: scikit-learn's 1,797 handwritten digits (8x8, 10 classes).

  1. split the digits per class into train (56%), val (14%) and test (30%): 8x8 RGB PNG ImageFolders;
  2. train a tiny class-conditional DiT from scratch on train (train_minimax.py --mode base);
  3. fine-tune it with Difffit once per fine-tuning arm: losses off (Difffit only) and the minimax losses;
  4. sample IPC images per class from every generated arm, one folder per sampling seed (sample.py, 25 steps);
  5. per arm, IPC and seed s: evaluate.py trains a ConvNet (seed s) on the set drawn with seed s and reports its
     MMD, representativeness and diversity in the features of a network trained on the train split;
  6. write RESULTS.md: mean ± std over the seeds, and whether Minimax - Base and Minimax - Difffit differ by more
     than their spread; demo_grid.png (samples) and demo_figure.png (accuracy and the set measures per arm).

    python scripts/demo.py [--out demo_out] [--holdout test|val] [--ipcs 10,50] [--quick]

--holdout test (default) runs ARMS and tests on the test split: the final table. --holdout val runs VAL_ARMS,
the candidates for every choice the demo makes, and tests on the val split (never the test split); the choices
and their numbers are in configs/demo.yaml. The tools run in this process (their main(argv): the same code as
`python <tool> ...`, without ~3 s of imports per call); the commands are printed and logged. Rerunning skips
finished steps and reproduces the same numbers.
"""
import argparse
import contextlib
import importlib
import io
import json
import os
import shlex
import sys
import time
from collections import namedtuple

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.config import Key, parse_config  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_save_image, atomic_write_text, run_info  # noqa: E402

SIZE = 8  # pixels: the digits at their native resolution (the DiT works on 3x8x8 "latents": 16 tokens)
TEST_FRAC, VAL_FRAC = 0.3, 0.2  # test: 30% of each class (as before); val: 20% of the rest
# budgets: (full demo, --quick smoke run); the choices the val split decides are in configs/demo.yaml
BASE_EPOCHS = (150, 1)       # base DiT: batch 128 over 1,006 images -> 7 steps per epoch
QUICK_SAMPLE_STEPS = 5      # --quick; the demo itself samples with configs/demo.yaml's num_steps (25, chosen on val)
SEEDS = (5, 2)               # seed s: sampling seed of the set AND the ConvNet's seed; one run per set
EVAL_STEPS = (320, 4)        # SGD steps of every ConvNet run (epochs = steps / batches per epoch), Full included
EVAL_TESTS = 10              # accuracy tested 10 times per run; "best" is the best of those
FEATURE_EPOCHS = (20, 1)     # the feature network (MMD / representativeness / diversity) on the train split
BATCH = 64                   # ConvNet batch (configs/demo.yaml, evaluate.batch_size)

#### Arms: a name, a label, where the set comes from, and the tools' extra arguments #######################
# source "real": a random coreset of the train split (seed s); "full": the whole train split; "model": samples of
# the DiT `run` (runs/<run>: "base" or a fine-tuning run made with `train`) drawn with `sample`. Arms with the
# same run share its checkpoint, so an arm that only samples differently is one line.
Arm = namedtuple("Arm", "name label source run train sample", defaults=(None, (), ()))
OFF = ("--rep", "off", "--div", "off")
# MGD³ mode guidance (sample.py --guidance mode): lambda 0.1 while the step index > 12 of 24 -> 0 (MGD³: 25 of 50),
# modes = k-means (k = IPC) of each class's train images ('pixel' latents); IPC k is sampled on its own
MODE = ("--guidance", "mode", "--mode_stop", "12", "--modes_vae", "pixel")
ARMS = [
    Arm("random", "Random real", "real"),
    Arm("base", "Base model", "model", "base"),
    Arm("difffit", "Difffit only (rep off, div off)", "model", "difffit", OFF),
    Arm("minimax", "Minimax", "model", "minimax"),
    Arm("minimax-mode", "Minimax + mode guidance (MGD³)", "model", "minimax", (), MODE),
    Arm("full", "Full train split", "full"),
]
GENERATED_COMPARISONS = (("minimax", "base"), ("minimax", "difffit"), ("minimax-mode", "minimax"))  # (a, b): is a - b larger than the spread?
# the candidates of every choice (configs/demo.yaml says which won and why), judged on the val split at IPC 10
S50 = ("--num_steps", "50")  # the candidates judged before 25 steps were tried (SPEC §4's 50)
VAL_ARMS = [
    Arm("base-cfg1", "Base model, guidance 1 (none)", "model", "base", (), S50 + ("--cfg_scale", "1")),
    Arm("base-cfg2", "Base model, guidance 2", "model", "base", (), S50 + ("--cfg_scale", "2")),
    Arm("base-cfg4", "Base model, guidance 4 (paper)", "model", "base", (), S50 + ("--cfg_scale", "4")),
    Arm("base-25steps", "Base model, guidance 4, 25 sampling steps", "model", "base", (), ("--num_steps", "25")),
    Arm("difffit-2ep", "Difffit only, 2 epochs", "model", "v-difffit-2ep", OFF + ("--epochs", "2"), S50),
    Arm("minimax-2ep", "Minimax, 2 epochs", "model", "v-minimax-2ep", ("--epochs", "2"), S50),
    Arm("difffit-8ep", "Difffit only, 8 epochs (paper)", "model", "v-difffit-8ep", OFF + ("--epochs", "8"), S50),
    Arm("minimax-8ep", "Minimax, 8 epochs (paper)", "model", "v-minimax-8ep", ("--epochs", "8"), S50),
    Arm("minimax-8ep-x10", "Minimax, 8 epochs, lambdas x10", "model", "v-minimax-8ep-x10",
        ("--epochs", "8", "--lambda_r", "0.02", "--lambda_d", "0.08"), S50),
]


#### Data ######################################################################################################

def prepare_digits(root, seed=0):
    """root/{train,val,test}/digit<k>/<i>.png: a stratified split of the real digits (test as in earlier demos)."""
    if os.path.isfile(os.path.join(root, "DONE")):
        return
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == k))
        n_test = int(round(len(idx) * TEST_FRAC))
        n_val = int(round((len(idx) - n_test) * VAL_FRAC))
        parts = (("test", idx[:n_test]), ("val", idx[n_test:n_test + n_val]), ("train", idx[n_test + n_val:]))
        for split, part in parts:
            for i, j in enumerate(part):
                img = Image.fromarray((digits.images[j] * (255 / 16)).round().astype(np.uint8))  # 0..16 -> 0..255
                img = img.resize((SIZE, SIZE), Image.BICUBIC).convert("RGB")  # identity at 8 px
                atomic_save_image(img, os.path.join(root, split, f"digit{k}", f"{i}.png"))
    atomic_write_text(os.path.join(root, "DONE"), f"sklearn digits, test {TEST_FRAC} / val {VAL_FRAC} of the rest "
                                                  f"per class, seed {seed}\n")


def count_images(folder):
    return sum(len(os.listdir(os.path.join(folder, d))) for d in os.listdir(folder))


#### Steps #####################################################################################################

ENGINES = {"train_minimax.py": "engines.train", "sample.py": "engines.sample", "evaluate.py": "engines.evaluate"}


def run(tool, args, log):
    """Run one of the project's tools (its main(argv), in this process); its output goes to the log file."""
    line = "python " + shlex.join([tool, *args])
    print(f"  $ {line}", flush=True)
    main = importlib.import_module(ENGINES[tool]).main
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        f.write(f"\n$ {line}\n")
        f.flush()
        try:
            main(args)
        except UserError as e:
            raise UserError(f"step failed ({e}): {line}; see {log}") from None


def _evaluate_job(job):
    """One evaluate.py run in a worker process: (command line, its output, error or None). The output comes back
    whole, so parallel runs do not interleave in the log."""
    argv, threads = job
    import torch
    torch.set_num_threads(threads)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            importlib.import_module(ENGINES["evaluate.py"]).main(argv)
            err = None
        except UserError as e:
            err = str(e)
    return "python " + shlex.join(["evaluate.py", *argv]), buf.getvalue(), err


def run_evaluations(jobs, n_proc, threads, log):
    """evaluate.py runs: the first in this process (it trains the shared feature network), the rest over n_proc
    worker processes. Each run is seeded and single-threaded, so its numbers do not depend on n_proc; results
    are appended to one JSONL by whole-line writes (utils.io.append_jsonl)."""
    run("evaluate.py", jobs[0], log)
    if not jobs[1:]:
        return
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(n_proc) as pool, open(log, "a") as f:
        for line, output, err in pool.imap(_evaluate_job, [(argv, threads) for argv in jobs[1:]]):
            print(f"  $ {line}", flush=True)
            f.write(f"\n$ {line}\n{output}")
            f.flush()
            if err is not None:
                raise UserError(f"step failed ({err}): {line}; see {log}")


def fine_tune_runs(arms):
    """{run name: train args} of the fine-tuning runs the arms need (one run may serve several arms)."""
    runs = {}
    for a in arms:
        if a.source == "model" and a.run != "base":
            if runs.setdefault(a.run, tuple(a.train)) != tuple(a.train):
                raise UserError(f"arms share run '{a.run}' with different train arguments; give one of them its "
                                f"own run name")
    return runs


def guided(arm):
    """Mode guidance: the modes are the k-means of each IPC, so IPC k is not the first k images of a larger set."""
    return "--guidance" in arm.sample


def sample_dir(samples, arm, seed, ipc):
    """samples/<arm>/s<seed> (IPC k = its first k images), or s<seed>-ipc<k> for a guided arm."""
    return os.path.join(samples, arm.name, f"s{seed}-ipc{ipc}" if guided(arm) else f"s{seed}")


def eval_epochs(n_images, steps):
    """Epochs that give `steps` SGD steps at the demo's batch (drop_last off: ceil(n / batch) per epoch)."""
    return max(1, round(steps / -(-n_images // BATCH)))


#### Results ###################################################################################################

METRICS = (("best", "best top-1 %", "{:.1f}"), ("last", "last top-1 %", "{:.1f}"), ("mmd_linear", "MMD ↓", "{:.2f}"),
           ("rep", "real→nearest (1−cos) ↓", "{:.3f}"), ("div", "within-class cos ↓", "{:.3f}"))


def collect(results, arms, ipcs, seeds):
    """{(arm, ipc): {metric: np.array over seeds}} from evaluate.py's run and measure records (the latest of each)."""
    latest = {}
    with open(results) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") in ("run", "mmd"):
                latest[(rec["kind"], rec.get("method"), rec.get("ipc"), rec.get("seed"))] = rec
    out = {}
    for a in arms:
        for ipc in ([None] if a.source == "full" else ipcs):
            vals = {}
            for key, _, _ in METRICS:
                kind = "run" if key in ("best", "last") else "mmd"
                got = [latest[(kind, a.name, ipc, s)][key] for s in seeds if (kind, a.name, ipc, s) in latest]
                if got:
                    vals[key] = np.array(got, dtype=float)
            out[(a.name, ipc)] = vals
    return out


def _ms(v, fmt):
    return f"{_f(fmt, v.mean())} ± {_f(fmt, v.std())}" if v is not None and len(v) else "—"


def _f(fmt, x):
    s = fmt.format(float(x))
    return s[1:] if s.startswith("-") and float(s) == 0 else s  # "-0.00" -> "0.00"


def results_table(stats, arms, ipcs, n_train):
    lines = ["| Set | IPC | images | " + " | ".join(h for _, h, _ in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for ipc in ipcs + [None]:
        for a in arms:
            if (a.source == "full") != (ipc is None):
                continue
            vals = stats[(a.name, ipc)]
            cells = [_ms(vals.get(k), fmt) for k, _, fmt in METRICS]
            imgs = n_train if ipc is None else 10 * ipc
            lines.append(f"| {a.label} | {ipc or 'all'} | {imgs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparisons(stats, ipcs, pairs):
    """Difference of means and its spread sqrt(sd_a^2 + sd_b^2) (the std of one draw of a minus one of b)."""
    lines = ["| IPC | difference | " + " | ".join(h for _, h, _ in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for ipc in ipcs:
        for a, b in pairs:
            if (a, ipc) not in stats or (b, ipc) not in stats:
                continue
            cells = []
            for key, _, fmt in METRICS:
                va, vb = stats[(a, ipc)].get(key), stats[(b, ipc)].get(key)
                if va is None or vb is None:
                    cells.append("—")
                    continue
                d, spread = va.mean() - vb.mean(), float(np.sqrt(va.var() + vb.var()))
                verdict = "beyond spread" if abs(d) > spread else "within spread"
                # seed s is the same sampling noise and ConvNet seed in both arms: the per-seed differences
                paired = f"; paired sd {_f(fmt, (va - vb).std())}" if len(va) == len(vb) else ""
                cells.append(f"{_f(fmt, d)} (spread {_f(fmt, spread)}, {verdict}{paired})")
            lines.append(f"| {ipc} | {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_grid(data, samples, arms, ipc, path, per_class=10):
    """Real train images | seed-0 samples (IPC `ipc`) of each generated arm, a row per class."""
    panels = [("real", os.path.join(data, "train"))] + [(a.name, sample_dir(samples, a, 0, ipc))
                                                         for a in arms if a.source == "model"]
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


def demo_figure(stats, arms, ipcs, path):
    """Best top-1 and the three set measures per arm: mean ± std over the seeds (the spread), a marker per IPC, the
    full train split as a dotted line. Plotted from `collect`'s arrays; gids <metric>/ipc<k> and <metric>/full."""
    from utils.plots import color, pyplot, save_figure
    plt = pyplot()
    shown = [a for a in arms if a.source != "full"]
    full = next((a for a in arms if a.source == "full"), None)
    panels = [m for m in METRICS if m[0] != "last"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6))
    for ax, (key, label, _) in zip(axes, panels):
        for j, ipc in enumerate(ipcs):
            pts = [(i + (j - (len(ipcs) - 1) / 2) * 0.2, stats[(a.name, ipc)][key]) for i, a in enumerate(shown)
                   if key in stats.get((a.name, ipc), {})]
            if pts:
                eb = ax.errorbar([x for x, _ in pts], [float(v.mean()) for _, v in pts],
                                 yerr=[float(v.std()) for _, v in pts], fmt="os"[j % 2], ms=4, capsize=3,
                                 color=color(j), ls="none", label=f"IPC {ipc}")
                eb.lines[0].set_gid(f"{key}/ipc{ipc}")
        vals = stats.get((full.name, None), {}).get(key) if full else None
        if vals is not None:
            ax.axhline(float(vals.mean()), ls=":", color="k", lw=1, gid=f"{key}/full", label=full.label)
        ax.set_xticks(range(len(shown)), [a.name for a in shown], rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Digits demo: mean ± std over the seeds (each seed draws the set and seeds the ConvNet)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return fig  # closed, its artists still readable


#### Main ######################################################################################################

MAX_IPC = 98  # train images of the smallest digit class (174: 52 test, 24 val, 98 train)
CONFIG = {
    "out": Key("demo_out", path="out_dir", required=True, help="output folder (rerun to continue)"),
    "holdout": Key("test", choices=("test", "val"),
                   help="test: ARMS, the final table; val: VAL_ARMS, the candidates for the demo's choices"),
    # the diversity measure compares pairs within a class: IPC >= 2; Random IPC k selects k train images per class
    "ipcs": Key(None, type="list", items="int", lo=2, hi=MAX_IPC, null=True,
                help="images per class, a comma list (null: 10,50 on test, 10 on val)"),
    "threads": Key(1, lo=1, help="torch CPU threads (1: fastest and steady for these tiny models on a shared "
                                 "machine; results depend on it)"),
    "jobs": Key(2, lo=1, help="evaluation runs in parallel, one process each (the numbers do not depend on it; "
                             "2 on a 2-core machine)"),
    "quick": Key(False, help="a smoke run of every step with tiny budgets (tests)"),
}


def main(argv=None):
    args = argparse.Namespace(**parse_config(CONFIG, argv, description=__doc__, prog="demo.py"))
    ipcs = sorted(set(args.ipcs or ([10, 50] if args.holdout == "test" else [10])))
    import torch
    torch.set_num_threads(args.threads)
    q = int(args.quick)
    arms = ARMS if args.holdout == "test" else VAL_ARMS
    seeds = list(range(SEEDS[q]))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "demo.log")
    data, samples, runs = (os.path.join(out, d) for d in ("data", "samples", "runs"))
    results = os.path.join(out, "eval", f"{args.holdout}.jsonl")
    cfg = ["--config", os.path.join(ROOT, "configs", "demo.yaml")]
    cache = ["--cache_dir", os.path.join(out, "cache")]
    t0, times = time.time(), {}

    print(f"[1/5] real digits -> {data}/train, val, test", flush=True)
    prepare_digits(data)
    train_dir, holdout_dir = os.path.join(data, "train"), os.path.join(data, args.holdout)
    n_train = count_images(train_dir)

    print("[2/5] base DiT from scratch (DiT-T/2, pixel space)", flush=True)
    t = time.time()
    run("train_minimax.py", [*cfg, *cache, "--mode", "base", "--data_dir", train_dir,
                             "--run_dir", os.path.join(runs, "base"), "--batch_size", "128", "--lr", "0.003",
                             "--ema_decay", "0.995", "--epochs", str(BASE_EPOCHS[q])], log)
    ckpts = {"base": os.path.join(runs, "base", "checkpoint.pt")}
    times["base DiT"] = time.time() - t

    print("[3/5] Difffit fine-tuning per fine-tuning arm (configs/demo.yaml: batch 8, lr 1e-3, N_M 64)", flush=True)
    t = time.time()
    for name, extra in fine_tune_runs(arms).items():
        steps = ["--max_steps", "10", "--epochs", "1"] if q else []
        run("train_minimax.py", [*cfg, *cache, "--base", ckpts["base"], "--data_dir", train_dir,
                                 "--run_dir", os.path.join(runs, name), *extra, *steps], log)
        ckpts[name] = os.path.join(runs, name, "checkpoint.pt")
    times["fine-tuning"] = time.time() - t

    print(f"[4/5] sampling IPC {max(ipcs)} per generated arm, seeds {seeds} (IPC k = a folder's first k images; "
          f"guided arms: every IPC on its own)", flush=True)
    t = time.time()
    for a in arms:
        if a.source == "model":
            for s in seeds:
                for ipc in (ipcs if guided(a) else [max(ipcs)]):
                    steps = ["--num_steps", str(QUICK_SAMPLE_STEPS)] if q else []
                    quick_stop = ["--mode_stop", "2"] if q and guided(a) else []  # < QUICK_SAMPLE_STEPS - 1
                    run("sample.py", [*cfg, *cache, "--train_dir", train_dir, "--ckpt", ckpts[a.run],
                                      "--ipc", str(ipc), *steps, "--seed", str(s), *a.sample, *quick_stop,
                                      "--out", sample_dir(samples, a, s, ipc)], log)
    times["sampling"] = time.time() - t

    print(f"[5/5] per arm, IPC and seed: ConvNet on the set ({EVAL_STEPS[q]} SGD steps), tested on {args.holdout}; "
          f"MMD, representativeness, diversity against train", flush=True)
    t = time.time()
    jobs = []
    ev = ["evaluate.py", *cfg, "--val", holdout_dir, "--results", results, "--repeat", "1"]
    measure = ["--mmd_real", train_dir, "--feature_arch", "convnet6", "--feature_epochs", str(FEATURE_EPOCHS[q])]
    for ipc in ipcs + [None]:
        for a in arms:
            if (a.source == "full") != (ipc is None):
                continue
            n = n_train if ipc is None else 10 * ipc
            epochs = eval_epochs(n, EVAL_STEPS[q])
            common = ["--method", a.name, "--epochs", str(epochs), "--eval_every", str(max(1, epochs // EVAL_TESTS))]
            for s in seeds:
                if a.source == "model":
                    src = ["--train", sample_dir(samples, a, s, ipc), "--ipc", str(ipc)]
                elif a.source == "real":
                    src = ["--train", train_dir, "--select", "random", "--ipc", str(ipc)]
                else:
                    src = ["--train", train_dir, "--select", "full"]
                # the full split is one set whatever the seed: measured once (parallel runs would race to it)
                m = measure if a.source != "full" or s == seeds[0] else []
                jobs.append(ev[1:] + src + m + common + ["--seed", str(s)])
    run_evaluations(jobs, args.jobs, args.threads, log)
    times["evaluation"] = time.time() - t

    #### tables
    gen = [a for a in arms if a.source == "model"]
    grid = os.path.join(out, f"demo_grid{'' if args.holdout == 'test' else '_val'}.png")
    comparison_grid(data, samples, arms, max(ipcs), grid)
    stats = collect(results, arms, ipcs, seeds)
    figure = os.path.join(out, f"demo_figure{'' if args.holdout == 'test' else '_val'}.png")
    demo_figure(stats, arms, ipcs, figure)
    pairs = GENERATED_COMPARISONS if args.holdout == "test" else ()
    total = time.time() - t0
    load = os.getloadavg()
    head = (f"Digits demo on the {args.holdout} split ({count_images(holdout_dir)} real digits; train split "
            f"{n_train}). Mean ± std over {len(seeds)} seeds: seed s draws the set (sampling seed, or the random "
            f"coreset) and seeds the ConvNet (width 32, {EVAL_STEPS[q]} SGD steps, tested {EVAL_TESTS} times: best "
            f"and last). Measures in the features of a ConvNet trained on the train split, against the train split: "
            f"MMD (linear, Table 2), representativeness = mean over real images of the cosine distance to the "
            f"nearest image of the set, diversity = mean within-class cosine (data/eval_measures.py).\n")
    body = [head, results_table(stats, arms, ipcs, n_train)]
    if pairs:
        body += ["\nMinimax against its controls: difference of means; spread = sqrt(sd_a² + sd_b²), the sd of one "
                 "draw of each; paired sd = sd over seeds of (a_s − b_s), the arms sharing seed s's sampling noise "
                 "and ConvNet seed:\n",
                 comparisons(stats, ipcs, pairs)]
    panels = " | ".join(a.name for a in gen)
    body.append(f"\nSample grid (real | {panels}, sampling seed 0): {os.path.basename(grid)}; accuracy and the set "
                f"measures per arm (mean ± std over the seeds): {os.path.basename(figure)}\n")
    body.append("\nWall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {total:.0f} s "
                f"with {args.threads} torch thread(s) per process, {args.jobs} evaluation process(es), on "
                f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / "
                f"{load[1]:.2f} / {load[2]:.2f} at the end; torch {run_info().get('torch')}.\n")
    text = "".join(body)
    name = "RESULTS.md" if args.holdout == "test" else "VALIDATION.md"
    atomic_write_text(os.path.join(out, name), text)
    print("\n" + text)
    print(f"done in {total:.0f} s; {os.path.join(out, name)}; logs in {log}")


if __name__ == "__main__":
    run_cli(main)
