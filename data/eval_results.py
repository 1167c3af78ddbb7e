"""Evaluation results on disk: JSONL (source of truth, read back to skip finished runs), CSV, accuracy curves."""
import csv
import hashlib
import io
import json
import os

from PIL import Image, ImageDraw

from utils.io import append_jsonl, atomic_save_image

CSV_FIELDS = ["time", "kind", "method", "arch", "train", "subset", "select", "ipc", "repeat", "seed", "epochs", "best", "last",
              "best_mean", "best_std", "last_mean", "last_std", "n_runs", "mmd_linear", "mmd_rbf", "rep", "div", "fingerprint",
              "key"]


def results_path(results, subset_name):
    """`results` may be a .jsonl path, a folder, or None (results/eval/<subset or train-dir name>/results.jsonl)."""
    if results is None:
        return os.path.join("results", "eval", subset_name, "results.jsonl")
    return results if results.endswith(".jsonl") else os.path.join(results, "results.jsonl")


def run_key(protocol, fingerprint, arch, seed):
    """Identity of one training run: everything that changes its outcome (not device, workers or paths)."""
    blob = json.dumps({"protocol": protocol, "data": fingerprint, "arch": arch, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finished_runs(path, kind="run"):
    """{key: record} of the records of this kind ("run", "mmd") already in the JSONL (a torn last line is ignored)."""
    done = {}
    if not os.path.isfile(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == kind and "key" in rec:
                done[rec["key"]] = rec
    return done


def append_csv(path, row):
    """One CSV line per record, written with a single write(); the header when the file is new."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    new = not os.path.isfile(path)
    if new:
        writer.writeheader()
    writer.writerow({k: row.get(k) for k in CSV_FIELDS})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def record(path, rec):
    """Append a record to the JSONL and its CSV twin."""
    append_jsonl(path, rec)
    append_csv(os.path.splitext(path)[0] + ".csv", rec)


#### Curves (PIL, no plotting dependency) ####################################################################

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def save_curves(path, curves, title, size=(640, 400)):
    """Top-1 (%) vs epoch, one line per run. `curves`: {label: [(epoch, acc), ...]}."""
    w, h = size
    left, right, top, bottom = 50, 20, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xmax = max([e for c in curves.values() for e, _ in c] + [1])
    ymax = min(100.0, max([a for c in curves.values() for _, a in c] + [1.0]) * 1.1)

    def pt(e, a):
        return left + (w - left - right) * e / xmax, h - bottom - (h - top - bottom) * a / ymax

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        y = ymax * i / 5
        d.text((5, pt(0, y)[1] - 6), f"{y:.0f}", fill="black")
        x = xmax * i / 5
        d.text((pt(x, 0)[0] - 10, h - bottom + 5), f"{x:.3g}", fill="black")
    d.text((left, 8), title, fill="black")
    d.text((w // 2 - 20, h - 18), "epoch", fill="black")
    for i, (label, c) in enumerate(sorted(curves.items())):
        col = COLORS[i % len(COLORS)]
        if len(c) > 1:
            d.line([pt(e, a) for e, a in c], fill=col, width=2)
        for e, a in c[-1:]:
            d.ellipse([pt(e, a)[0] - 3, pt(e, a)[1] - 3, pt(e, a)[0] + 3, pt(e, a)[1] + 3], fill=col)
        d.text((w - right - 150, top + 8 + 14 * i), f"{label}: last {c[-1][1]:.1f}" if c else label, fill=col)
    atomic_save_image(img, path)
