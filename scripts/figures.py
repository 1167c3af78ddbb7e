"""Paper figures from stored records, nothing recomputed: evaluate.py's `kind: run` records and train_minimax.py's
log.jsonl, with the published values of scripts/published.yaml beside ours.

    python scripts/figures.py RESULTS [more ...] [--out DIR] [--formats png,pdf]

RESULTS: folders (searched for *.jsonl; sample folders are skipped) or files. Writes into --out (default
RESULTS/figures for one folder):
  accuracy_vs_ipc-<subset>-<arch>   top-1 against IPC per method: mean (line) and ± std band over repeats, best
                                    solid and last dashed; the paper's values as open markers with their error bars
  ablation-<subset>-<arch>          Table 5 (the paper's: ResNetAP-10): bars per variant and IPC, the paper's as
                                    markers
  sweeps-<subset>-<arch>            Fig. 6: lambda_r, lambda_d, N_M, epochs (methods lambda_r-<v>, lambda_d-<v>,
                                    nm-<n>, epochs-<e>, configs/sweeps.md; the main run at the default value)
  eval_curves-<subset>-<arch>-ipc<k>  test top-1 over epochs: every run thin, mean and ± std band per method
  finetune-<run>                    a fine-tuning log: diffusion loss, L_r, L_d, memory fill, the losses' cosines,
                                    learning rate, images/s
  table4-<arch>                     Table 4 (ImageNet-1K, RDED protocol): ours beside the published SRe2L / RDED /
                                    DiT / Minimax / MGD³ numbers
Means and stds are those of scripts/tables.py (population std over the seeds of a group, the latest record per seed).
"""
import argparse
import json
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.tables import (ABLATION, ARCH_NAMES, METHOD_NAMES, PUBLISHED, TABLES, load_runs, mean_std,  # noqa: E402
                            method_of, paper_value, protocol_of)
from utils.errors import UserError, run_cli  # noqa: E402
from utils.plots import color, pyplot, save_figure  # noqa: E402

ABLATION_NAMES = [m for m, _ in ABLATION]
# Fig. 6 sweeps: method prefix -> (train key, axis label, log axis); the main run ("minimax") is the default point
SWEEPS = {"lambda_r": ("lambda_r", "λ_r", True), "lambda_d": ("lambda_d", "λ_d", True),
          "nm": ("memory_size", "N_M (memory size)", True), "epochs": ("epochs", "fine-tuning epochs", False)}
SWEEP_RE = re.compile(r"^(lambda_r|lambda_d|nm|epochs)-([0-9.eE+-]+)$")
# published Table 4 rows beside ours (MGD³: DiT + mode guidance)
TABLE4_METHODS = ["sre2l", "rded", "dit", "dit-mode", "minimax", "authors", "random"]
LOG_PANELS = [("diffusion", "diffusion loss"), ("loss_r", "L_r (weighted)"), ("loss_d", "L_d (weighted)"),
              ("mem_fill", "memory fill"), ("cos", "cosines the losses act on"), ("lr", "learning rate"),
              ("img_per_s", "images / s")]


def name_of(method):
    return METHOD_NAMES.get(method) or dict(ABLATION).get(method) or method


#### Reading ###################################################################################################

def find_files(paths):
    """(result files, fine-tuning logs): every *.jsonl under the folders (sample folders pruned) or as given."""
    results, logs = [], []
    for p in paths:
        if os.path.isfile(p):
            found = [p]
        elif os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                if "manifest.json" in names:  # a sample folder: thousands of PNGs, no records
                    dirs[:] = []
                    continue
                dirs[:] = sorted(d for d in dirs if d not in ("tracker", "wandb"))  # the trackers' own files
                found += [os.path.join(root, n) for n in sorted(names) if n.endswith(".jsonl")]
        else:
            raise UserError(f"results path not found: {p}; pass a results folder (scripts/<subset>.sh's OUT_DIR), "
                            f"evaluate.py's results.jsonl or a fine-tuning log.jsonl")
        for f in found:
            (logs if os.path.basename(f) == "log.jsonl" else results).append(f)
    return results, logs


