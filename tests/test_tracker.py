"""--tracker none|tensorboard|wandb in the three tools: a run with a tracker writes the same checkpoints, records and
images as one without; TensorBoard event files and an offline W&B run read back equal to log.jsonl and the records;
a missing package is one line. sample.py's class pages and evaluate.py's confusion matrix are tested here too.
The TensorBoard and W&B tests skip when the optional package is not installed."""
import glob
import importlib.util
import json
import os
import struct

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import engines.train as train_tool
from engines.evaluate.run import run_evaluation
from engines.train.run import train
from tests.test_evaluate_cli import TINY as EVAL, make_folder
from tests.test_sample import WOOF, _full_ckpt
from tests.test_train import TINY, assert_same_state, make_base, make_images
from tests.helpers import make_tiny_dit
from utils import tracker as tracker_mod
from utils.errors import UserError
from utils.plots import confusion_figure, find

HAVE_TB = importlib.util.find_spec("tensorboard") is not None
needs_tb = pytest.mark.skipif(not HAVE_TB, reason="tensorboard is optional (pip install tensorboard)")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb is optional (pip install wandb)")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _log(path):
    return [json.loads(ln) for ln in open(path)]


#### train_minimax.py ##########################################################################################

@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """A tiny fine-tuning (2 classes x 4 images, 4 steps, a log record per step) without a tracker."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trk")
    cfg = dict(TINY, data_dir=make_images(str(root / "data"), WOOF), base=make_base(str(root / "base.pt")),
               subset="custom", cache_dir=str(root / "cache"), epochs=2)
    train(dict(cfg, run_dir=str(root / "plain")))
    return root, cfg


def _same_run(root, name):
    a, b = (torch.load(root / n / "checkpoint.pt", map_location="cpu", weights_only=True) for n in ("plain", name))
    assert_same_state(a, b)
    la, lb = _log(root / "plain" / "log.jsonl"), _log(root / name / "log.jsonl")
    strip = (lambda recs: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in recs])  # wall clock
    assert strip(la) == strip(lb) and len(la) == 4
    return lb


@needs_tb
def test_train_tensorboard_changes_nothing_and_reads_back(fine_tune):
    root, cfg = fine_tune
    train(dict(cfg, run_dir=str(root / "tb"), tracker="tensorboard"))
    log = _same_run(root, "tb")
    acc = _events(root / "tb" / "tracker")
    for key in ("diffusion", "loss_r", "loss_d", "lr", "steps_per_s", "mem_fill", "cos_pred_max"):
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        want = [(r["step"], r[key]) for r in log if r.get(key) is not None]
        assert [s for s, _ in got] == [s for s, _ in want] and len(want) >= 2
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # float32 in event files
    assert "config/text_summary" in acc.Tags()["tensors"]


def _wandb_records(path):
    """The records of an offline W&B run file (LevelDB log format: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, buf, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and n == 0):  # block trailer / padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST fragment
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


@needs_wandb
def test_train_wandb_offline_changes_nothing_and_reads_back(fine_tune, monkeypatch):
    root, cfg = fine_tune
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(dict(cfg, run_dir=str(root / "wb"), tracker="wandb"))
    log = _same_run(root, "wb")
    (path,) = glob.glob(str(root / "wb" / "tracker" / "wandb" / "offline-run-*" / "run-*.wandb"))
    recs = _wandb_records(path)
    hist = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in recs if r.WhichOneof("record_type") == "history"]
    hist = [h for h in hist if "train/step" in h]
    assert [h["train/step"] for h in hist] == [r["step"] for r in log]
    for key in ("diffusion", "loss_r", "loss_d", "lr", "mem_fill"):
        assert [h.get(f"train/{key}") for h in hist] == [r[key] for r in log]  # JSON: exact doubles
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    for r in recs:  # later config records
        if r.WhichOneof("record_type") == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
    resolved = yaml.safe_load(open(root / "wb" / "config.yaml"))  # the resolved config, every key
    assert {k: config[k] for k in resolved} == resolved and resolved["tracker"] == "wandb"
    assert run.project == "minimax-diffusion"


def test_missing_package_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracker_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "tensorboard") else real(name, *a))
    for kind in ("wandb", "tensorboard"):
        with pytest.raises(UserError, match=f"--tracker {kind} needs the package '{kind}'.*pip install {kind}"):
            train_tool.main(["--data_dir", str(tmp_path), "--run_dir", str(tmp_path / "run"), "--cache_dir",
                             str(tmp_path / "cache"), "--device", "cpu", "--tracker", kind])
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="tracker must be one of none, tensorboard, wandb"):
        tracker_mod.check_tracker("mlflow")


#### evaluate.py: tracker and confusion matrix ################################################################

