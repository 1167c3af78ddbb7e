"""The README's main command, as a smoke run: every step of scripts/demo.sh on the real digits, tiny budgets;
and the demo's bookkeeping (arms sharing runs, the signal-versus-spread verdict) on constructed numbers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scripts.demo import ARMS, Arm, collect, comparisons, demo_figure, fine_tune_runs
from scripts.demo_gradients import main as gradients_main
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    cmd = ["bash", os.path.join(ROOT, "scripts", "demo.sh"), "--out", str(out), "--quick", "--ipcs", "2,3"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # the real digits, split per class: test 30% (as before), val 20% of the rest, train the remainder
    sizes = {s: sum(len(os.listdir(out / "data" / s / d)) for d in os.listdir(out / "data" / s))
             for s in ("train", "val", "test")}
    assert sizes == {"train": 1008, "val": 250, "test": 539}
    generated = [a.name for a in ARMS if a.source == "model"]
    assert generated == ["base", "difffit", "minimax", "minimax-mode"]
    for name in generated[:3]:
        for s in (0, 1):  # one folder per sampling seed, at the largest IPC
            for k in range(10):
                assert sorted(os.listdir(out / "samples" / name / f"s{s}" / f"digit{k}")) == ["0.png", "1.png", "2.png"]
    for s in (0, 1):  # mode guidance: a folder per seed AND IPC (the k-means modes of IPC 2 are not IPC 3's)
        for ipc in (2, 3):
            folder = out / "samples" / "minimax-mode" / f"s{s}-ipc{ipc}"
            assert sorted(os.listdir(folder / "digit0")) == [f"{i}.png" for i in range(ipc)]
            assert json.load(open(folder / "manifest.json"))["config"]["guidance"] == "mode"
    a, b = (np.asarray(Image.open(out / "samples" / "minimax" / f"s{s}" / "digit0" / "0.png")) for s in (0, 1))
    assert not np.array_equal(a, b)  # the seeds draw different sets
    recs = [json.loads(ln) for ln in open(out / "eval" / "test.jsonl")]
    got = {(r["kind"], r["method"], r["ipc"], r["seed"]) for r in recs if r["kind"] in ("run", "mmd")}
    want = {(k, m, i, s) for k in ("run", "mmd") for m in ("random", *generated) for i in (2, 3) for s in (0, 1)}
    want |= {("run", "full", None, 0), ("run", "full", None, 1), ("mmd", "full", None, 0)}  # one set: measured once
    assert got == want
    full = [r for r in recs if r["kind"] == "mmd" and r["method"] == "full"]
    assert full[0]["mmd_linear"] == pytest.approx(0, abs=1e-9)  # the train split against itself
    table = open(out / "RESULTS.md").read()
    for label in ("Random real", "Base model", "Difffit only (rep off, div off)", "Minimax",
                  "Minimax + mode guidance (MGD³)", "Full train split"):
        assert f"| {label} |" in table
    assert "| 2 | minimax − base |" in table and "| 3 | minimax − difffit |" in table
    assert "| 3 | minimax-mode − minimax |" in table
    assert Image.open(out / "demo_grid.png").size == (5 * 10 * 32 + 4 * 12, 14 + 10 * 32)
    assert Image.open(out / "demo_figure.png").size[0] > 400 and "demo_figure.png" in table
    fill = [json.loads(ln) for ln in open(out / "runs" / "minimax" / "log.jsonl")][-1]
    assert 0 < fill["mem_fill"] <= 1 and -1 <= fill["cos_pred_max"] <= 1 and fill["loss_d"] > 0
    gradients_main([str(out), "--batches", "2"])  # the gradient probe on the demo's base model
    line = capsys.readouterr().out
    ratios = [float(x.split(",")[0]) for x in line.split("/ diffusion ")[1:]]
    assert line.startswith("median gradient norm over 2 batches") and len(ratios) == 2 and min(ratios) > 0
    # rerunning finds every step finished and changes nothing, the table's numbers included
    before = open(out / "eval" / "test.jsonl").read()
    again = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable))
    assert again.returncode == 0 and open(out / "eval" / "test.jsonl").read() == before
    assert open(out / "RESULTS.md").read().split("\nWall time")[0] == table.split("\nWall time")[0]


def test_arms_sharing_a_run_must_agree_on_its_training():
    same = [Arm("m", "M", "model", "minimax"), Arm("mg", "M + guidance", "model", "minimax", (), ("--x", "1"))]
    assert fine_tune_runs(same) == {"minimax": ()}  # a sampling-only variant reuses the checkpoint
    clash = [Arm("m", "M", "model", "ft"), Arm("d", "D", "model", "ft", ("--rep", "off"))]
    with pytest.raises(UserError, match="arms share run 'ft'"):
        fine_tune_runs(clash)


def test_verdict_compares_the_difference_with_the_spread():
    stats = {("minimax", 10): {"best": np.array([80.0, 82.0])},  # mean 81, sd 1
             ("base", 10): {"best": np.array([70.0, 72.0])},     # mean 71, sd 1: 10 apart, spread sqrt 2
             ("difffit", 10): {"best": np.array([79.0, 81.0])}}  # mean 80: 1 apart, within sqrt 2
    text = comparisons(stats, [10], (("minimax", "base"), ("minimax", "difffit")))
    assert "| 10 | minimax − base | 10.0 (spread 1.4, beyond spread; paired sd 0.0) |" in text
    assert "| 10 | minimax − difffit | 1.0 (spread 1.4, within spread; paired sd 0.0) |" in text


def test_demo_figure_plots_the_records(tmp_path):
    """The figure of accuracy and the set measures per arm, from a small fake record set: the plotted means and
    error bars are the records' mean and std over the seeds."""
    rng = np.random.default_rng(0)
    recs, want = [], {}
    for m in ("random", "base", "minimax", "full"):
        for ipc in ((10, 50) if m != "full" else (None,)):
            for s in (0, 1, 2):
                v = {"best": 60 + 10 * rng.random(), "last": 55.0, "mmd_linear": rng.random(), "rep": rng.random(),
                     "div": rng.random()}
                recs += [{"kind": "run", "method": m, "ipc": ipc, "seed": s, "best": v["best"], "last": v["last"]},
                         {"kind": "mmd", "method": m, "ipc": ipc, "seed": s,
                          **{k: v[k] for k in ("mmd_linear", "rep", "div")}}]
                for k, x in v.items():
                    want.setdefault((m, ipc, k), []).append(x)
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    arms = [Arm("random", "Random", "real"), Arm("base", "Base", "model", "base"),
            Arm("minimax", "Minimax", "model", "minimax"), Arm("full", "Full", "full")]
    stats = collect(str(tmp_path / "test.jsonl"), arms, [10, 50], [0, 1, 2])
    fig = demo_figure(stats, arms, [10, 50], str(tmp_path / "demo_figure.png"))
    assert (tmp_path / "demo_figure.png").stat().st_size < 100_000
    for ax, key in zip(fig.axes, ("best", "mmd_linear", "rep", "div")):
        for ipc in (10, 50):
            line = next(a for a in ax.get_children() if a.get_gid() == f"{key}/ipc{ipc}")
            assert line.get_ydata() == pytest.approx([np.mean(want[(m, ipc, key)]) for m in ("random", "base",
                                                                                             "minimax")])
            bars = next(c for c in ax.containers if c.lines[0] is line).lines[2][0].get_segments()
            assert [b[1, 1] - b[0, 1] for b in bars] == pytest.approx(
                [2 * np.std(want[(m, ipc, key)]) for m in ("random", "base", "minimax")])
        full = next(a for a in ax.get_children() if a.get_gid() == f"{key}/full")
        assert full.get_ydata()[0] == pytest.approx(np.mean(want[("full", None, key)]))
