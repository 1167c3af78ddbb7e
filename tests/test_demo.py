"""The README's main command, as a smoke run: every step of scripts/demo.sh on the real digits, tiny budgets."""
import json
import os
import subprocess

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = ["bash", os.path.join(ROOT, "scripts", "demo.sh"), "--out", str(out), "--quick", "--ipc", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # the real digits, split 70/30 per class, at 8 px
    n_train = sum(len(os.listdir(out / "data" / "train" / d)) for d in os.listdir(out / "data" / "train"))
    n_test = sum(len(os.listdir(out / "data" / "test" / d)) for d in os.listdir(out / "data" / "test"))
    assert (n_train, n_test) == (1258, 539)
    for name in ("base", "minimax"):
        for k in range(10):
            assert sorted(os.listdir(out / "samples" / name / f"digit{k}")) == ["0.png", "1.png"]
    runs = [json.loads(ln) for ln in open(out / "eval" / "results.jsonl")]
    per_method = {}
    for r in runs:
        if r["kind"] == "run":
            per_method.setdefault(r["method"], set()).add(r["seed"])
    assert per_method == {m: {0, 1, 2} for m in ("random", "base", "minimax", "full")}
    table = open(out / "RESULTS.md").read()
    for label in ("Random real", "Base model", "Minimax", "Full train set"):
        assert f"| {label} |" in table
    assert Image.open(out / "demo_grid.png").size == (3 * 10 * 32 + 2 * 12, 14 + 10 * 32)
    # rerunning finds every step finished and changes nothing
    before = open(out / "eval" / "results.jsonl").read()
    again = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert again.returncode == 0 and open(out / "eval" / "results.jsonl").read() == before
