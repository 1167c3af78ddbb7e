"""Transform (ADM centre crop, flip, [-1, 1]) and SubsetImageFolder: values, labels, order, errors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data.folder import SubsetImageFolder
from data.subsets import Subset
from data.transforms import center_crop_arr, hflip, image_transform, to_tensor_m11
from utils.errors import UserError

WNIDS = ["n02111889", "n02096294", "n02093754"]  # ImageWoof classes, deliberately not in sorted order


def _rand_img(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    ch = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, ch), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if ch == 1 else arr, mode)


def make_folder(root, wnids=WNIDS, per_class=3, extra=("n01440764",), size=(40, 30)):
    """root/<wnid>/<i>.png for the subset's classes plus unrelated folders (a 'full ImageNet')."""
    for k, w in enumerate(list(wnids) + list(extra)):
        os.makedirs(os.path.join(root, w), exist_ok=True)
        for i in range(per_class):
            mode = ["RGB", "L", "RGBA"][i % 3]
            _rand_img(size[0] + i, size[1] + k, mode, seed=10 * k + i).save(os.path.join(root, w, f"img{i}.png"))
    return Subset("tiny", list(wnids))


#################################################################################
#                                   Transform                                   #
#################################################################################

def test_center_crop_halves_then_bicubic_then_crops():
    pil = _rand_img(70, 40)
    out = center_crop_arr(pil, 16)
    # 40 >= 32: BOX-halve to 35x20; 20 < 32 stops; BICUBIC by 16/20 to 28x16; centre crop from x = 6
    step = pil.resize((35, 20), Image.BOX).resize((28, 16), Image.BICUBIC)
    assert out.size == (16, 16)
    assert np.array_equal(np.asarray(out), np.asarray(step)[:, 6:22])


def test_center_crop_offsets_without_resize():
    pil = _rand_img(20, 16)  # short side already 16: no halving, same-size resize, crop x 2..18
    assert np.array_equal(np.asarray(center_crop_arr(pil, 16)), np.asarray(pil)[:, 2:18])
    tall = _rand_img(16, 21)
    assert np.array_equal(np.asarray(center_crop_arr(tall, 16)), np.asarray(tall)[2:18])


def test_to_tensor_matches_torchvision():
    from torchvision import transforms
    pil = _rand_img(9, 7)
    ref = transforms.Normalize([0.5] * 3, [0.5] * 3)(transforms.ToTensor()(pil))
    x = to_tensor_m11(pil)
    assert x.shape == (3, 7, 9) and x.dtype == torch.float32
    assert torch.equal(x, ref)
    black_white = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))
    assert to_tensor_m11(black_white).tolist() == [[[-1.0, 1.0]]] * 3


def test_flip_equals_flipping_the_image():
    pil = _rand_img(50, 37)
    want = to_tensor_m11(center_crop_arr(pil, 16).transpose(Image.FLIP_LEFT_RIGHT))
    assert torch.equal(image_transform(pil, 16, flip=True), want)
    assert torch.equal(hflip(image_transform(pil, 16)), want)


#################################################################################
#                                     Folder                                    #
#################################################################################

def test_folder_labels_order_and_rgb(tmp_path):
    subset = make_folder(str(tmp_path))
    ds = SubsetImageFolder(str(tmp_path), subset, 16, flip=False)
    assert len(ds) == 9  # the unrelated folder is ignored
    assert ds.items == sorted(ds.items)
    for rel, label in ds.items:
        assert rel.split("/")[0] == subset.wnids[label]  # label = position in the subset's list
    assert SubsetImageFolder(str(tmp_path), subset, 16).items == ds.items  # deterministic
    for i in range(len(ds)):  # grayscale and RGBA sources come out as 3-channel images
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 and y == ds.items[i][1]
    gray = [i for i, (rel, _) in enumerate(ds.items) if rel.endswith("img1.png")][0]
    x = ds.load(gray)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_folder_with_only_subset_folders(tmp_path):
    subset = make_folder(str(tmp_path), extra=())
    assert len(SubsetImageFolder(str(tmp_path), subset, 16)) == 9


def test_random_flip(tmp_path):
    subset = make_folder(str(tmp_path))
    ds = SubsetImageFolder(str(tmp_path), subset, 16, flip=True)
    plain, mirror = ds.load(0), ds.load(0, flip=True)
    torch.manual_seed(0)
    outs = [ds[0][0] for _ in range(40)]
    n_flip = sum(torch.equal(x, mirror) for x in outs)
    assert all(torch.equal(x, plain) or torch.equal(x, mirror) for x in outs)
    assert 8 <= n_flip <= 32


def test_missing_class_folder_is_user_error(tmp_path):
    subset = make_folder(str(tmp_path))
    with pytest.raises(UserError, match="n09999999"):
        SubsetImageFolder(str(tmp_path), Subset("x", WNIDS + ["n09999999"]), 16)
    with pytest.raises(UserError, match="not found"):
        SubsetImageFolder(str(tmp_path / "nope"), subset, 16)


def test_corrupt_image_names_the_file(tmp_path):
    subset = make_folder(str(tmp_path))
    bad = os.path.join(str(tmp_path), WNIDS[0], "img0.png")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated PNG
    ds = SubsetImageFolder(str(tmp_path), subset, 16)
    i = [k for k, (rel, _) in enumerate(ds.items) if rel == f"{WNIDS[0]}/img0.png"][0]
    with pytest.raises(UserError, match="img0.png"):
        ds[i]
    with open(bad, "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(UserError, match=f"{WNIDS[0]}.img0.png"):
        ds.load(i)
