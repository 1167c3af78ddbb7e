"""Paper-layout tables (Tables 1, 3, 4, 5, and mode guidance against MGD³'s published rows) from evaluation results,
with the published numbers side by side.

    python scripts/tables.py results/ [more.jsonl ...] [--metric best|last] [--out DIR]

Reads every `kind: run` record of evaluate.py's JSONL files (a folder is searched for *.jsonl), groups runs by
(subset, method, arch, IPC) and reports mean ± std over repeats next to the paper's value and the difference.
"""
import argparse
import csv
import io
import json
import math
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402

PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published.yaml")
ARCH_NAMES = {"convnet6": "ConvNet-6", "resnetap10": "ResNetAP-10", "resnet18": "ResNet-18",
              "resnet50": "ResNet-50", "resnet101": "ResNet-101"}
METHOD_NAMES = {"random": "Random", "herding": "Herding", "kcenter": "K-Center", "dit": "DiT", "minimax": "Minimax",
                "full": "Full", "dit-mode": "DiT + mode (MGD³)", "minimax-mode": "Minimax + mode",
                "sre2l": "SRe2L", "rded": "RDED", "authors": "Minimax (authors' images)"}
ABLATION = [("off-off", "Difffit only"), ("mean-off", "L_r (mean)"), ("minimax-off", "L_r (minimax)"),
            ("off-mean", "L_d (mean)"), ("off-minimax", "L_d (minimax)"), ("mean-mean", "L_r + L_d (mean)"),
            ("minimax-minimax", "L_r + L_d (minimax)")]
# table name -> (subsets, methods, archs, ipcs)
TABLES = {
    "1": (["imagewoof"], ["random", "herding", "kcenter", "dit", "minimax", "full"],
          ["convnet6", "resnetap10", "resnet18"], [10, 20, 50, 70, 100]),
    "3": (["imagenette", "imageidc"], ["random", "dit", "minimax"], ["resnetap10"], [10, 20, 50]),
    "5": (["imagewoof", "imageidc"], [m for m, _ in ABLATION], ["resnetap10"], [10, 50]),
    # mode guidance (configs/guidance/mode.yaml); MGD³ = DiT + mode guidance, its published numbers in dit-mode
    "mode": (["imagewoof"], ["dit", "dit-mode", "minimax", "minimax-mode"], ["convnet6", "resnetap10", "resnet18"],
             [10, 50, 100]),
    # Table 4 (SPEC §9): SRe2L and RDED are published rows only (other distillation methods)
    "4": (["imagenet1k"], ["random", "sre2l", "rded", "dit", "minimax", "authors"],
          ["resnet18", "resnet50", "resnet101"],
          [10, 50]),
}
# the evaluation protocol whose runs a table reads (a record without a `protocol` field is an IDC run)
TABLE_PROTOCOL = {"1": "idc", "3": "idc", "5": "idc", "4": "rded"}


#### Reading results ###########################################################################################

def find_result_files(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".jsonl")]
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UserError(f"results path not found: {p}; pass evaluate.py's results.jsonl files or their folder")
    return files


def method_of(rec):
    """The method a run evaluates: its `method` tag, else the selection baseline, else the train folder's name."""
    if rec.get("method"):
        return rec["method"]
    if rec.get("select") not in (None, "none"):
        return rec["select"]
    return os.path.basename(os.path.normpath(str(rec.get("train", ""))))


def protocol_of(rec):
    """The evaluation protocol of a run record: `eval_protocol` (evaluate.py writes "idc" or "rded"), else a
    `protocol` name, the `name` inside a protocol dict, else "idc" (older IDC records store only their
    hyper-parameters as the protocol dict)."""
    if isinstance(rec.get("eval_protocol"), str):
        return rec["eval_protocol"]
    p = rec.get("protocol")
    if isinstance(p, str):
        return p
    if isinstance(p, dict) and isinstance(p.get("name"), str):
        return p["name"]
    return "idc"


def load_runs(files, protocol=None):
    """{(subset, method, arch, ipc): {seed: (best, last)}}; a rerun of the same seed keeps the latest record.
    protocol: only runs of that evaluation protocol (records without the field are IDC runs); None = all."""
    groups = {}
    for path in files:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted run
                if rec.get("kind") != "run":
                    continue
                if protocol is not None and protocol_of(rec) != protocol:
                    continue
                ipc = "full" if rec.get("select") == "full" or rec.get("ipc") in (None, "full") else int(rec["ipc"])
                key = (rec.get("subset"), method_of(rec), rec.get("arch"), ipc)
                groups.setdefault(key, {})[rec.get("seed")] = (float(rec["best"]), float(rec["last"]))
    return groups


def mean_std(values):
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / n)  # population std, as evaluate.py and IDC (np.std)
    return m, sd


#### Building tables ###########################################################################################

def paper_value(published, subset, method, arch, ipc):
    v = published.get(subset, {}).get(method, {}).get(arch, {}).get(ipc)
    if v is None:
        return None, None
    return (float(v[0]), float(v[1])) if isinstance(v, list) else (float(v), None)