def test_evaluate_tracker_and_confusion_change_no_number(tmp_path):
    """The confusion matrix always (core); the TensorBoard half where tensorboard is installed."""
    train_dir, val_dir = make_folder(tmp_path / "train", 6, 0), make_folder(tmp_path / "val", 3, 1)
    kw = dict(arch="convnet6", ipc=4, repeat=2, method="m", **EVAL)
    plain = run_evaluation(train_dir, val_dir, results=str(tmp_path / "a"), **kw)["convnet6"]["runs"]
    traced = run_evaluation(train_dir, val_dir, results=str(tmp_path / "b"), tracker="tensorboard" if HAVE_TB
                            else "none", confusion=True, **kw)["convnet6"]["runs"]
    same = ("best", "last", "best_epoch", "curve", "loss", "key", "seed", "fingerprint")
    assert [{k: r[k] for k in same} for r in plain] == [{k: r[k] for k in same} for r in traced]
    acc = _events(tmp_path / "b" / "tracker") if HAVE_TB else None
    for r in traced:
        m = np.array(r["confusion"])  # [true][predicted] over the 9 val images, at the last epoch
        assert m.shape == (3, 3) and m.sum() == 9 and m.sum(1).tolist() == [3, 3, 3]
        assert 100.0 * np.trace(m) / 9 == pytest.approx(r["last"])  # the record's last accuracy, recounted
        png = tmp_path / "b" / "confusion" / f"train-none-ipc4-convnet6-seed{r['seed']}.png"
        assert png.is_file()
        if acc is not None:
            got = [(e.step, e.value) for e in acc.Scalars(f"eval/m/convnet6/ipc4/seed{r['seed']}/top1")]
            assert [s for s, _ in got] == [e for e, _ in r["curve"]]
            assert [v for _, v in got] == pytest.approx([a for _, a in r["curve"]], rel=1e-6)
    if acc is not None:
        images = acc.Tags()["images"]
        assert {"eval/curves/train-none-ipc4-convnet6", "eval/confusion/train-none-ipc4-convnet6-seed1"} <= set(images)
    fig = confusion_figure(traced[0]["confusion"], ["cat", "dog", "eel"], "t")
    assert np.array_equal(find(fig.axes[0], "confusion").get_array(), np.array(traced[0]["confusion"]))


#### sample.py: class pages and tracker ########################################################################

def _files(out):
    return {os.path.relpath(os.path.join(d, n), out): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(out) for n in names if n != "manifest.json"}


def test_sample_class_pages_and_tracker_change_no_pixel(tmp_path):
    """Class pages always (core); the TensorBoard half where tensorboard is installed."""
    from sample import main
    ckpt = _full_ckpt(make_tiny_dit(input_size=8, in_channels=3, num_classes=10), tmp_path / "w.pt", WOOF,
                      "imagewoof")
    (tmp_path / "c.txt").write_text("\n".join(WOOF[:2]) + "\n")
    common = ["--ckpt", str(ckpt), "--model", "none", "--vae", "pixel", "--image_size", "8", "--num_steps", "2",
              "--device", "cpu", "--subset", "custom", "--class_file", str(tmp_path / "c.txt"), "--ipc", "5",
              "--progress", "false", "--grid", "3"]
    main([*common, "--out", str(tmp_path / "a")])
    main([*common, "--out", str(tmp_path / "b"), "--class_grids", "true", "--tracker", "tensorboard" if HAVE_TB
          else "none"])
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and len(_files(tmp_path / "a")) == 10
    assert open(tmp_path / "a_grid.png", "rb").read() == open(tmp_path / "b_grid.png", "rb").read()
    assert not (tmp_path / "a_grids").exists() and sorted(os.listdir(tmp_path / "b_grids")) == \
        [f"{w}.png" for w in WOOF[:2]]
    for w in WOOF[:2]:
        page = np.asarray(Image.open(tmp_path / "b_grids" / f"{w}.png"))
        assert page.shape == (2 * 48, 3 * 48, 3)  # 5 images: 3 columns, 2 rows; 8 px tiles enlarged 6x
        for i in range(5):
            tile = page[(i // 3) * 48:(i // 3 + 1) * 48, (i % 3) * 48:(i % 3 + 1) * 48]
            img = np.asarray(Image.open(tmp_path / "b" / w / f"{i}.png").convert("RGB"))
            assert np.array_equal(tile[::6, ::6], img) and np.array_equal(tile, img.repeat(6, 0).repeat(6, 1))
        assert (page[48:, 96:] == 255).all()  # the sixth place is empty
    if HAVE_TB:
        acc = _events(tmp_path / "b_tracker")
        assert {"sample/grid", f"sample/class/{WOOF[0]}"} <= set(acc.Tags()["images"])
        assert [e.value for e in acc.Scalars("sample/written")] == [10.0]
