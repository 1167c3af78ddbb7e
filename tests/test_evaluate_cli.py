"""evaluate.py end to end on tiny generated folders: determinism, read-back of finished runs, both data paths,
coreset baselines with a cached feature net, MMD, and one-line CLI errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import engines.evaluate as evaluate
from engines.evaluate.run import run_evaluation
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "dog", "eel"]
TINY = dict(image_size=16, epochs=2, eval_every=1, batch_size=8, workers=0, device="cpu", log=lambda *a: None)


def make_folder(root, n, seed, size=20):
    """Class c: noisy images around colour c (so the classes are learnable), files 0.png .. n-1.png."""
    rng = np.random.RandomState(seed)
    for c, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            base = np.zeros((size, size, 3)) + 60
            base[..., c] = 200
            img = np.clip(base + rng.randn(size, size, 3) * 30, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, name, f"{i}.png"))
    return str(root)


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / "train", 6, 0), make_folder(tmp_path / "val", 3, 1), tmp_path


def _runs(path):
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "run"]


def test_deterministic_and_finished_runs_are_reused(data):
    train, val, tmp = data
    a = run_evaluation(train, val, arch="convnet6", ipc=4, repeat=2, results=str(tmp / "a"), **TINY)
    b = run_evaluation(train, val, arch="convnet6", ipc=4, repeat=2, results=str(tmp / "b"), **TINY)
    ra, rb = a["convnet6"]["runs"], b["convnet6"]["runs"]
    assert [r["curve"] for r in ra] == [r["curve"] for r in rb] and [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r["seed"] for r in ra] == [0, 1] and ra[0]["loss"] != ra[1]["loss"]
    assert ra[0]["n_train"] == 12 and ra[0]["epochs"] == 2
    s = a["convnet6"]
    assert s["best_mean"] == pytest.approx(np.mean([r["best"] for r in ra]))
    assert s["last_std"] == pytest.approx(np.std([r["last"] for r in ra]))
    # rerun with one more repeat: the two finished runs are read back, only seed 2 trains; the leftover of a killed
    # curve write goes
    leftover = tmp / "a" / "curves" / ".tmp-x.png.999999999.abcd1234"
    leftover.write_bytes(b"partial")
    logs = []
    c = run_evaluation(train, val, arch="convnet6", ipc=4, repeat=3, results=str(tmp / "a"), **dict(TINY, log=logs.append))
    assert sum("already in" in m for m in logs) == 2 and len(_runs(tmp / "a" / "results.jsonl")) == 3
    assert not leftover.exists()
    assert c["convnet6"]["runs"][0]["curve"] == ra[0]["curve"]
    rec = _runs(tmp / "a" / "results.jsonl")[0]
    assert rec["fingerprint"] and rec["info"]["torch"] and rec["config"]["ipc"] == 4
    assert os.path.isfile(tmp / "a" / "results.csv") and os.listdir(tmp / "a" / "curves")


def test_pil_path_is_deterministic_and_learns_shapes(data):
    train, val, tmp = data
    a = run_evaluation(train, val, arch="convnet6", repeat=1, data_path="pil", results=str(tmp / "p"), **TINY)
    b = run_evaluation(train, val, arch="convnet6", repeat=1, data_path="pil", results=str(tmp / "q"), **TINY)
    assert a["convnet6"]["runs"][0]["loss"] == b["convnet6"]["runs"][0]["loss"]
    assert a["convnet6"]["runs"][0]["n_train"] == 18


def test_herding_feature_net_cached_and_mmd(data):
    train, val, tmp = data
    kw = dict(TINY, feature_arch="convnet6", feature_epochs=1, results=str(tmp / "h"), repeat=1)
    out = run_evaluation(train, val, arch="convnet6", select="herding", ipc=2, **kw)
    assert out["convnet6"]["runs"][0]["n_train"] == 6
    cache = os.listdir(tmp / "h" / "feature_net")
    assert len(cache) == 1
    logs = []
    mmd = run_evaluation(train, val, arch="none", mmd_real=train, ipc=3, **dict(kw, log=logs.append))
    assert any("feature net loaded" in m for m in logs) and os.listdir(tmp / "h" / "feature_net") == cache
    assert mmd["mmd"]["mmd_linear"] > 0 and len(mmd["mmd"]["mmd_linear_per_class"]) == 3
    assert 0 < mmd["mmd"]["rep"] < 2 and -1 <= mmd["mmd"]["div"] <= 1
    # a random coreset is measured too, in the same network's features (whatever --seed), and read back on rerun
    rnd = run_evaluation(train, val, arch="convnet6", select="random", ipc=2, mmd_real=train, seed=5, **kw)
    assert rnd["convnet6"]["runs"][0]["n_train"] == 6 and os.listdir(tmp / "h" / "feature_net") == cache
    lines = open(tmp / "h" / "results.jsonl").read()
    again = run_evaluation(train, val, arch="convnet6", select="random", ipc=2, mmd_real=train, seed=5, **kw)
    assert again["mmd"] == rnd["mmd"] and open(tmp / "h" / "results.jsonl").read() == lines
    full = run_evaluation(train, val, arch="none", select="full", mmd_real=train, **kw)["mmd"]
    assert full["mmd_linear"] == pytest.approx(0, abs=1e-9) and full["rep"] == pytest.approx(0, abs=1e-9)
    with pytest.raises(UserError, match="needs mmd_real = train"):
        run_evaluation(train, val, arch="none", select="kcenter", ipc=2, mmd_real=val, **kw)


def _bad(tmp, train, val, **extra):
    args = ["--train", train, "--val", val, "--image_size", "16", "--epochs", "1", "--device", "cpu",
            "--results", str(tmp / "r")]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


def test_cli_errors_are_one_line(data):
    train, val, tmp = data
    open(os.path.join(train, "dog", "3.png"), "wb").write(b"not a png")
    proc = subprocess.run([sys.executable, "evaluate.py"] + _bad(tmp, train, val, ipc=4), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "dog/3.png" in lines[0]
    assert not os.path.exists(tmp / "r" / "results.jsonl")


def test_input_errors_before_training(data):
    train, val, tmp = data
    with pytest.raises(UserError, match="ipc 7"):
        evaluate.main(_bad(tmp, train, val, ipc=7))
    os.makedirs(os.path.join(val, "fox"))
    with pytest.raises(UserError, match="fox"):
        evaluate.main(_bad(tmp, train, val))
    os.rmdir(os.path.join(val, "fox"))
    os.makedirs(os.path.join(train, "fox"))
    with pytest.raises(UserError, match="fox"):  # empty train class, then missing in val
        evaluate.main(_bad(tmp, train, val))
    with pytest.raises(UserError, match="arch must be one of"):
        evaluate.main(_bad(tmp, train, val, arch="convnet6,vgg"))
    with pytest.raises(UserError, match="needs --ipc"):
        evaluate.main(_bad(tmp, train, val, select="herding"))
    with pytest.raises(UserError, match="missing"):
        evaluate.main(_bad(tmp, train, val, subset="imagewoof"))
    assert not os.path.exists(tmp / "r" / "results.jsonl")