def read_jsonl(path):
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of an interrupted run
    return out


def latest_runs(files):
    """{(subset, method, arch, ipc): {seed: run record}}: the same grouping and rule as scripts/tables.py."""
    groups = {}
    for path in files:
        for rec in read_jsonl(path):
            if rec.get("kind") != "run":
                continue
            ipc = "full" if rec.get("select") == "full" or rec.get("ipc") in (None, "full") else int(rec["ipc"])
            groups.setdefault((rec.get("subset"), method_of(rec), rec.get("arch"), ipc), {})[rec.get("seed")] = rec
    return groups


def _ms(runs, idx):
    return mean_std([r[idx] for r in runs.values()])


def _is_main_method(m):
    return m not in ABLATION_NAMES and not SWEEP_RE.match(str(m)) and m != "full"


#### 1. Top-1 against IPC ######################################################################################

def accuracy_vs_ipc(groups, published, subset, arch):
    """Per method: best (solid) and last (dashed) mean over repeats with a ± std band; the paper's as open markers
    with error bars; Full as a dotted line. gids: <method>/best, <method>/last, <method>/best_band,
    <method>/last_band, <method>/paper, full/best."""
    plt = pyplot()
    ours = sorted({k[1] for k in groups if k[0] == subset and k[2] == arch and isinstance(k[3], int)
                   and _is_main_method(k[1])}, key=str)
    pub = published.get(subset, {})
    paper = sorted(m for m in pub if _is_main_method(m) and arch in pub[m]
                   and any(isinstance(i, int) for i in pub[m][arch]))
    methods = ours + [m for m in paper if m not in ours]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, m in enumerate(methods):
        c = color(i)
        ipcs = sorted(k[3] for k in groups if k[:3] == (subset, m, arch) and isinstance(k[3], int))
        for idx, (metric, style) in enumerate((("best", "-"), ("last", "--"))):
            if not ipcs:
                continue
            stats = [_ms({s: (r["best"], r["last"]) for s, r in groups[(subset, m, arch, k)].items()}, idx)
                     for k in ipcs]
            mean = [s[0] for s in stats]
            sd = [s[1] for s in stats]
            ax.plot(ipcs, mean, style, marker="o", ms=3, color=c, gid=f"{m}/{metric}",
                    label=f"{name_of(m)}" if metric == "best" else None)
            ax.fill_between(ipcs, [a - b for a, b in zip(mean, sd)], [a + b for a, b in zip(mean, sd)], color=c,
                            alpha=0.18 if metric == "best" else 0.08, lw=0, gid=f"{m}/{metric}_band")
        pts = sorted((k, paper_value(published, subset, m, arch, k)) for k in pub.get(m, {}).get(arch, {})
                     if isinstance(k, int))
        if pts:
            eb = ax.errorbar([k for k, _ in pts], [v[0] for _, v in pts], yerr=[v[1] or 0.0 for _, v in pts],
                             fmt="s", mfc="none", ms=6, color=c, capsize=3, ls="none",
                             label=f"{name_of(m)} (paper)" if not ipcs else None)
            eb.lines[0].set_gid(f"{m}/paper")
    full = groups.get((subset, "full", arch, "full"))
    if full:
        mean = _ms({s: (r["best"], r["last"]) for s, r in full.items()}, 0)[0]
        ax.axhline(mean, ls=":", color="k", lw=1, gid="full/best", label=f"Full ({mean:.1f})")
    ax.set_xscale("log")
    ticks = sorted({int(x) for ln in ax.get_lines() if ln.get_gid() != "full/best" for x in ln.get_xdata()})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("top-1 %")
    ax.set_title(f"{subset}, {ARCH_NAMES.get(arch, arch)}: solid best, dashed last (± std over repeats); "
                 f"□ paper", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


#### 2. Table 5 ablation and Fig. 6 sweeps #####################################################################

def ablation(groups, published, subset, arch):
    """Table 5: a bar per variant and IPC (best, mean ± std over repeats), the paper's value as a marker on it.
    Bar containers are labelled with the variant's name; paper markers have gid <variant>/paper."""
    plt = pyplot()
    runs = {m: {k[3]: v for k, v in groups.items() if k[0] == subset and k[1] == m and k[2] == arch
                and isinstance(k[3], int)} for m in ABLATION_NAMES}
    if not runs["minimax-minimax"]:  # the full method is the main run, as in scripts/tables.py
        runs["minimax-minimax"] = {k[3]: v for k, v in groups.items() if k[:3] == (subset, "minimax", arch)
                                   and isinstance(k[3], int)}
    if not any(runs[m] for m in ABLATION_NAMES if m != "minimax-minimax"):
        return None
    ipcs = sorted({i for r in runs.values() for i in r})
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    width = 0.8 / len(ABLATION_NAMES)
    for j, (m, label) in enumerate(ABLATION):
        xs = [x + (j - (len(ABLATION) - 1) / 2) * width for x in range(len(ipcs))]
        have = [(x, k) for x, k in zip(xs, ipcs) if k in runs[m]]
        if have:
            st = [_ms({s: (r["best"], r["last"]) for s, r in runs[m][k].items()}, 0) for _, k in have]
            ax.bar([x for x, _ in have], [s[0] for s in st], width, yerr=[s[1] for s in st], color=color(j),
                   capsize=2, label=label)
        pts = [(x, paper_value(published, subset, m, arch, k)) for x, k in zip(xs, ipcs)]
        pts = [(x, v) for x, v in pts if v[0] is not None]
        if pts:
            eb = ax.errorbar([x for x, _ in pts], [v[0] for _, v in pts], yerr=[v[1] or 0.0 for _, v in pts],
                             fmt="_", ms=9, mew=2, color="k", capsize=0, ls="none")
            eb.lines[0].set_gid(f"{m}/paper")
    ax.set_xticks(range(len(ipcs)), [f"IPC {k}" for k in ipcs])
    ax.set_ylabel("best top-1 %")
    ax.set_title(f"Table 5 ablation, {subset}, {ARCH_NAMES.get(arch, arch)} (bars: ours ± std; — paper)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return fig


def sweeps(groups, subset, arch):
    """Fig. 6: a panel per swept value with records, a line per IPC (best, mean with ± std error bars); the main run
    ("minimax") is the point at the default value. gids: <sweep>/ipc<k>."""
    from engines.train.schema import CONFIG as TRAIN  # light: no torch
    found = {}
    for (sub, m, a, ipc), runs in groups.items():
        hit = SWEEP_RE.match(str(m))
        if sub == subset and a == arch and hit and isinstance(ipc, int):
            found.setdefault(hit.group(1), {}).setdefault(ipc, {})[float(hit.group(2))] = runs
    if not found:
        return None
    plt = pyplot()
    names = [s for s in SWEEPS if s in found]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, s in zip(axes[0], names):
        key, label, log = SWEEPS[s]
        default = float(TRAIN[key].default)
        for i, ipc in enumerate(sorted(found[s])):
            pts = dict(found[s][ipc])
            main = groups.get((subset, "minimax", arch, ipc))
            if main and default not in pts:
                pts[default] = main
            xs = sorted(pts)
            st = [_ms({sd: (r["best"], r["last"]) for sd, r in pts[x].items()}, 0) for x in xs]
            eb = ax.errorbar(xs, [v[0] for v in st], yerr=[v[1] for v in st], marker="o", ms=3, capsize=2,
                             color=color(i), label=f"IPC {ipc}")
            eb.lines[0].set_gid(f"{s}/ipc{ipc}")
        ax.axvline(default, ls=":", color="grey", lw=1)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("best top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 6 sweeps, {subset}, {ARCH_NAMES.get(arch, arch)} (dotted: default)", fontsize=9)
    return fig


#### 3. Evaluation curves ######################################################################################

def eval_curves(groups, subset, arch, ipc):
    """Test top-1 over epochs: each run thin (gid <method>/seed<s>), the mean over the runs (gid <method>/mean) and
    the ± std band (gid <method>/band) at the epochs every run tested."""
    import numpy as np
    plt = pyplot()
    methods = sorted({k[1] for k in groups if k[0] == subset and k[2] == arch and k[3] == ipc}, key=str)
    methods = [m for m in methods if any(r.get("curve") for r in groups[(subset, m, arch, ipc)].values())]
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(methods):
        c = color(i)
        runs = {s: r for s, r in groups[(subset, m, arch, ipc)].items() if r.get("curve")}
        for s, r in sorted(runs.items(), key=lambda t: str(t[0])):
            e, a = zip(*r["curve"])
            ax.plot(e, a, color=c, lw=0.7, alpha=0.5, gid=f"{m}/seed{s}")
        common = sorted(set.intersection(*[{p[0] for p in r["curve"]} for r in runs.values()]))
        acc = np.array([[dict(map(tuple, r["curve"]))[e] for e in common] for r in runs.values()])  # (runs, E)
        mean, sd = acc.mean(0), acc.std(0)
        ax.plot(common, mean, color=c, lw=2, gid=f"{m}/mean", label=f"{name_of(m)} (n={len(runs)})")
        ax.fill_between(common, mean - sd, mean + sd, color=c, alpha=0.18, lw=0, gid=f"{m}/band")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 %")
    ax.set_title(f"{subset}, {ARCH_NAMES.get(arch, arch)}, IPC {ipc}: runs (thin), mean ± std", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


#### 4. Fine-tuning curves #####################################################################################

def finetune_curves(records, title, batch_size=None):
    """A panel per quantity of a log.jsonl (steps on x); images/s = steps/s x the global batch (from the run's
    config.yaml; steps/s without it). gids: the log key (cos_real_min, cos_pred_max in one panel; img_per_s)."""
    plt = pyplot()
    recs = [r for r in records if "step" in r]
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.4))
    axes = axes.ravel()
    for ax, (key, label) in zip(axes, LOG_PANELS):
        keys = ["cos_real_min", "cos_pred_max"] if key == "cos" else [key]
        drawn = False
        for j, k in enumerate(keys):
            src = "steps_per_s" if k == "img_per_s" else k
            pts = [(r["step"], r[src]) for r in recs if r.get(src) is not None]
            if k == "img_per_s" and batch_size:
                pts = [(s, v * batch_size) for s, v in pts]
            elif k == "img_per_s":
                label = "steps / s"
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, color=color(j), gid=k,
                        label={"cos_real_min": "min cos(pred, real memory): Eq. 3",
                               "cos_pred_max": "max cos(pred, pred memory): Eq. 4"}.get(k))
                drawn = True
        if key == "cos" and drawn:
            ax.legend(fontsize=6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[-1].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def run_batch_size(log_path):
    """The global batch of the run whose log this is (its config.yaml), or None."""
    cfg = os.path.join(os.path.dirname(log_path), "config.yaml")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            return (yaml.safe_load(f) or {}).get("batch_size")
    return None


#### 5. Table 4 ################################################################################################

def table4(groups, published, arch="resnet18"):
    """ImageNet-1K, RDED protocol: per IPC a bar per method, ours (mean ± std over repeats, solid) and the paper's
    (hatched). Bar containers are labelled "<Method>" and "<Method> (paper)"."""
    plt = pyplot()
    pub = published.get("imagenet1k", {})
    ipcs = sorted({k[3] for k in groups if k[0] == "imagenet1k" and k[2] == arch and isinstance(k[3], int)} |
                  {i for m in pub for i in pub[m].get(arch, {}) if isinstance(i, int)})
    bars = []  # (label, method, [(x index, value, std)], paper?)
    for m in TABLE4_METHODS:
        ours = [(x, *_ms({s: (r["best"], r["last"]) for s, r in groups[("imagenet1k", m, arch, k)].items()}, 0))
                for x, k in enumerate(ipcs) if ("imagenet1k", m, arch, k) in groups]
        paper = [(x, *paper_value(published, "imagenet1k", m, arch, k)) for x, k in enumerate(ipcs)]
        paper = [p for p in paper if p[1] is not None]
        if paper:
            bars.append((f"{name_of(m)} (paper)", m, paper, True))
        if ours:
            bars.append((name_of(m), m, ours, False))
    if not any(not b[3] for b in bars):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    width = 0.8 / len(bars)
    methods = [m for m in TABLE4_METHODS if any(b[1] == m for b in bars)]
    for j, (label, m, pts, is_paper) in enumerate(bars):
        ax.bar([x + (j - (len(bars) - 1) / 2) * width for x, _, _ in pts], [v for _, v, _ in pts], width,
               yerr=[s or 0.0 for _, _, s in pts], capsize=2, label=label, color=color(methods.index(m)),
               hatch="//" if is_paper else None, alpha=0.55 if is_paper else 1.0, edgecolor="k", lw=0.5)
    ax.set_xticks(range(len(ipcs)), [f"IPC {k}" for k in ipcs])
    ax.set_ylabel("best top-1 % (after epoch 240 of 300)")
    ax.set_title(f"Table 4: ImageNet-1K, RDED protocol, student {ARCH_NAMES.get(arch, arch)} "
                 f"(hatched: published)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return fig


#### All of them ###############################################################################################

def _slug(s):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "run"


def make_figures(paths, out, formats=("png", "pdf"), published_path=PUBLISHED, log=print):
    """Every figure the records allow, into `out`; returns the written files."""
    with open(published_path) as f:
        published = yaml.safe_load(f)
    results, logs = find_files(paths)
    groups = latest_runs(results)
    idc, rded = latest_runs_of(groups, "idc"), latest_runs_of(groups, "rded")
    written = []

    def save(fig, name):
        if fig is not None:
            written.extend(save_figure(fig, os.path.join(out, name), formats))

    pairs = sorted({(k[0], k[2]) for k in groups}, key=str)
    for subset, arch in pairs:
        src = rded if subset == "imagenet1k" else idc
        if any(k[0] == subset and k[2] == arch and isinstance(k[3], int) for k in src):
            save(accuracy_vs_ipc(src, published, subset, arch), f"accuracy_vs_ipc-{_slug(subset)}-{_slug(arch)}")
        save(sweeps(src, subset, arch), f"sweeps-{_slug(subset)}-{_slug(arch)}")
        if subset != "imagenet1k":
            save(ablation(src, published, subset, arch), f"ablation-{_slug(subset)}-{_slug(arch)}")
        for ipc in sorted({k[3] for k in src if k[0] == subset and k[2] == arch}, key=str):
            save(eval_curves(src, subset, arch, ipc), f"eval_curves-{_slug(subset)}-{_slug(arch)}-ipc{ipc}")
    for arch in sorted({k[2] for k in rded if k[0] == "imagenet1k"}, key=str):
        save(table4(rded, published, arch), f"table4-{_slug(arch)}")
    for path in logs:
        recs = read_jsonl(path)
        run = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if any("step" in r for r in recs):
            save(finetune_curves(recs, f"fine-tuning {run} ({path})", run_batch_size(path)),
                 f"finetune-{_slug(run)}")
    log(f"{len(written)} file(s) written to {out}")
    return written


def latest_runs_of(groups, protocol):
    return {k: v for k, v in groups.items() if all(protocol_of(r) == protocol for r in v.values())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results folders, results.jsonl or log.jsonl files")
    p.add_argument("--out", default=None, help="folder for the figures (default: RESULTS/figures for one folder)")
    p.add_argument("--formats", default="png,pdf", help="comma list of png, pdf, svg")
    args = p.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise UserError(f"--formats {args.formats!r}: choose from png, pdf, svg (comma list)")
    results, logs = find_files(args.results)  # a missing path is named first
    out = args.out
    if out is None:
        if len(args.results) != 1 or not os.path.isdir(args.results[0]):
            raise UserError("pass --out DIR (the default RESULTS/figures needs exactly one results folder)")
        out = os.path.join(args.results[0], "figures")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; pass a folder")
    if not results and not logs:
        raise UserError(f"no *.jsonl records under {', '.join(args.results)}; run evaluate.py / train_minimax.py "
                        f"first (scripts/<subset>.sh writes both)")
    make_figures(args.results, out, formats)


if __name__ == "__main__":
    run_cli(main)
