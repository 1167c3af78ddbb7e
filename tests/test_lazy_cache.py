"""Lazy latent cache: the same per-item statistics and draws as the eager build, encoding only what is drawn,
persistent across processes; the remembered train-dir scan gives the same dataset and cache key."""
import os

import numpy as np
import pytest
import torch

from data.folder import SubsetImageFolder, scan_classes
from data.latent_cache import build_latent_cache, cache_key
from data.lazy_cache import LazyLatentCache, create_lazy_cache
from data.subsets import Subset
from tests.test_data import WNIDS, make_folder
from tests.test_latent_cache import FakeVAE, _dataset


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imgs"))
    ds = _dataset(root)  # 12 images of 3 classes
    d = str(tmp_path_factory.mktemp("cache"))
    eager = build_latent_cache(ds, FakeVAE(), d, batch_size=5, chunk_size=5, dtype="float32")
    return ds, eager, d


def _lazy(ds, d, vae=None, **kw):
    vae = vae or FakeVAE()
    return LazyLatentCache(create_lazy_cache(ds, vae, d, "float32"), ds, vae, **kw)


def test_lazy_entries_equal_eager_per_item(caches):
    ds, eager, d = caches
    lazy = _lazy(ds, d, encode_batch=4)
    assert not np.asarray(lazy.filled).any()
    # fill in a scattered order and uneven groups: an entry must not depend on its batch mates
    order = [(11, 1), (0, 0), (5, 1), (5, 0), (3, 1), (7, 0), (2, 1)]
    lazy.fill([i for i, _ in order], [f for _, f in order])
    rest = [(i, f) for i in range(12) for f in (0, 1) if (i, f) not in order]
    lazy.fill([i for i, _ in rest], [f for _, f in rest])
    assert not np.asarray(lazy.filled).any() and lazy.is_stored(11, 1)  # stored, flagged at the next sync
    lazy.sync()
    assert np.asarray(lazy.filled).all() and lazy.encoded == 24
    assert np.array_equal(np.asarray(lazy.mean), np.asarray(eager.mean))  # identical per-item statistics
    assert np.array_equal(np.asarray(lazy.std), np.asarray(eager.std))
    assert torch.equal(lazy.labels, eager.labels)


def test_lazy_draws_equal_eager_draws_and_encode_only_drawn(caches, tmp_path):
    ds, eager, _ = caches
    vae = FakeVAE()
    lazy = _lazy(ds, str(tmp_path), vae=vae)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    drawn = set()
    for idx in ([0, 4, 8, 9], [1, 2, 3, 4], [4, 4, 11, 0]):
        za, ya = eager.draw(idx, g1)
        state = g2.get_state()
        flips = (torch.rand(len(idx), generator=g2) < 0.5).long().tolist()
        g2.set_state(state)
        zb, yb = lazy.draw(idx, g2)
        assert torch.equal(za, zb) and torch.equal(ya, yb)  # bit-identical latents, same generator use
        drawn |= set(zip(idx, flips))
        assert lazy.encoded == len(drawn)  # each (image, flip) entry encoded once, on first draw
    lazy.sync()
    assert int(np.asarray(lazy.filled).sum()) == len(drawn) < 24
    # a new process reopens the files: stored entries are read, not encoded again
    again = LazyLatentCache(lazy.path, ds, FakeVAE())
    again.fill([i for i, _ in drawn], [f for _, f in drawn])
    assert again.encoded == 0


def test_lazy_draw_without_flip_equals_eager_and_never_encodes_a_mirror(caches, tmp_path):
    """train.flip false (the digits demo): the same draws as the eager cache, and no mirrored entry is encoded."""
    ds, eager, _ = caches
    lazy = _lazy(ds, str(tmp_path))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for idx in ([0, 4, 8, 9], [1, 2, 3, 4], [5, 6, 7, 11]):
        za, ya = eager.draw(idx, g1, flip=False)
        zb, yb = lazy.draw(idx, g2, flip=False)
        assert torch.equal(za, zb) and torch.equal(ya, yb)
    assert torch.equal(g1.get_state(), g2.get_state())  # the same random streams consumed
    lazy.sync()
    filled = np.asarray(lazy.filled)  # (items, 2): [:, 1] the mirrors
    assert filled[:, 0].sum() == 11 and not filled[:, 1].any()


def test_lazy_create_is_idempotent_and_shape_checked(caches, tmp_path):
    ds, _, _ = caches
    path = create_lazy_cache(ds, FakeVAE(), str(tmp_path), "float32")
    lazy = LazyLatentCache(path, ds, FakeVAE())
    lazy.fill([3], [1])
    lazy.sync()
    assert create_lazy_cache(ds, FakeVAE(), str(tmp_path), "float32") == path  # kept, not recreated
    assert LazyLatentCache(path, ds, FakeVAE()).filled[3, 1] == 1
    assert os.path.basename(path) == cache_key(ds, FakeVAE(), "float32") + "-lazy"


def test_remembered_scan_same_items_and_key_and_sees_new_files(tmp_path, monkeypatch):
    root = str(tmp_path / "imgs")
    make_folder(root, per_class=3)
    sub = Subset("tiny", list(WNIDS))
    plain = SubsetImageFolder(root, sub, 16)
    scans = str(tmp_path / "scans")
    first = SubsetImageFolder(root, sub, 16, scan_dir=scans)
    assert first.items == plain.items and cache_key(first, FakeVAE()) == cache_key(plain, FakeVAE())
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real(p))
    again = SubsetImageFolder(root, sub, 16, scan_dir=scans)
    assert again.items == plain.items and calls == []  # nothing listed again: 3 folder stats only
    make_folder(root, per_class=4)  # a new image in every class: the folders' mtimes change
    calls.clear()
    grown = SubsetImageFolder(root, sub, 16, scan_dir=scans)
    assert len(grown) == len(plain) + len(WNIDS) and len(calls) == len(WNIDS)
    assert grown.items == SubsetImageFolder(root, sub, 16).items
    assert scan_classes(root, list(WNIDS)) == scan_classes(root, list(WNIDS), scans)


def test_training_with_lazy_cache_resumes_exactly_and_equals_eager(tmp_path):
    import yaml

    from engines.train.run import train
    from tests.test_train import ROOT, WOOF, assert_same_state, make_base, make_images
    tiny = yaml.safe_load(open(os.path.join(ROOT, "configs", "tiny.yaml")))["train"]
    cfg = dict(tiny, data_dir=make_images(str(tmp_path / "data"), WOOF), base=make_base(str(tmp_path / "base.pt")),
               subset="custom", cache_dir=str(tmp_path / "cache"), epochs=2)  # 6 steps of batch 4

    def run(name, **kw):
        train(dict(cfg, run_dir=str(tmp_path / name), **kw))
        return torch.load(tmp_path / name / "checkpoint.pt", map_location="cpu", weights_only=True)

    straight = run("lazy", cache_fill="lazy")
    run("half", cache_fill="lazy", cache_dir=str(tmp_path / "cache2"), max_steps=4)  # its own, half-filled cache
    resumed = run("half", cache_fill="lazy", cache_dir=str(tmp_path / "cache2"))
    assert_same_state(straight, resumed)
    assert_same_state(straight, run("eager", cache_fill="eager", cache_dir=str(tmp_path / "cache3")))
