"""scripts/figures.py: the data handed to matplotlib, read back from the figures' artists, equals the records and
the published values (never pixels); the CLI's outputs and one-line errors."""
import json
import os

import numpy as np
import pytest
import yaml
from matplotlib.container import BarContainer

from scripts import figures as F
from scripts.tables import PUBLISHED
from utils.errors import run_cli
from utils.plots import find

PUB = yaml.safe_load(open(PUBLISHED))


def _run(subset, method, arch, ipc, seed, best, last, curve=None, protocol="idc", select="none"):
    return {"kind": "run", "subset": subset, "method": method, "arch": arch, "ipc": ipc, "seed": seed,
            "best": best, "last": last, "select": select, "eval_protocol": protocol, "train": f"/x/{method}",
            "curve": curve or [[1, last - 5.0], [2, best], [3, last]]}


def _write(path, recs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


def _groups(recs, tmp_path):
    _write(str(tmp_path / "r.jsonl"), recs)
    return F.latest_runs([str(tmp_path / "r.jsonl")])


def _bars(ax, label):
    return next(c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label)


def test_accuracy_vs_ipc_plots_the_records_and_the_paper(tmp_path):
    recs = [_run("imagewoof", "minimax", "resnetap10", 10, s, b, b - 1) for s, b in enumerate([38.0, 39.0, 40.0])]
    recs += [_run("imagewoof", "minimax", "resnetap10", 50, s, b, b - 3) for s, b in enumerate([55.0, 57.0])]
    recs += [_run("imagewoof", "full", "resnetap10", None, 0, 87.0, 86.0, select="full")]
    fig = F.accuracy_vs_ipc(_groups(recs, tmp_path), PUB, "imagewoof", "resnetap10")
    ax = fig.axes[0]
    best, last = find(ax, "minimax/best"), find(ax, "minimax/last")
    assert list(best.get_xdata()) == [10, 50] and best.get_ydata() == pytest.approx([39.0, 56.0])
    assert last.get_ydata() == pytest.approx([38.0, 53.0]) and last.get_linestyle() == "--"
    band = find(ax, "minimax/best_band").get_paths()[0].vertices  # mean ± population std, as the tables
    sd10 = np.std([38.0, 39.0, 40.0])
    assert band[:, 1].min() == pytest.approx(39.0 - sd10) and band[:, 1].max() == pytest.approx(56.0 + 1.0)
    paper = find(ax, "minimax/paper")  # every published ImageWoof point of Minimax at ResNetAP-10
    assert list(paper.get_xdata()) == [10, 20, 50, 70, 100]
    assert list(paper.get_ydata()) == [39.2, 45.8, 56.3, 58.3, 64.5]
    assert list(find(ax, "random/paper").get_ydata()) == [29.4, 47.2, 50.8, 59.4]  # published only
    assert find(ax, "random/best") is None
    assert find(ax, "full/best").get_ydata()[0] == 87.0


def test_a_rerun_seed_keeps_the_latest_record(tmp_path):
    recs = [_run("imagewoof", "dit", "convnet6", 10, 0, 30.0, 29.0), _run("imagewoof", "dit", "convnet6", 10, 0,
                                                                        32.0, 31.0)]
    fig = F.accuracy_vs_ipc(_groups(recs, tmp_path), PUB, "imagewoof", "convnet6")
    assert list(find(fig.axes[0], "dit/best").get_ydata()) == [32.0]


def test_ablation_bars_and_paper_markers(tmp_path):
    recs = [_run("imageidc", "mean-off", "resnetap10", 50, s, v, v) for s, v in enumerate([60.0, 61.0])]
    recs += [_run("imageidc", "minimax", "resnetap10", 50, 0, 70.0, 69.0)]  # the full method = the main run
    fig = F.ablation(_groups(recs, tmp_path), PUB, "imageidc", "resnetap10")
    ax = fig.axes[0]
    bars = _bars(ax, "L_r (mean)")
    assert [p.get_height() for p in bars.patches] == [60.5]
    seg = bars.errorbar.lines[2][0].get_segments()[0]
    assert seg[:, 1] == pytest.approx([60.0, 61.0])  # ± std 0.5
    assert [p.get_height() for p in _bars(ax, "L_r + L_d (minimax)").patches] == [70.0]
    assert list(find(ax, "mean-off/paper").get_ydata()) == [60.2]
    assert F.ablation(_groups(recs[2:], tmp_path), PUB, "imageidc", "resnetap10") is None  # no ablation record: no figure


def test_sweeps_put_the_main_run_at_the_default(tmp_path):
    recs = [_run("imagewoof", f"lambda_r-{v}", "resnetap10", 10, 0, b, b) for v, b in (("0.0005", 35.0),
                                                                                        ("0.008", 37.0))]
    recs += [_run("imagewoof", "nm-16", "resnetap10", 10, s, b, b) for s, b in enumerate([30.0, 32.0])]
    recs += [_run("imagewoof", "minimax", "resnetap10", 10, 0, 39.0, 38.0)]
    fig = F.sweeps(_groups(recs, tmp_path), "imagewoof", "resnetap10")
    lam, nm = fig.axes
    line = find(lam, "lambda_r/ipc10")
    assert list(line.get_xdata()) == [0.0005, 0.002, 0.008] and list(line.get_ydata()) == [35.0, 39.0, 37.0]
    line = find(nm, "nm/ipc10")
    assert list(line.get_xdata()) == [16.0, 64.0] and list(line.get_ydata()) == [31.0, 39.0]


def test_eval_curves_runs_mean_and_band(tmp_path):
    curves = [[[1, 10.0], [2, 20.0], [3, 30.0]], [[1, 14.0], [2, 22.0], [3, 26.0]]]
    recs = [_run("imagewoof", "minimax", "convnet6", 10, s, max(a for _, a in c), c[-1][1], curve=c)
            for s, c in enumerate(curves)]
    fig = F.eval_curves(_groups(recs, tmp_path), "imagewoof", "convnet6", 10)
    ax = fig.axes[0]
    for s, c in enumerate(curves):
        assert find(ax, f"minimax/seed{s}").get_xydata().tolist() == c
    assert find(ax, "minimax/mean").get_ydata() == pytest.approx([12.0, 21.0, 28.0])
    band = find(ax, "minimax/band").get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(10.0) and band.max() == pytest.approx(30.0)


def test_finetune_curves_from_a_log(tmp_path):
    recs = [{"step": s, "diffusion": 1.0 / s, "loss_r": 0.01 * s, "loss_d": 0.02, "lr": 1e-3, "steps_per_s": 2.0 + s,
             "mem_fill": min(1.0, s / 4), "cos_real_min": 0.1 * s if s > 1 else None, "cos_pred_max": 0.9}
            for s in (1, 2, 3, 4)]
    fig = F.finetune_curves(recs, "t", batch_size=8)
    got = {a.get_gid(): a.get_xydata().tolist() for ax in fig.axes for a in ax.get_lines() if a.get_gid()}
    assert got["diffusion"] == [[s, 1.0 / s] for s in (1, 2, 3, 4)]
    assert got["loss_r"] == [[s, 0.01 * s] for s in (1, 2, 3, 4)]
    assert got["mem_fill"] == [[1, 0.25], [2, 0.5], [3, 0.75], [4, 1.0]]
    assert got["cos_real_min"] == [[s, 0.1 * s] for s in (2, 3, 4)]  # None (memory still empty) left out
    assert got["img_per_s"] == [[s, 8 * (2.0 + s)] for s in (1, 2, 3, 4)]  # steps/s x the global batch
    assert got["lr"] == [[s, 1e-3] for s in (1, 2, 3, 4)]


def test_table4_ours_beside_the_published(tmp_path):
    recs = [_run("imagenet1k", "minimax", "resnet18", 10, s, v, v, protocol="rded")
            for s, v in enumerate([44.0, 45.0])]
    fig = F.table4(_groups(recs, tmp_path), PUB, "resnet18")
    ax = fig.axes[0]
    assert [p.get_height() for p in _bars(ax, "Minimax").patches] == [44.5]
    assert [p.get_height() for p in _bars(ax, "Minimax (paper)").patches] == [44.3, 58.6]
    assert [p.get_height() for p in _bars(ax, "SRe2L (paper)").patches] == [21.3, 46.8]
    assert [p.get_height() for p in _bars(ax, "RDED (paper)").patches] == [42.0, 56.5]
    assert [p.get_height() for p in _bars(ax, "DiT (paper)").patches] == [39.6, 52.9]


def test_cli_writes_every_kind_and_refuses_bad_input(tmp_path, capsys):
    res = tmp_path / "res"
    recs = [_run("imagewoof", "minimax", "resnetap10", 10, 0, 39.0, 38.0),
            _run("imagewoof", "off-off", "resnetap10", 10, 0, 35.0, 34.0),
            _run("imagenet1k", "minimax", "resnet18", 10, 0, 44.0, 43.0, protocol="rded")]
    _write(str(res / "eval" / "results.jsonl"), recs)
    _write(str(res / "finetune-minimax" / "log.jsonl"), [{"step": 1, "diffusion": 0.5, "steps_per_s": 3.0}])
    _write(str(res / "finetune-lambda_r-0.0005" / "log.jsonl"), [{"step": 1, "diffusion": 0.5}])
    (res / "samples" / "minimax").mkdir(parents=True)
    (res / "samples" / "minimax" / "manifest.json").write_text("{}")
    (res / "samples" / "minimax" / "x.jsonl").write_text("not json\n")  # pruned: never read
    run_cli(F.main, [str(res), "--formats", "png,pdf"])  # the command line in-process (the plan runs it as one)
    names = sorted(os.listdir(res / "figures"))
    for stem in ("accuracy_vs_ipc-imagewoof-resnetap10", "ablation-imagewoof-resnetap10", "eval_curves-imagewoof-resnetap10-ipc10",
                 "finetune-finetune-minimax", "finetune-finetune-lambda_r-0.0005", "table4-resnet18",
                 "accuracy_vs_ipc-imagenet1k-resnet18"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    assert all(os.path.getsize(res / "figures" / n) < 200_000 for n in names if n.endswith(".png"))
    for argv, msg in (([str(tmp_path / "none")], "error: results path not found"),
                      ([str(res), "--formats", "gif"], "error: --formats 'gif'"),
                      ([str(tmp_path / "res" / "samples")], "error: no *.jsonl records")):
        with pytest.raises(SystemExit) as e:
            run_cli(F.main, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(msg) and len(err.strip().splitlines()) == 1, err
