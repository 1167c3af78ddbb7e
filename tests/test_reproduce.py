"""The subset pipeline end to end on a generated ImageNet-layout tree (CPU, tiny models, tiny budgets)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data.subsets import get_subset
from models.dit import DiT_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OVERRIDE = """
train: {{base: {base}, vae: pixel, image_size: 16, batch_size: 5, epochs: 1, max_steps: 2, cache_dir: {cache},
        cache_dtype: float32, num_workers: 0, device: cpu, progress: false}}
sample: {{base: {base}, model: DiT-T/2, vae: pixel, image_size: 16, num_steps: 2, batch_size: 20, micro_batch: 20,
         device: cpu, progress: false, grid: 2}}
evaluate: {{image_size: 16, epochs: 1, depth: 2, width: 8, device: cpu, workers: 0, repeat: 1, feature_epochs: 1,
           batch_size: 16}}
reproduce: {{ipcs: [1, 2], archs: [convnet6], kcenter_ipcs: [1], kcenter_archs: [convnet6], sample_ipc: 2}}
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """imagenet/{train,val}/<wnid>/ for ImageWoof's classes, a tiny 1000-class base DiT, and the override YAML."""
    root = tmp_path_factory.mktemp("repro")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for k, w in enumerate(get_subset("imagewoof").wnids):
            os.makedirs(root / "imagenet" / split / w)
            for i in range(n):
                img = (rng.random((16, 16, 3)) * 60 + k * 19).astype(np.uint8)  # class-dependent brightness
                Image.fromarray(img).save(root / "imagenet" / split / w / f"img{i}.JPEG", quality=95)
    torch.manual_seed(0)
    base = DiT_models["DiT-T/2"](input_size=16, in_channels=3, num_classes=1000)
    torch.save(base.state_dict(), root / "tiny_dit.pt")
    (root / "tiny.yaml").write_text(OVERRIDE.format(base=root / "tiny_dit.pt", cache=root / "cache"))
    return root


def _script(tree, *extra):
    cmd = ["bash", os.path.join(ROOT, "scripts", "imagewoof.sh"), str(tree / "imagenet"), str(tree / "out"),
           "--config", str(tree / "tiny.yaml"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, NGPU="0", OMP_NUM_THREADS="1", PYTHON=sys.executable))


def test_dry_run_lists_every_step(tree):
    res = _script(tree, "--dry-run")
    assert res.returncode == 0, res.stderr
    steps = [ln for ln in res.stdout.splitlines() if ln[:4].strip().rstrip(".").isdigit()]
    names = [ln.split("] ", 1)[1].split(":", 1)[0] for ln in steps]
    assert names == ["finetune-minimax", "sample-minimax", "sample-dit",
                     "eval-minimax-ipc1", "eval-dit-ipc1", "eval-random-ipc1", "eval-herding-ipc1",
                     "eval-minimax-ipc2", "eval-dit-ipc2", "eval-random-ipc2", "eval-herding-ipc2",
                     "eval-kcenter-ipc1", "eval-full", "tables", "figures"]
    assert all("[todo]" in ln for ln in steps)
    ft = steps[0]
    assert f"--data_dir {tree / 'imagenet' / 'train'}" in ft and "--subset imagewoof" in ft
    assert f"--config {tree / 'tiny.yaml'}" in ft
    assert "--ckpt none" in steps[2] and "--select herding --method herding --arch convnet6 --ipc 1" in steps[6]
    assert not (tree / "out").exists()  # a dry run writes nothing


