import os

import pytest

from data.subsets import (check_class_folders, custom_subset, get_subset, imagenet_wnids, read_list,
                          resolve_subset, CLASS_DIR)
from utils.errors import UserError


def test_imagenet_labels_from_sorted_wnid_list():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    woof = get_subset("imagewoof")
    assert woof.num_classes == 10
    assert [wnids[i] for i in woof.imagenet_idx] == woof.wnids  # the label DiT was trained with
    assert woof.wnids[0] == "n02096294" and woof.imagenet_idx[0] == 193  # Australian terrier


def test_subset_definitions():
    i100 = read_list(os.path.join(CLASS_DIR, "imagenet100.txt"))
    assert get_subset("imageidc").wnids == i100[:10]
    assert get_subset("imagenet100").num_classes == 100
    p2 = get_subset("imagenet100", phase=2)
    assert p2.wnids == i100[40:60] and p2.name == "imagenet100-p2"
    assert get_subset("imagenet1k").imagenet_idx == list(range(1000))
    with pytest.raises(UserError, match="unknown subset"):
        get_subset("imagewoff")
    with pytest.raises(UserError, match="out of range"):
        get_subset("imagenet100", phase=5)
    with pytest.raises(UserError, match="no phases"):
        get_subset("imagewoof", phase=1)


def test_custom_subset_keeps_imagenet_labels(tmp_path):
    for name in ["n01440764", "zebra_crossing"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(b"x")
    s = custom_subset(str(tmp_path))
    assert s.wnids == ["n01440764", "zebra_crossing"] and s.imagenet_idx == [0, None]
    assert s.custom_classes == [1]
    f = tmp_path / "classes.txt"
    f.write_text("zebra_crossing\nn01440764\n")
    assert resolve_subset("custom", str(tmp_path), str(f)).imagenet_idx == [None, 0]


def test_check_class_folders(tmp_path):
    woof = get_subset("imagewoof")
    with pytest.raises(UserError, match="10 class folder"):
        check_class_folders(str(tmp_path), woof)
    for w in woof.wnids:
        (tmp_path / w).mkdir()
    with pytest.raises(UserError, match="fewer than 1 image"):
        check_class_folders(str(tmp_path), woof)
    with pytest.raises(UserError, match="not found"):
        check_class_folders(str(tmp_path / "nope"), woof)