def build_rows(groups, published, table, metric="best"):
    """One row per (subset, ipc, arch, method) cell of a table, ours and the paper's, or None where missing."""
    subsets, methods, archs, ipcs = TABLES[table]
    idx = 0 if metric == "best" else 1
    rows = []
    for subset in subsets:
        measured = {k[3] for k in groups if k[0] == subset and k[1] in methods and isinstance(k[3], int)}
        for ipc in sorted(set(ipcs) | measured) + (["full"] if "full" in methods else []):
            for arch in archs:
                for method in methods:
                    if (method == "full") != (ipc == "full"):
                        continue
                    runs = groups.get((subset, method, arch, ipc), {})
                    if not runs and method == "minimax-minimax":  # the full method is the default run
                        runs = groups.get((subset, "minimax", arch, ipc), {})
                    ours = mean_std([r[idx] for r in runs.values()]) if runs else (None, None)
                    paper = paper_value(published, subset, method, arch, ipc)
                    diff = ours[0] - paper[0] if ours[0] is not None and paper[0] is not None else None
                    rows.append({"table": table, "subset": subset, "ipc": ipc, "arch": arch, "method": method,
                                 "metric": metric, "n": len(runs), "mean": ours[0], "std": ours[1],
                                 "paper_mean": paper[0], "paper_std": paper[1], "diff": diff})
    return rows


def fmt(mean, std):
    if mean is None:
        return "–"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def cell(r):
    """`ours (paper, diff)`; a missing side shows as –."""
    ours = fmt(r["mean"], r["std"])
    if r["paper_mean"] is None:
        return ours
    diff = f", {r['diff']:+.1f}" if r["diff"] is not None else ""
    return f"{ours} ({fmt(r['paper_mean'], r['paper_std'])}{diff})"


def markdown(rows, table, metric):
    """Methods as columns; rows by subset, IPC and network (the paper's layout)."""
    subsets, methods, archs, _ = TABLES[table]
    names = dict(ABLATION) if table == "5" else METHOD_NAMES
    title = {"1": "Table 1: ImageWoof", "3": "Table 3: ImageNette / ImageIDC (ResNetAP-10)",
             "5": "Table 5: ablation of the minimax scheme (ResNetAP-10)",
             "mode": "Mode guidance: ImageWoof, published MGD³ (Chan-Santiago et al., ICML 2025) as DiT + mode",
             "4": "Table 4: ImageNet-1K, RDED protocol (student network per row)"}[table]
    out = [f"### {title} — top-1 % ({metric} over the run), ours (paper, difference)", ""]
    out.append("| Subset | IPC | Network | " + " | ".join(names[m] for m in methods) + " |")
    out.append("|" + "---|" * (3 + len(methods)))
    by_row = {}
    for r in rows:
        by_row.setdefault((r["subset"], r["ipc"], r["arch"]), {})[r["method"]] = r
    for (subset, ipc, arch), cells in by_row.items():
        if table == "4" and all(c["n"] == 0 and c["paper_mean"] is None for c in cells.values()):
            continue  # Table 4 lists the larger students only where they were evaluated
        vals = [cell(cells[m]) if m in cells else "" for m in methods]
        out.append(f"| {subset} | {ipc} | {ARCH_NAMES.get(arch, arch)} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def to_csv(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["table"])
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def make_tables(paths, metric="best", tables=("1", "3", "5", "mode"), published_path=PUBLISHED):
    """(markdown, csv text) of the requested tables; tables with no result at all are left out."""
    with open(published_path) as f:
        published = yaml.safe_load(f)
    files = find_result_files(paths)
    md, all_rows = [], []
    for t in tables:
        groups = load_runs(files, TABLE_PROTOCOL.get(t))
        rows = build_rows(groups, published, t, metric)
        if any(r["n"] for r in rows):
            md.append(markdown(rows, t, metric))
            all_rows += rows
    return "\n".join(md), to_csv(all_rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.jsonl files or folders holding them")
    p.add_argument("--metric", choices=["best", "last"], default="best",
                   help="best = max test accuracy over the run (the authors' report); last = final epoch")
    p.add_argument("--tables", default="1,3,5,mode",
                   help="comma-separated: 1, 3, 4, 5, mode (4 = ImageNet-1K, RDED protocol)")
    p.add_argument("--out", default=None, help="folder for tables.md and tables.csv (default: print only)")
    args = p.parse_args(argv)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    bad = [t for t in tables if t not in TABLES]
    if bad:
        raise UserError(f"unknown table(s) {', '.join(bad)}; choose from {', '.join(TABLES)}")
    md, csv_text = make_tables(args.results, args.metric, tables)
    if not md:
        raise UserError("no evaluation runs of the paper's subsets/methods found in the given results; "
                        "run evaluate.py with --method tags (scripts/<subset>.sh does) first")
    print(md)
    if args.out:
        atomic_write_text(os.path.join(args.out, f"tables_{args.metric}.md"), md)
        atomic_write_text(os.path.join(args.out, f"tables_{args.metric}.csv"), csv_text)


if __name__ == "__main__":
    run_cli(main)
