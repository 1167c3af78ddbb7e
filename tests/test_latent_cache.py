"""Latent cache: stored stats equal the encoder's, draws match on-the-fly sampling, resume, cache key."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.folder import SubsetImageFolder
from data.latent_cache import LatentCache, build_latent_cache, cache_key, sample_latents
from data.subsets import Subset
from data.transforms import hflip
from tests.test_data import WNIDS, make_folder
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16


#################################################################################
#                                    Fake VAE                                   #
#################################################################################

class FakeVAE:
    """models/vae.py's interface: fixed random stride-8 convs give the posterior mean and std."""

    def __init__(self, identity="fake-vae", scale=0.5, fail_at=None, kill_at=None):
        g = torch.Generator().manual_seed(0)
        self.w_mean = torch.randn(4, 3, 8, 8, generator=g) / 8
        self.w_std = torch.randn(4, 3, 8, 8, generator=g) / 8
        self.identity, self.scale, self.latent_channels, self.downsample = identity, scale, 4, 8
        self.calls, self.fail_at, self.kill_at = 0, fail_at, kill_at

    def encode_stats(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        mean = torch.nn.functional.conv2d(x, self.w_mean, stride=8)  # (N, 4, H/8, W/8)
        std = 0.02 + 0.1 * torch.nn.functional.softplus(torch.nn.functional.conv2d(x, self.w_std, stride=8))
        return mean, std


def _dataset(root, size=SIZE):
    """12 images of 3 classes (made on first use) at image size `size`."""
    if not os.path.isdir(os.path.join(root, WNIDS[0])):
        make_folder(root, per_class=4)
    return SubsetImageFolder(root, Subset("tiny", list(WNIDS)), size)


def _files(path):
    return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imgs"))
    ds = _dataset(root)
    cache = build_latent_cache(ds, FakeVAE(), str(tmp_path_factory.mktemp("cache")), batch_size=2, chunk_size=4)
    return ds, cache


#################################################################################
#                                Stored statistics                              #
#################################################################################

def test_stored_stats_equal_encoder_output(built):
    ds, cache = built
    vae = FakeVAE()
    assert len(cache) == len(ds) == 12 and cache.mean.shape == (12, 2, 4, 2, 2) and cache.mean.dtype == np.float16
    assert cache.labels.tolist() == [y for _, y in ds.items]
    for i in range(len(ds)):
        x = ds.load(i)[None]  # (1, 3, S, S)
        for f, xx in enumerate((x, hflip(x))):
            mean, std = vae.encode_stats(xx)
            assert np.allclose(cache.mean[i, f], mean[0].numpy().astype(np.float16), rtol=1e-3, atol=1e-6)
            assert np.allclose(cache.std[i, f], std[0].numpy().astype(np.float16), rtol=1e-3, atol=1e-6)


def test_draws_match_on_the_fly_sampling(built):
    ds, cache = built
    vae, n = FakeVAE(), 4000
    g = torch.Generator().manual_seed(0)
    z, labels = cache.draw(torch.full((n,), 5), g)  # (n, 4, 2, 2)
    assert z.dtype == torch.float32 and labels.tolist() == [ds.items[5][1]] * n
    x = ds.load(5)[None]
    fly = [sample_latents(vae, xx.expand(n, -1, -1, -1), g) for xx in (x, hflip(x))]  # on the fly, per flip
    centres = torch.stack([f.mean(0) for f in fly])  # (2, 4, 2, 2)
    # each draw is the image or its mirror: assign it to the nearer centre (they are far apart vs the std)
    side = ((z[:, None] - centres[None]) ** 2).flatten(2).sum(-1).argmin(1)  # (n,)
    assert abs(side.float().mean().item() - 0.5) < 0.05  # flip probability 0.5 (5 sigma)
    for f in (0, 1):
        zf, ff = z[side == f], fly[f]
        se = (zf.var(0) / len(zf) + ff.var(0) / len(ff)).sqrt()
        assert ((zf.mean(0) - ff.mean(0)).abs() < 5 * se).all()  # same mean
        assert torch.allclose(zf.std(0), ff.std(0), rtol=0.12)  # same spread
        mean, std = vae.encode_stats(hflip(x) if f else x)
        assert torch.allclose(zf.mean(0), mean[0] * vae.scale, atol=float(5 * se.max()) + 1e-3)


def test_draw_is_reproducible_and_resident_identical(built):
    _, cache = built
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    a = cache.draw([0, 3, 3, 11], g)
    g.set_state(state)
    b = cache.draw(torch.tensor([0, 3, 3, 11]), g)
    g.set_state(state)
    c = LatentCache(cache.path, resident=True).draw([0, 3, 3, 11], g)
    for u, v in ((a, b), (a, c)):
        assert torch.equal(u[0], v[0]) and torch.equal(u[1], v[1])
    assert not torch.equal(cache.draw([0], g)[0], cache.draw([0], g)[0])


#################################################################################
#                                Resume and reuse                               #
#################################################################################

def test_resume_after_crash_gives_identical_files(built, tmp_path):
    ds, clean = built
    with pytest.raises(RuntimeError, match="simulated"):
        build_latent_cache(ds, FakeVAE(fail_at=4), str(tmp_path), batch_size=2, chunk_size=4)  # dies in chunk 2
    path = os.path.join(str(tmp_path), os.path.basename(clean.path))
    with pytest.raises(UserError, match="incomplete"):
        LatentCache(path)
    vae = FakeVAE()
    cache = build_latent_cache(ds, vae, str(tmp_path), batch_size=5, chunk_size=100)  # recorded sizes win
    assert vae.calls == 4  # chunks 2 and 3 only (2 batches each)
    assert _files(cache.path) == _files(clean.path)
    again = FakeVAE()
    build_latent_cache(ds, again, str(tmp_path))
    assert again.calls == 0  # a complete cache is reused


def test_resume_after_kill_9(built, tmp_path):
    ds, clean = built
    code = ("import sys; sys.path.insert(0, '.'); "
            "from tests.test_latent_cache import FakeVAE, _dataset, build_latent_cache; "
            f"build_latent_cache(_dataset({ds.root!r}), FakeVAE(kill_at=5), {str(tmp_path)!r}, "
            "batch_size=2, chunk_size=4)")
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    vae = FakeVAE()
    cache = build_latent_cache(ds, vae, str(tmp_path), batch_size=2, chunk_size=4)
    assert vae.calls == 2  # killed in chunk 3 (its first batch): chunks 1-2 were kept
    assert _files(cache.path) == _files(clean.path)


#################################################################################
#                                   Cache key                                   #
#################################################################################

def test_cache_key_changes_with_data_vae_and_size(tmp_path):
    root = str(tmp_path / "imgs")
    ds = _dataset(root)
    vae = FakeVAE()
    key = cache_key(ds, vae)
    assert key == cache_key(_dataset(root), FakeVAE())  # stable
    assert key != cache_key(ds, FakeVAE(identity="other-vae"))
    assert key != cache_key(_dataset(root, size=32), vae)
    assert key != cache_key(ds, vae, dtype="float32")
    first = os.path.join(root, ds.items[0][0])
    os.utime(first, ns=(0, os.stat(first).st_mtime_ns + 10 ** 9))  # the same file, touched
    assert key != cache_key(ds, vae)
    key2 = cache_key(ds, vae)
    make_folder(root, per_class=5)  # a new image in every class
    assert key2 != cache_key(_dataset(root), vae)


def test_bad_image_size_is_user_error(tmp_path):
    ds = _dataset(str(tmp_path / "imgs"), size=12)
    with pytest.raises(UserError, match="multiple"):
        build_latent_cache(ds, FakeVAE(), str(tmp_path / "cache"))
