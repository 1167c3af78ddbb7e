"""The RDED soft-label protocol (SPEC §9) on tiny data (10 classes, 32 px, random teacher): its rules against hand
computations, class mapping of both folder layouts, one-line input errors, and exact resume after kill -9."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import engines.evaluate as evaluate
from data.eval_augment import cutmix, shuffle_patches
from data.eval_data import class_files, flatten
from data.subsets import get_subset, imagenet_wnids
from models.classifiers import build_classifier
from engines.evaluate import rded
from engines.evaluate.loop import best_and_last, eval_epochs
from engines.evaluate.run import _subset
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WNIDS = get_subset("imagenette").wnids  # 10 ImageNet classes


#### rules ###################################################################################################

def test_quarter_cosine_schedule_at_epochs_0_150_299():
    assert rded.lr_factor(0, 300) == 1.0
    assert rded.lr_factor(150, 300) == pytest.approx(0.5 * (1 + math.sqrt(0.5)), abs=1e-15)  # cos(pi/4)
    assert rded.lr_factor(299, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi * 299 / 600)), abs=1e-15)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(rded.param_groups(model, 0.01), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: rded.lr_factor(e, 300))
    lrs = []
    for _ in range(300):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == [1e-3, 1e-3]
    assert lrs[150][0] == pytest.approx(1e-3 * 0.8535533905932737, rel=1e-12)
    assert lrs[299][0] == pytest.approx(1e-3 * 0.5 * (1 + math.sin(math.pi / 600)), rel=1e-12)
    assert rded.batch_size_for(10) == 100 and rded.batch_size_for(50) == 200 and rded.best_after_for(300) == 240


def test_weight_decay_only_on_weights_with_ndim_above_1():
    model = build_classifier("resnet18_bn", 10)
    decay, rest = rded.param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    by_id = {id(p): n for n, p in model.named_parameters()}
    no_decay = {by_id[id(p)] for p in rest["params"]}
    assert no_decay == {n for n, p in model.named_parameters() if n.endswith(".bias") or p.ndim == 1}
    assert "fc.bias" in no_decay and "bn1.weight" in no_decay and "layer1.0.bn2.bias" in no_decay
    assert {by_id[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if p.ndim > 1}
    # one AdamW step with zero gradients: only the decayed weights move (by lr * wd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(rded.param_groups(model, 0.01), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expect = before[n] * (1 - 1e-3 * 0.01) if n not in no_decay else before[n]
        assert torch.allclose(p, expect, rtol=0, atol=1e-9), n


def test_kl_batchmean_equals_hand_computation():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    t = torch.tensor([[1.0, 0.0, -1.0], [4.0, 2.0, 0.0]])
    T, total = 20.0, 0.0
    for i in range(2):
        ps = [math.exp(v / T) for v in s[i].tolist()]
        pt = [math.exp(v / T) for v in t[i].tolist()]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    assert rded.soft_label_loss(s.double(), t.double(), T).item() == pytest.approx(total / 2, rel=1e-12)
    assert rded.soft_label_loss(s, s, T).item() == pytest.approx(0.0, abs=1e-7)


def test_shuffle_patches_factor_2_per_image_on_fixed_seed():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(64, 1, 4, 4).contiguous()
    a = shuffle_patches(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a, shuffle_patches(x, 2, torch.Generator().manual_seed(0)))
    img = x[0, 0]
    swap_c, swap_r = torch.cat([img[:, 2:], img[:, :2]], 1), torch.cat([img[2:], img[:2]], 0)
    variants = [img, swap_c, swap_r, torch.cat([swap_c[2:], swap_c[:2]], 0)]  # columns first, then rows
    seen = [next(k for k, v in enumerate(variants) if torch.equal(o[0], v)) for o in a]
    assert sorted(set(seen)) == [0, 1, 2, 3]  # each image draws its own swaps
    assert abs(sum(k in (1, 3) for k in seen) / 64 - 0.5) < 0.2
    assert torch.equal(shuffle_patches(x, 1, None), x)
    # odd sizes: the last strip takes the remainder, the pixels are a permutation of each row
    y = shuffle_patches(torch.arange(7.0).view(1, 1, 1, 7).expand(8, 1, 1, 7), 3, torch.Generator().manual_seed(1),
                        remainder="keep")
    assert all(sorted(r.flatten().tolist()) == list(range(7)) for r in y)


def test_cutmix_one_box_and_one_permutation_per_batch():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()  # image i is filled with i
    y = torch.arange(8)
    out, _, yb, ratio = cutmix(x, y, torch.Generator().manual_seed(3))
    assert sorted(yb.tolist()) == list(range(8))  # one permutation of the batch
    moved = yb != y
    pasted = (out != x).any(1)  # (B, H, W)
    region = pasted[moved][0]
    assert moved.any() and region.any()
    assert torch.equal(region, region.any(1)[:, None] & region.any(0)[None, :])  # a rectangle
    assert region.float().mean().item() == pytest.approx(1 - ratio)  # the pasted area
    for i in range(8):  # the same box in every image, filled from its partner
        assert torch.equal(pasted[i], region if moved[i] else torch.zeros_like(region))
        assert (out[i][:, region] == yb[i]).all() and (out[i][:, ~region] == i).all()


def test_best_of_late_tests_and_last():
    assert eval_epochs(300, 10, 240) == [250, 260, 270, 280, 290, 300]
    assert eval_epochs(2000, 20) == list(range(20, 2001, 20))
    curve = [[250, 40.0], [260, 45.5], [270, 44.0], [300, 42.0]]
    assert best_and_last(curve, 240) == (45.5, 260, 42.0)
    assert best_and_last([[100, 60.0]] + curve, 240) == (45.5, 260, 42.0)  # an early peak does not count
    assert best_and_last([[100, 60.0]] + curve, 0) == (60.0, 100, 42.0)    # IDC: the whole run


#### data layouts and teacher ################################################################################

def make_folder(root, n, seed, numbered=False, size=36):
    rng = np.random.RandomState(seed)
    pos = {w: i for i, w in enumerate(imagenet_wnids())}
    for c, w in enumerate(WNIDS):
        d = os.path.join(root, f"{pos[w]:05d}" if numbered else w)
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            base = np.zeros((size, size, 3)) + 25 * c
            img = np.clip(base + rng.randn(size, size, 3) * 30, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{i}.png"))
    return str(root)


def test_numbered_and_wnid_folders_give_identical_labels(tmp_path):
    a = make_folder(tmp_path / "wnid", 2, 0)
    b = make_folder(tmp_path / "num", 2, 0, numbered=True)
    for subset in ("imagenette", "custom"):
        sa, sb = _subset(subset, a), _subset(subset, b)
        assert sa.wnids == sb.wnids and sorted(sa.wnids) == sorted(WNIDS)
        pa, la = flatten(class_files(a, sa.wnids, "train"), sa.wnids)
        pb, lb = flatten(class_files(b, sb.wnids, "train"), sb.wnids)
        assert la == lb and [os.path.basename(p) for p in pa] == [os.path.basename(p) for p in pb]
        assert [sa.wnids[j] for j in la] == [os.path.basename(os.path.dirname(p)) for p in pa]
    os.makedirs(tmp_path / "bad" / "01234")
    with pytest.raises(UserError, match="01234"):
        _subset("custom", str(tmp_path / "bad"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rded")
    train, val = make_folder(tmp / "train", 3, 0), make_folder(tmp / "val", 2, 1)
    torch.manual_seed(0)
    teacher = str(tmp / "teacher.pt")
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), teacher)
    return train, val, teacher, tmp


def _args(train, val, teacher_file, results, **extra):
    args = ["--protocol", "rded", "--train", train, "--val", val, "--teacher_weights", teacher_file,
            "--image_size", "32", "--ipc", "2", "--epochs", "4", "--eval_every", "1", "--best_after", "1", "--batch_size", "5",
            "--repeat", "1", "--device", "cpu", "--workers", "0", "--results", str(results)]
    for k, v in extra.items():
        args = [a for i, a in enumerate(args) if f"--{k}" not in args[max(0, i - 1):i + 1]]  # later keys replace
        args += [f"--{k}", str(v)]
    return args


def _cli(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "evaluate.py"] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def _records(path):
    import json
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "run"]


@pytest.mark.parametrize("protocol", ["rded", "idc"])
def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tiny, protocol, capsys):
    """A real SIGKILL right after the state of epoch 2 is written; the rerun continues from it and ends with the
    same curve, losses and final weights, bit for bit, as a run that was never interrupted."""
    train, val, teacher, tmp = tiny
    # a small student keeps the optimiser steps and state files cheap (the loop and state are the same for any net)
    extra = {"keep_weights": "true", "arch": "convnet6", "width": 8, "depth": 2, "ckpt_every": 2}
    if protocol == "idc":
        extra.update(protocol="idc", image_size=16)
    evaluate.main(_args(train, val, teacher, tmp / f"{protocol}-full", **extra))  # in-process: one thread too
    killed = _cli(_args(train, val, teacher, tmp / f"{protocol}-kill", debug_kill_epoch=2, **extra))
    assert killed.returncode == -9
    assert not os.path.exists(tmp / f"{protocol}-kill" / "results.jsonl")
    again = _cli(_args(train, val, teacher, tmp / f"{protocol}-kill", **extra))
    assert again.returncode == 0 and "resumed at epoch 2/4" in again.stdout, again.stderr[-2000:]
    a, b = _records(tmp / f"{protocol}-full" / "results.jsonl"), _records(tmp / f"{protocol}-kill" / "results.jsonl")
    assert len(a) == len(b) == 1 and a[0]["key"] == b[0]["key"] and b[0]["resumed_from"] == 2
    assert a[0]["curve"] == b[0]["curve"] and a[0]["loss"] == b[0]["loss"] and a[0]["best"] == b[0]["best"]
    if protocol == "rded":
        assert [e for e, _ in a[0]["curve"]] == [2, 3, 4] and a[0]["eval_protocol"] == "rded"
    sa = torch.load(tmp / f"{protocol}-full" / "state" / f"{a[0]['key']}.pt", weights_only=True)
    sb = torch.load(tmp / f"{protocol}-kill" / "state" / f"{a[0]['key']}.pt", weights_only=True)
    assert sa["epoch"] == sb["epoch"] == 4
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    # a finished run is read back, not redone
    capsys.readouterr()
    evaluate.main(_args(train, val, teacher, tmp / f"{protocol}-kill", **extra))
    assert "already in" in capsys.readouterr().out and len(_records(tmp / f"{protocol}-kill" / "results.jsonl")) == 1


#### bad inputs: one line each, nothing written ##############################################################

def test_bad_inputs_one_line_nothing_written(tiny, tmp_path, monkeypatch):
    train, val, teacher, _ = tiny
    out = tmp_path / "r"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    args = [a for a in _args(train, val, teacher, out) if a not in ("--teacher_weights", teacher)]
    with pytest.raises(UserError, match="not in torchvision's cache.*weights='IMAGENET1K_V1'"):
        evaluate.main(args)
    five = str(tmp_path / "five.pt")
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), five)
    with pytest.raises(UserError, match="5 classes but the data have 10"):
        evaluate.main(_args(train, val, five, out))
    with pytest.raises(UserError, match="not found"):
        evaluate.main(_args(train, val, str(tmp_path / "nope.pt"), out))
    # the ImageNet weights in the cache: trained at 224 px, so a 32 px run is refused; 1000 classes need the option
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save(torchvision.models.resnet18().state_dict(), rded.cached_weights_path("resnet18")[0])
    with pytest.raises(UserError, match="trained at 224 px but image_size is 32"):
        evaluate.main(args)
    big = str(tmp_path / "big.pt")
    os.link(rded.cached_weights_path("resnet18")[0], big)
    with pytest.raises(UserError, match="--teacher_subset true"):
        evaluate.main(_args(train, val, big, out))
    with pytest.raises(UserError, match="ipc 4 is larger"):
        evaluate.main(_args(train, val, teacher, out, ipc=4))
    other = tmp_path / "other"
    for name in ("cat", "dog"):
        os.makedirs(other / name)
        Image.new("RGB", (8, 8)).save(other / name / "0.png")
    with pytest.raises(UserError, match="not ImageNet-1K wnids"):
        evaluate.main(_args(str(other), str(other), big, out, ipc=1, teacher_subset="true"))
    with pytest.raises(UserError, match="convnet depth"):
        evaluate.main(_args(train, val, teacher, out, arch="convnet6", depth=6))
    small = str(tmp_path / "squeeze.pt")  # a teacher that pools a 16 px input to nothing
    torch.save(torchvision.models.squeezenet1_1(num_classes=10).state_dict(), small)
    with pytest.raises(UserError, match="teacher cannot take 16 px inputs"):
        evaluate.main(_args(train, val, small, out, teacher="squeezenet1_1", arch="convnet6", image_size=16))
    assert not os.path.exists(out)  # (evaluate.py turns each UserError into one line and exit 2: run_cli)


def test_teacher_subset_restricts_logits_in_subset_order():
    idx = rded.teacher_class_index(1000, 3, [5, 0, 999], True, "resnet18")
    assert idx == [5, 0, 999]
    assert rded.teacher_class_index(10, 10, [None] * 10, False, "resnet18") is None


def test_val_cache_is_decoded_once_and_keyed_by_size(tmp_path):
    from data.eval_data import decode_all, decode_cached
    paths, _ = flatten(class_files(make_folder(tmp_path / "v", 1, 0), WNIDS, "val"), WNIDS)
    logs = []
    a = decode_cached(paths, 16, 18, str(tmp_path / "c"), 0, logs.append)
    b = decode_cached(paths, 16, 18, str(tmp_path / "c"), 0, logs.append)
    assert len(logs) == 1 and torch.equal(a, b) and torch.equal(a, decode_all(paths, 16, 0, 18))
    decode_cached(paths, 16, 16, str(tmp_path / "c"), 0, logs.append)  # another resize: another array
    assert len(logs) == 2 and len(os.listdir(tmp_path / "c")) == 2


def test_dataloader_path_is_deterministic_and_tests_only_late_epochs(tiny):
    """The per-sample PIL path of the protocol (the benchmark's reference arm) runs, repeats itself exactly, and
    tests only after best_after (plus the last epoch)."""
    from engines.evaluate.run import run_evaluation
    train, val, teacher, tmp = tiny
    kw = dict(protocol="rded", teacher_weights=teacher, arch="convnet6", width=8, depth=2, image_size=16, ipc=2,
              epochs=3, eval_every=1, best_after=1, batch_size=5, repeat=1, device="cpu", workers=0,
              data_path="pil", val_cache="none", log=lambda *a: None)
    a = run_evaluation(train, val, results=str(tmp / "pil-a"), **kw)["convnet6"]["runs"][0]
    b = run_evaluation(train, val, results=str(tmp / "pil-b"), **kw)["convnet6"]["runs"][0]
    assert a["loss"] == b["loss"] and a["curve"] == b["curve"] and [e for e, _ in a["curve"]] == [2, 3]
    assert a["protocol"]["factor"] == 2 and a["protocol"]["crop_scale"] == [0.5, 1.0]
    assert a["protocol"]["teacher"]["classes"] == 10 and a["n_train"] == 20