def test_end_to_end_then_rerun_is_a_no_op(tree):
    res = _script(tree)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tree / "out"
    for w in get_subset("imagewoof").wnids:
        assert sorted(os.listdir(out / "samples" / "minimax" / w)) == ["0.png", "1.png"]
    runs = [json.loads(ln) for ln in open(out / "eval" / "results.jsonl")]
    runs = [r for r in runs if r["kind"] == "run"]
    got = sorted({(r["method"], r["ipc"]) for r in runs}, key=str)
    assert got == sorted({("minimax", 1), ("minimax", 2), ("dit", 1), ("dit", 2), ("random", 1), ("random", 2),
                          ("herding", 1), ("herding", 2), ("kcenter", 1), ("full", None)}, key=str)
    assert all(r["subset"] == "imagewoof" for r in runs)
    md = open(out / "tables" / "tables_best.md").read()
    assert "Table 1: ImageWoof" in md and "| imagewoof | 1 | ConvNet-6 |" in md
    _figures_match_the_records(out, runs)
    again = _script(tree, "--dry-run")
    assert again.stdout.count("[done]") == 15 and "[todo]" not in again.stdout
    mtime = os.path.getmtime(out / "eval" / "results.jsonl")
    assert _script(tree).returncode == 0
    assert os.path.getmtime(out / "eval" / "results.jsonl") == mtime  # nothing was redone


def _figures_match_the_records(out, runs):
    """The plan's figures step wrote every kind its records allow; rebuilt here, their plotted arrays are the
    records' numbers: per (method, IPC) the mean over the repeats' records, each run's own curve."""
    import yaml
    from scripts import figures as F
    from scripts.tables import PUBLISHED
    from utils.plots import find
    names = set(os.listdir(out / "figures"))
    assert {"accuracy_vs_ipc-imagewoof-convnet6.png", "accuracy_vs_ipc-imagewoof-convnet6.pdf",
            "eval_curves-imagewoof-convnet6-ipc1.png", "eval_curves-imagewoof-convnet6-ipc2.png",
            "finetune-finetune-minimax.png"} <= names
    groups = F.latest_runs([str(out / "eval" / "results.jsonl")])
    by, seeds = {}, {}
    for r in runs:
        seeds.setdefault((r["method"], r["ipc"]), []).append(r)
        by[(r["method"], r["ipc"], r["seed"])] = r
    mean = (lambda m, ipc, key: np.mean([r[key] for r in seeds[(m, ipc)]]))
    assert len(seeds[("minimax", 1)]) == 3  # the plan's 3 repeats
    fig = F.accuracy_vs_ipc(groups, yaml.safe_load(open(PUBLISHED)), "imagewoof", "convnet6")
    ax = fig.axes[0]
    for m in ("minimax", "dit", "random", "herding"):
        assert list(find(ax, f"{m}/best").get_xdata()) == [1, 2]
        assert find(ax, f"{m}/best").get_ydata() == pytest.approx([mean(m, 1, "best"), mean(m, 2, "best")])
        assert find(ax, f"{m}/last").get_ydata() == pytest.approx([mean(m, 1, "last"), mean(m, 2, "last")])
    assert list(find(ax, "minimax/paper").get_ydata()) == [37.0, 37.6, 53.9, 55.7, 61.1]
    assert find(ax, "full/best").get_ydata()[0] == pytest.approx(mean("full", None, "best"))
    ax = F.eval_curves(groups, "imagewoof", "convnet6", 1).axes[0]
    for m in ("minimax", "dit", "random", "herding", "kcenter"):
        for s in (0, 1, 2):
            assert find(ax, f"{m}/seed{s}").get_xydata().tolist() == by[(m, 1, s)]["curve"]
        acc = np.array([[a for _, a in r["curve"]] for r in seeds[(m, 1)]])  # (repeats, tests)
        assert find(ax, f"{m}/mean").get_ydata() == pytest.approx(acc.mean(0))
    log = [json.loads(ln) for ln in open(out / "finetune-minimax" / "log.jsonl")]
    fig = F.finetune_curves(log, "t", F.run_batch_size(str(out / "finetune-minimax" / "log.jsonl")))
    lines = {ln.get_gid(): ln.get_xydata().tolist() for a in fig.axes for ln in a.get_lines() if ln.get_gid()}
    assert lines["diffusion"] == [[r["step"], r["diffusion"]] for r in log]
    assert lines["img_per_s"] == [[r["step"], r["steps_per_s"] * 5] for r in log]  # the tiny plan's batch 5


def test_bad_input(tree):
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "imagewoof.sh"), str(tree / "nowhere"), "--dry-run"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert "train" in res.stderr and len(res.stderr.strip().splitlines()) == 1
