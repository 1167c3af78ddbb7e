"""Evaluation protocol pieces: epochs/LR rules, CutMix area, crops, preprocessing parity, ordering, alignment."""
import math
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from data.eval_augment import (PilTestSet, color_jitter, cutmix, cutmix_box, cutmix_loss, gpu_test_batch,
                               gpu_train_batch, sample_crops)
from data.eval_data import class_files, decode_all, flatten, numeric_order, take_first
from data.eval_select import feature_mmd, herding, kcenter
from data.subsets import get_subset
from engines.evaluate.idc import batch_size_for, epochs_for, milestones, optim_defaults
from utils.errors import UserError


#### protocol rules ##########################################################################################

def test_epochs_table():
    # the authors' ipc_epoch: IPC 1 -> 3000 epochs
    assert [epochs_for(i, 10) for i in (1, 10, 20, 50, 70, 100)] == [3000, 2000, 1500, 1500, 1000, 1000]
    # exactly 100 classes: x2/3 rounded down to a multiple of 100 (IPC 1: 2000); 1000 classes keep the table
    assert [epochs_for(i, 100) for i in (1, 10, 20, 50, 100)] == [2000, 1300, 1000, 1000, 600]
    assert [epochs_for(i, 1000) for i in (1, 10, 50)] == [3000, 2000, 1500]
    assert [epochs_for(10, c) for c in (99, 101)] == [2000, 2000]
    assert optim_defaults(10) == (0.01, 5e-4) and optim_defaults(100) == (0.01, 5e-4)
    assert optim_defaults(1000) == (0.1, 1e-4)
    # batch 64, 128 above 100 classes (the authors' max(128, batch_size))
    assert [batch_size_for(c) for c in (10, 100, 1000)] == [64, 64, 128]


@pytest.mark.parametrize("epochs", [1000, 1500, 2000, 6])
def test_lr_milestones(epochs):
    m1, m2 = milestones(epochs)
    assert (m1, m2) == (2 * epochs // 3, 5 * epochs // 6)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(epochs), gamma=0.2)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[m1 - 1] == pytest.approx(0.01) and lrs[m1] == pytest.approx(0.002)
    assert lrs[m2 - 1] == pytest.approx(0.002) and lrs[m2] == pytest.approx(0.0004)


#### CutMix ##################################################################################################

def test_cutmix_ratio_is_pasted_area():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 20, 28).clone()
        y = torch.arange(8)
        xm, ya, yb, ratio = cutmix(x, y, gen)
        changed = (xm != x).float().mean().item()  # fraction of each image replaced by its partner
        moved = (yb != ya).float()
        pasted = 1.0 - ratio
        assert changed == pytest.approx(pasted * moved.mean().item(), abs=1e-6)
        assert torch.equal(xm[:, :, 0:0], x[:, :, 0:0]) and torch.equal(ya, y)
    # the box is clipped at the border: a box centred on a corner covers a quarter of its nominal area
    y1, y2, x1, x2 = cutmix_box(20, 20, 0.0, 0, 0)
    assert (y1, y2, x1, x2) == (0, 10, 0, 10)


def test_cutmix_loss_mixes_by_ratio():
    logits = torch.randn(4, 5)
    y, yb = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 3, 2, 1])
    ce = torch.nn.functional.cross_entropy
    assert cutmix_loss(logits, y, yb, 0.3).item() == pytest.approx(0.3 * ce(logits, y).item() + 0.7 * ce(logits, yb).item())


#### augmentation ############################################################################################

def test_crop_statistics_match_torchvision():
    n = 20000
    top, left, h, w = sample_crops(n, 224, 224, torch.Generator().manual_seed(0))
    assert ((h <= 224) & (w <= 224) & (top >= 0) & (left >= 0) & (top + h <= 224) & (left + w <= 224)).all()
    ours_area, ours_ratio = (h * w / 224 ** 2).double(), torch.log(w / h).double()
    torch.manual_seed(0)
    img = Image.new("RGB", (224, 224))
    ref = [T.RandomResizedCrop.get_params(img, (0.5, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]
    ref_area = torch.tensor([r[2] * r[3] / 224 ** 2 for r in ref], dtype=torch.float64)
    ref_ratio = torch.tensor([math.log(r[3] / r[2]) for r in ref], dtype=torch.float64)
    for a, b in ((ours_area, ref_area), (ours_ratio, ref_ratio)):
        assert abs(a.mean() - b.mean()) < 0.006 and abs(a.std() - b.std()) < 0.006
        qs = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        assert (torch.quantile(a, qs) - torch.quantile(b, qs)).abs().max() < 0.02


def test_gpu_batch_identity_crop_is_exact():
    x = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    from data.eval_augment import crop_resize
    full = torch.full((3,), 12)
    out = crop_resize(x.float(), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), full, full, 12)
    assert torch.allclose(out, x.float(), atol=1e-4)
    y = gpu_train_batch(x, 8, torch.Generator().manual_seed(1))
    assert y.shape == (3, 3, 8, 8) and torch.isfinite(y).all()


def test_color_jitter_zero_strength_is_identity_and_order_random():
    x = torch.rand(64, 3, 4, 4)
    assert torch.allclose(color_jitter(x, 0.0, torch.Generator().manual_seed(0)), x)
    a = color_jitter(x, 0.4, torch.Generator().manual_seed(0))
    b = color_jitter(x, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.allclose(a, x)


def test_test_preprocessing_identical_in_both_paths(tmp_path):
    rng = np.random.RandomState(0)
    paths = []
    for i, (w, h) in enumerate([(40, 30), (30, 41), (24, 24), (17, 50)]):
        p = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    dev = gpu_test_batch(decode_all(paths, 24))  # (4, 3, 24, 24)
    pil = torch.stack([PilTestSet(paths, [0] * 4, 24)[i][0] for i in range(4)])
    assert torch.allclose(dev, pil, atol=1e-5)


#### file order, IPC and class alignment #####################################################################

def test_numeric_order_and_ipc(tmp_path):
    names = [f"{i}.png" for i in range(12)]
    assert numeric_order(names)[:3] == ["0.png", "1.png", "2.png"]
    assert numeric_order(["b.png", "a.png", "10.png"]) == ["10.png", "a.png", "b.png"]
    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        for n in names:
            Image.new("RGB", (4, 4)).save(tmp_path / c / n)
    files = take_first(class_files(str(tmp_path), ["x", "y"], "train"), 3, str(tmp_path))
    assert [os.path.basename(p) for p in files["x"]] == ["0.png", "1.png", "2.png"]
    with pytest.raises(UserError, match="ipc 13"):
        take_first(class_files(str(tmp_path), ["x", "y"], "train"), 13, str(tmp_path))


def test_alignment_by_wnid_not_listing_order(tmp_path):
    sub = get_subset("imagewoof")
    train, val = tmp_path / "train", tmp_path / "val"
    # the train dir also holds other ImageNet classes that sort before/among the subset's (like ImageNet train)
    for root, wnids in ((train, sub.wnids + ["n00000001", "n99999999"]), (val, list(reversed(sub.wnids)))):
        for w in wnids:
            (root / w).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(root / w / "0.png")
    for root in (train, val):
        paths, labels = flatten(class_files(str(root), sub.wnids, "x"), sub.wnids)
        assert [sub.wnids[j] for j in labels] == [os.path.basename(os.path.dirname(p)) for p in paths]
    (val / sub.wnids[3] / "0.png").unlink()
    (val / sub.wnids[3]).rmdir()
    with pytest.raises(UserError, match=sub.wnids[3]):
        class_files(str(val), sub.wnids, "val")


#### coresets and MMD ########################################################################################

def test_herding_kcenter_mmd():
    feats = torch.tensor([[0.0], [1.0], [-1.0], [10.0], [-10.0]])
    assert herding(feats, 1) == [0]                    # closest to the mean first
    assert sorted(herding(feats, 3)[1:]) == [1, 2]     # then keeps the running mean at the centre
    assert kcenter(feats, 3)[0] == 0 and sorted(kcenter(feats, 3)[1:]) == [3, 4]  # then the farthest points
    x = torch.randn(40, 8)
    lab = torch.arange(40) % 2
    same = feature_mmd(x, lab, x, lab, 2)
    assert same["mmd_linear"] == pytest.approx(0, abs=1e-9) and same["mmd_rbf"] == pytest.approx(0, abs=1e-9)
    assert feature_mmd(x + 1, lab, x, lab, 2)["mmd_linear"] == pytest.approx(math.sqrt(8), rel=1e-6)
