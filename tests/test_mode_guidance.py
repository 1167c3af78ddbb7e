"""Mode guidance (MGD³): one guided step and the guided loop against float64 references, `guidance none` equal to the
sampler before it existed, guided samples closer to their modes, batch-size invariance and manifest refusals with
modes, the modes file (float32 k-means of MGD³'s randomly flipped means, identical bytes across builds), and the
CLI."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.eval_data import take_first
from data.folder import SubsetImageFolder
from data.latent_cache import build_latent_cache
from data.modes import build_modes, ensure_modes, kmeans_modes, load_modes, modes_complete, modes_flips
from data.subsets import Subset
from helpers import make_tiny_dit, save_original
from models.diffusion import Diffusion
from engines.sample.run import ImageNoise, guided_eps, image_seed, sample_folder, sample_latents
from models.vae import PixelVAE
from test_data import WNIDS, make_folder
from test_latent_cache import FakeVAE
from test_sample import FakeDiT, _free_port, _pngs, _write
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
WOOF = ["n02086240", "n02087394"]


@pytest.fixture(scope="module")
def tiny():
    """A random DiT-T/2 (ImageNet labels) on 3x8x8 'pixel' latents."""
    return make_tiny_dit(input_size=8, in_channels=3, num_classes=1000, depth=4, hidden_size=64, num_heads=4)


def _modes(n, seed=1, shape=(3, 8, 8)):
    return 0.5 * torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


#################################################################################
#                             The step, in float64                              #
#################################################################################

def _coefs(n=50):
    """Respaced float64 coefficients (SPEC §4), recomputed independently of models/diffusion.py."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    keep = [int(k) for k in np.round(np.linspace(0, 999, n))]
    ack = np.cumprod(1 - betas)[keep]
    acp = np.append(1.0, ack[:-1])
    b = 1 - ack / acp
    post_var = b * (1 - acp) / (1 - ack)
    return keep, ack, acp, b, np.log(np.append(post_var[1], post_var[1:]))


def test_one_guided_step_equals_float64_formula():
    g = torch.Generator().manual_seed(0)
    x, noise, m = (torch.randn(3, 4, 4, 4, generator=g) for _ in range(3))
    out = torch.cat([torch.randn(3, 4, 4, 4, generator=g), torch.rand(3, 4, 4, 4, generator=g) * 2 - 1], 1)
    diffusion, lam, i = Diffusion.linear(1000).respaced(50), 0.1, 37
    _, ack, acp, b, min_log = _coefs()
    xd, nd, md, (eps, v) = x.double(), noise.double(), m.double(), out.double().chunk(2, 1)
    x0 = np.sqrt(1 / ack[i]) * xd - np.sqrt(1 / ack[i] - 1) * eps
    mu = b[i] * np.sqrt(acp[i]) / (1 - ack[i]) * x0 + (1 - acp[i]) * np.sqrt(1 - b[i]) / (1 - ack[i]) * xd
    sigma = torch.exp(0.5 * ((v + 1) / 2 * np.log(b[i]) + (1 - v) / 2 * min_log[i]))
    ref = mu - lam * sigma * (x0 - md) + sigma * nd  # x_{t-1} = mu + g + sigma z, g = -lambda sigma (x0_hat - m)
    got = diffusion.p_step(out, x, i, noise, mode=m, mode_scale=lam)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5), (got.double() - ref).abs().max()
    plain = diffusion.p_step(out, x, i, noise)
    assert (got - plain).abs().max() > 1e-2  # the guidance term is not negligible here
    # DDIM, MGD³'s guided step (ddim_sample_with_mode_guidance, issue 16): x0_hat moves by -lambda (x0_hat - m),
    # eps is re-derived from the moved x0 (_predict_eps_from_xstart), and DDIM's eq. 12 uses both
    x0g = x0 - lam * (x0 - md)
    eps_g = (np.sqrt(1 / ack[i]) * xd - x0g) / np.sqrt(1 / ack[i] - 1)
    ref = x0g * np.sqrt(acp[i]) + np.sqrt(1 - acp[i]) * eps_g
    got = diffusion.ddim_step(out, x, i, None, mode=m, mode_scale=lam)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5), (got.double() - ref).abs().max()
    # its net move against the unguided step: -lambda d (sqrt(ab_prev) - sqrt(ab (1 - ab_prev) / (1 - ab)))
    move = -lam * (x0 - md) * (np.sqrt(acp[i]) - np.sqrt(ack[i] * (1 - acp[i]) / (1 - ack[i])))
    plain = diffusion.ddim_step(out, x, i, None)
    assert torch.allclose((got - plain).double(), move, atol=1e-5), ((got - plain).double() - move).abs().max()
    kept = x0g * np.sqrt(acp[i]) + np.sqrt(1 - acp[i]) * eps  # the eps-kept step (before issue 16) is not it
    assert (got.double() - kept).abs().max() > 1e-2
    # eta > 0: the same eps', sigma from the respaced alphas, plus sigma * noise
    eta = 0.5
    sig = eta * np.sqrt((1 - acp[i]) / (1 - ack[i])) * np.sqrt(1 - ack[i] / acp[i])
    ref = x0g * np.sqrt(acp[i]) + np.sqrt(1 - acp[i] - sig ** 2) * eps_g + sig * nd
    got = diffusion.ddim_step(out, x, i, noise, eta=eta, mode=m, mode_scale=lam)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5), (got.double() - ref).abs().max()


def test_guided_ddim_loop_on_ddim_spacing_equals_float64_reference():
    """20 DDIM steps on DiT's ddim20 timesteps (0, 50, ..., 950), guided while i > 10 with eps re-derived from the
    moved x0 (MGD³'s ddim_sample_loop_with_mode_guidance), against float64."""
    seeds, lam, stop, n = [image_seed(0, WOOF[1], i) for i in range(3)], 0.3, 10, 20
    m = _modes(3, seed=2, shape=(2, 4, 4))
    diffusion = Diffusion.linear(1000).respaced(n, "ddim")
    z = sample_latents(FakeDiT(), diffusion, [1, 2, 3], seeds, sampler="ddim", micro_batch=2, modes=m,
                       mode_scale=lam, mode_stop=stop)
    keep = list(range(0, 1000, 1000 // n))  # ADM/DiT's ddimN: stride 1000 // n when it gives exactly n steps
    ack = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[keep]
    acp = np.append(1.0, ack[:-1])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(2, 4, 4, generator=q) for q in gens]).double()
    for i in reversed(range(n)):
        eps = FakeDiT.out(x, torch.full((3,), keep[i])).chunk(2, 1)[0]
        x0 = np.sqrt(1 / ack[i]) * x - np.sqrt(1 / ack[i] - 1) * eps
        if i > stop:
            x0 = x0 - lam * (x0 - m.double())
            eps = (np.sqrt(1 / ack[i]) * x - x0) / np.sqrt(1 / ack[i] - 1)
        x = x0 * np.sqrt(acp[i]) + np.sqrt(1 - acp[i]) * eps
    assert torch.allclose(z.double(), x, rtol=1e-4, atol=1e-5), (z.double() - x).abs().max()


def test_guided_loop_equals_float64_reference():
    """50 steps through sample_latents: guidance uses the guided model output and acts only while i > stop."""
    seeds, lam, stop = [image_seed(0, WOOF[0], i) for i in range(3)], 0.3, 25
    m = _modes(3, shape=(2, 4, 4))
    z = sample_latents(FakeDiT(), Diffusion.linear(1000).respaced(50), [1, 2, 3], seeds, micro_batch=2, modes=m,
                       mode_scale=lam, mode_stop=stop)
    keep, ack, acp, b, min_log = _coefs()
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(2, 4, 4, generator=q) for q in gens]).double()
    for i in reversed(range(50)):
        noise = torch.stack([torch.randn(2, 4, 4, generator=q) for q in gens]).double()
        eps, v = FakeDiT.out(x, torch.full((3,), keep[i])).chunk(2, 1)
        sigma = torch.exp(0.5 * ((v + 1) / 2 * np.log(b[i]) + (1 - v) / 2 * min_log[i]))
        x0 = np.sqrt(1 / ack[i]) * x - np.sqrt(1 / ack[i] - 1) * eps
        mu = b[i] * np.sqrt(acp[i]) / (1 - ack[i]) * x0 + (1 - acp[i]) * np.sqrt(1 - b[i]) / (1 - ack[i]) * x
        g = -lam * sigma * (x0 - m.double()) if i > stop else 0.0
        x = mu + g + (i > 0) * sigma * noise
    assert torch.allclose(z.double(), x, rtol=1e-4, atol=1e-5), (z.double() - x).abs().max()


#################################################################################
#            guidance none = the sampler before mode guidance existed            #
#################################################################################

@torch.no_grad()
def _loop_before(model, diffusion, labels, seeds, sampler):
    """A frozen copy of sample_latents' loop as it was before mode guidance (micro_batch 32, fp32)."""
    noise = ImageNoise(seeds, (model.in_channels, model.arch["input_size"], model.arch["input_size"]), "cpu")
    y, x = torch.as_tensor(labels), noise.draw()
    for i in reversed(range(diffusion.num_steps)):
        t = diffusion.model_timesteps(i, len(x), "cpu")
        out = guided_eps(model, x, t, y, 4.0, 3, 32)
        tt = torch.full((len(x),), i, dtype=torch.long)
        mean, log_var, _ = diffusion.p_mean_variance(out, x, tt)
        if sampler == "ancestral":
            n = noise.draw()
            x = mean if i == 0 else mean + torch.exp(0.5 * log_var) * n
        else:
            x0 = diffusion.predict_x0(x, tt, out[:, :x.shape[1]])
            ab_prev = diffusion._coef("alphas_cumprod_prev", tt, x)
            x = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - 0.0 ** 2) * out[:, :x.shape[1]]
    return x


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_guidance_none_equals_the_sampler_before(tiny, sampler):
    diffusion, seeds = Diffusion.linear(1000).respaced(8), [image_seed(0, WOOF[1], i) for i in range(5)]
    new = sample_latents(tiny, diffusion, [159] * 5, seeds, sampler=sampler)
    assert torch.equal(new, _loop_before(tiny, diffusion, [159] * 5, seeds, sampler))
    # guidance that never acts (stop at the first step) and a zero scale leave every bit as it was
    for kw in ({"mode_stop": 7, "mode_scale": 0.1}, {"mode_stop": 0, "mode_scale": 0.0}):
        assert torch.equal(new, sample_latents(tiny, diffusion, [159] * 5, seeds, sampler=sampler, modes=_modes(5),
                                               **kw))


#################################################################################
#                  Guided samples, batch invariance, manifest                   #
#################################################################################

class GaussianDenoiser:
    """A tiny exact model: the optimal eps-predictor for data x0 ~ N(0, I) (eps = sqrt(1-abar) x_t / (abar + 1 -
    abar) = sqrt(1-abar) x_t), so unguided samples are draws of the data. (A random DiT's samples diverge, which
    would make 'closer to the modes' meaningless.) Labels and CFG do not change its output."""
    in_channels, arch, null_class = 3, {"input_size": 8}, 1000

    def __init__(self):
        self.abar = torch.from_numpy(Diffusion.linear(1000).alphas_cumprod).float()

    def __call__(self, x, t, y):
        ab = self.abar[t].view(-1, 1, 1, 1)
        return torch.cat([(1 - ab).sqrt() * x, torch.zeros_like(x)], 1)  # (N, 2C, H, W): eps, v = 0

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=3):
        return self(x, t, y)


def test_guided_samples_end_closer_to_their_modes():
    """Same seeds, 50 steps, stop 25: every image ends nearer its own mode than unguided, more so as lambda grows
    (measured on this model: 5 % nearer on average at the default lambda 0.1, 29 % at 1.0)."""
    model, diffusion = GaussianDenoiser(), Diffusion.linear(1000).respaced(50)
    seeds, m = [image_seed(0, WOOF[0], i) for i in range(6)], _modes(6, seed=3) * 2

    def dist(lam):
        z = sample_latents(model, diffusion, [155] * 6, seeds, modes=m if lam else None, mode_scale=lam)
        return ((z - m) ** 2).flatten(1).sum(1).sqrt()  # (6,)
    free = dist(0)
    assert 0.8 < sample_latents(model, diffusion, [155] * 6, seeds).std() < 1.2  # unguided: the data, N(0, I)
    d = [dist(lam) for lam in (0.1, 0.3, 1.0)]
    assert (d[0] < free).all() and (d[1] < d[0]).all() and (d[2] < d[1]).all()
    assert (d[0] / free).mean() < 0.97 and (d[2] / free).mean() < 0.8


def _run(model, out, modes, **kw):
    args = dict(seed=0, batch_size=16, progress=False, identity={"weights": "tiny"}, grid=0, mode_scale=0.1,
                mode_stop=2, modes_info={"sha256": "abc", "ipc": modes.shape[1]})
    args.update(kw)
    return sample_folder(args.pop("model", model), PixelVAE(), Diffusion.linear(1000).respaced(6), WOOF, [155, 159],
                         modes.shape[1], str(out), modes=modes, **args)


def test_guided_batch_size_and_micro_batch_invariance(tiny, tmp_path):
    modes = _modes(2 * 5).reshape(2, 5, 3, 8, 8)
    runs = []
    for bs in (1, 7, 16):
        _run(tiny, tmp_path / f"b{bs}", modes, batch_size=bs)
        runs.append(_pngs(tmp_path / f"b{bs}"))
    assert len(runs[0]) == 10 and runs[0] == runs[1] == runs[2] and len(set(runs[0].values())) == 10
    unguided = sample_folder(tiny, PixelVAE(), Diffusion.linear(1000).respaced(6), WOOF, [155, 159], 5,
                             str(tmp_path / "free"), progress=False, identity={"weights": "tiny"}, grid=0)
    assert unguided["written"] == 10 and _pngs(tmp_path / "free") != runs[0]
    seeds = [image_seed(0, WOOF[0], i) for i in range(16)]
    m, diffusion = _modes(16), Diffusion.linear(1000).respaced(12)
    z = {bs: torch.cat([sample_latents(tiny, diffusion, [155] * len(seeds[a:a + bs]), seeds[a:a + bs], micro_batch=8,
                                       modes=m[a:a + bs], mode_stop=4) for a in range(0, 16, bs)]) for bs in (1, 7, 16)}
    assert torch.equal(z[1], z[7]) and torch.equal(z[1], z[16])  # the latents themselves, bit for bit


def test_manifest_refuses_mixing_modes(tiny, tmp_path):
    modes = _modes(2 * 3).reshape(2, 3, 3, 8, 8)
    out = tmp_path / "g"
    _run(tiny, out, modes)
    pixels = json.load(open(out / "manifest.json"))["pixels"]
    assert pixels["guidance"] == {"sha256": "abc", "ipc": 3, "kind": "mode", "scale": 0.1, "stop": 2}
    with pytest.raises(UserError, match=r"guidance.sha256 \('abc' -> 'other'\)"):
        _run(tiny, out, modes, modes_info={"sha256": "other", "ipc": 3})
    with pytest.raises(UserError, match="guidance.stop"):
        _run(tiny, out, modes, mode_stop=1)
    with pytest.raises(UserError, match="do not fit 2 classes x IPC 4"):  # IPC-3 modes cannot make IPC 4
        sample_folder(tiny, PixelVAE(), Diffusion.linear(1000).respaced(6), WOOF, [155, 159], 4, str(out),
                      modes=modes, progress=False, identity={"weights": "tiny"})
    sample_folder(tiny, PixelVAE(), Diffusion.linear(1000).respaced(6), WOOF, [155, 159], 3, str(tmp_path / "u"),
                  progress=False, identity={"weights": "tiny"}, grid=0)
    with pytest.raises(UserError, match=r"other settings: guidance \(None -> "):  # an unguided folder stays so
        _run(tiny, tmp_path / "u", modes)
    assert _run(tiny, out, modes, modes_info={"sha256": "other", "ipc": 3}, overwrite=True)["written"] == 6
    # evaluation reads a guided folder only at the IPC its modes were made for
    files = {w: sorted(str(p) for p in (out / w).iterdir()) for w in WOOF}
    assert take_first(files, 3, str(out)) == files
    with pytest.raises(UserError, match="mode guidance for IPC 3: its first 2 images are not an IPC-2 set"):
        take_first(files, 2, str(out))


#################################################################################
#                                  Modes file                                   #
#################################################################################

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imgs"))
    make_folder(root, per_class=7, extra=())
    return SubsetImageFolder(root, Subset("tiny", list(WNIDS)), 16, flip=False)


def _mgd3_features(data, vae, seed):
    """MGD³'s feature pass (get_loader + get_features_per_class), restated with its random draws forced to this
    project's rule: per image the ADM centre crop, RandomHorizontalFlip's `torch.rand(1) < 0.5` drawn from a generator
    seeded by sha256('{seed}/modes-flip/{path}'), then the encoder ALONE on that image (batch 1), posterior mean x
    scale, float32. Returns ({label: (n, D) float32}, (N,) flips)."""
    feats, flips = {}, []
    for n, (rel, y) in enumerate(data.items):
        s = int.from_bytes(hashlib.sha256(f"{seed}/modes-flip/{rel}".encode()).digest()[:8], "big") >> 1
        flip = bool(torch.rand(1, generator=torch.Generator().manual_seed(s)) < 0.5)
        x = data.load(n, flip=False)  # (3, S, S) in [-1, 1]
        x = torch.flip(x, dims=[-1]) if flip else x
        mean, _ = vae.encode_stats(x[None].float())
        feats.setdefault(y, []).append((mean[0] * vae.scale).reshape(-1).numpy())
        flips.append(int(flip))
    return {y: np.stack(f) for y, f in feats.items()}, np.array(flips)


def test_modes_are_float32_kmeans_of_mgd3s_flipped_means_and_identical_across_builds(data, tmp_path):
    """Issue 16: MGD³ clusters each class's images after a random horizontal flip, in float32 (the default now)."""
    from sklearn.cluster import KMeans
    files = []
    for k in range(2):
        cache = build_latent_cache(data, FakeVAE(), str(tmp_path / f"c{k}"), dtype="float32", progress=False)
        path = build_modes(cache, data, 3, str(tmp_path / f"c{k}" / "modes" / "m.npy"), "random", 5)
        files.append([open(p, "rb").read() for p in (path, path[:-4] + ".json")])
    assert files[0] == files[1]  # the .npy and the .json, byte for byte
    modes, info = load_modes(path, list(WNIDS), 3, "centroid")
    nearest, _ = load_modes(path, list(WNIDS), 3, "nearest")
    assert modes.shape == (3, 3, 4, 2, 2) and info["ipc"] == 3 and info["modes"] == "centroid"
    meta = json.load(open(path[:-4] + ".json"))
    feats, flips = _mgd3_features(data, FakeVAE(), seed=5)
    assert 0 < flips.sum() < len(flips)  # both orientations occur in this draw
    assert meta["flip"]["seed"] == 5 and sum(meta["mirrored"].values()) == flips.sum()
    assert meta["version"] == 2 and meta["precision"] == "float32"
    for j, w in enumerate(WNIDS):
        km = KMeans(n_clusters=3, random_state=0, n_init="auto").fit(feats[j])  # float32 in, float32 k-means
        assert km.cluster_centers_.dtype == np.float32
        assert np.allclose(modes[j].reshape(3, -1).numpy(), km.cluster_centers_, rtol=1e-6, atol=1e-7)
        rows = [data.items.index((rel, j)) for rel in meta["nearest_items"][w]]
        ref = np.stack([feats[j][[n for n, (_, y) in enumerate(data.items) if y == j].index(r)] for r in rows])
        assert np.allclose(nearest[j].reshape(3, -1).numpy(), ref, rtol=1e-6, atol=1e-7)
    # the draws depend on (seed, path) only: not on the order or on the other items; another seed, other draws
    rels = [rel for rel, _ in data.items]
    assert np.array_equal(modes_flips(rels[::-1], 5), flips[::-1]) and np.array_equal(modes_flips(rels[:4], 5),
                                                                                      flips[:4])
    assert not np.array_equal(modes_flips(rels, 6), flips) and not modes_flips(rels, 5, "none").any()
    # modes_flip none: the unmirrored means (this project's rule before issue 16)
    plain = build_modes(cache, data, 3, str(tmp_path / "none.npy"), "none", 5)
    unmirrored, _ = load_modes(plain, list(WNIDS), 3)
    for j in range(3):
        idx = [n for n, (_, y) in enumerate(data.items) if y == j]
        z = (torch.from_numpy(np.asarray(cache.mean[idx, 0])) * cache.scale).reshape(len(idx), -1).numpy()
        km = KMeans(n_clusters=3, random_state=0, n_init="auto").fit(z)
        assert np.allclose(unmirrored[j].reshape(3, -1).numpy(), km.cluster_centers_, rtol=1e-6, atol=1e-7)
    assert not torch.equal(unmirrored, modes)
    with pytest.raises(UserError, match="holds 3 modes of 3 classes, not 4"):
        load_modes(path, list(WNIDS), 4)
    with pytest.raises(UserError, match="fewer than the 8 modes"):
        build_modes(cache, data, 8, str(tmp_path / "m8.npy"))
    from threadpoolctl import threadpool_limits
    z = np.random.default_rng(0).standard_normal((300, 256))
    runs = []
    for n in (1, 2):  # k-means sums differ with the thread count unless pinned to one thread (as kmeans_modes does)
        with threadpool_limits(n):
            runs.append([a.tobytes() for a in kmeans_modes(z, 10)])
    assert runs[0] == runs[1]
    with open(path, "r+b") as f:  # a torn or edited file is not used
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    assert not modes_complete(path)
    with pytest.raises(UserError, match="missing or incomplete"):
        load_modes(path, list(WNIDS), 3)


def test_modes_precision_float32_whatever_the_fine_tuning_cache_and_old_files_refused(data, tmp_path, capsys):
    """Issue 16: the default clusters float32 means even when only a float16 cache exists (ensure_modes builds the
    float32 cache); modes_precision float16 reuses the float16 cache (its rounded means); a version-1 file is refused
    by load_modes and left unused (with a note) by ensure_modes."""
    from sklearn.cluster import KMeans
    from data.latent_cache import cache_key
    cache_dir = str(tmp_path / "cache")
    half = build_latent_cache(data, PixelVAE(), cache_dir, dtype="float16", progress=False)  # as fine-tuning's
    os.makedirs(os.path.join(cache_dir, "modes"))
    old = os.path.join(cache_dir, "modes", "old.npy")
    np.save(old, np.zeros((3, 2, 3, 3, 16, 16), np.float32))
    with open(old, "rb") as f:
        json.dump({"format": "minimax-modes", "version": 1, "sha256": hashlib.sha256(f.read()).hexdigest(),
                   "wnids": list(WNIDS), "ipc": 3}, open(old[:-4] + ".json", "w"))
    with pytest.raises(UserError, match="version 1, not version 2 .*delete it and rerun to rebuild"):
        load_modes(old, list(WNIDS), 3)
    p32 = ensure_modes(data, 3, cache_dir, "pixel", seed=1, progress=False)
    assert "note: 1 modes file(s) of an older format" in capsys.readouterr().out
    assert os.path.isdir(os.path.join(cache_dir, cache_key(data, PixelVAE(), "float32")))  # built beside the f16 one
    p16 = ensure_modes(data, 3, cache_dir, "pixel", seed=1, precision="float16", progress=False)
    m32, m16 = load_modes(p32, list(WNIDS), 3)[0], load_modes(p16, list(WNIDS), 3)[0]
    feats, flips = _mgd3_features(data, PixelVAE(), seed=1)
    for j in range(3):
        ref = KMeans(n_clusters=3, random_state=0, n_init="auto").fit(feats[j]).cluster_centers_
        assert np.array_equal(m32[j].reshape(3, -1).numpy(), ref)  # pixel 'encoder': the same floats exactly
        idx = [n for n, (_, y) in enumerate(data.items) if y == j]
        z16 = half.stats(idx, flips[idx])[0].reshape(len(idx), -1).numpy()  # float16-rounded, as stored
        assert np.array_equal(m16[j].reshape(3, -1).numpy(),
                              KMeans(n_clusters=3, random_state=0, n_init="auto").fit(z16).cluster_centers_)
    diff = (m32 - m16).abs().max().item()
    assert 0 < diff < 4e-3  # float16 storage moves the centroids (values in [-1, 1]: rounding 2^-11 relative)
    assert json.load(open(p16[:-4] + ".json"))["precision"] == "float16"


#################################################################################
#                                      CLI                                      #
#################################################################################

def _cli(*args, launcher=(sys.executable,)):
    return subprocess.run([*launcher, "sample.py", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=240)


def test_cli_guided_builds_modes_once_torchrun_and_kill_resume_match(tiny, tmp_path):
    root = tmp_path / "train"
    make_folder(str(root), wnids=WOOF, per_class=5, extra=())
    base = ["--ckpt", "none", "--base", save_original(tiny, tmp_path / "tiny.pt"), "--model", "DiT-T/2", "--vae",
            "pixel", "--image_size", "8", "--num_steps", "6", "--mode_stop", "2", "--device", "cpu", "--subset",
            "custom", "--class_file", _write(tmp_path / "c.txt", "\n".join(WOOF)), "--guidance", "mode",
            "--modes_vae", "pixel", "--cache_dir", tmp_path / "cache"]
    common = base + ["--train_dir", root, "--ipc", "3"]
    proc = _cli(*common, "--out", tmp_path / "one", "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (npy,) = [p for p in (tmp_path / "cache" / "modes").iterdir() if p.suffix == ".npy"]
    manifest = json.load(open(tmp_path / "one" / "manifest.json"))
    g = manifest["pixels"]["guidance"]
    assert g["ipc"] == 3 and g["modes"] == "centroid" and g["stop"] == 2 and g["vae"] == "pixel"
    assert g["sha256"] == json.load(open(str(npy)[:-4] + ".json"))["sha256"]
    mtime = os.path.getmtime(npy)
    ddp = _cli(*common, "--out", tmp_path / "ddp", "--batch_size", "2",
               launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                         f"--master_port={_free_port()}"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert _pngs(tmp_path / "ddp") == _pngs(tmp_path / "one") and os.path.getmtime(npy) == mtime  # read, not rebuilt
    killed = _cli(*common, "--out", tmp_path / "k", "--batch_size", "2", "--debug_kill_after", "3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _cli(*common, "--out", tmp_path / "k", "--batch_size", "4").returncode == 0  # resumes with the same modes
    assert _pngs(tmp_path / "k") == _pngs(tmp_path / "one")
    other = _cli(*base, "--train_dir", root, "--ipc", "2", "--out", tmp_path / "one")  # IPC-2 modes: other file
    assert other.returncode == 2 and "other settings: guidance" in other.stderr, other.stderr[-2000:]
    bad = _cli(*base, "--ipc", "3", "--out", tmp_path / "x")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --guidance mode needs --train_dir: the train folder (<wnid>/<image>) the modes come from"]


def test_cli_sampler_ddim_uses_dits_ddimN_spacing(tiny, tmp_path, capsys):
    """--sampler ddim respaces as DiT/ADM's "ddimN" (MGD³'s create_diffusion('ddim' + N)), recorded in the manifest;
    --spacing even keeps round(linspace(0, 999, n)); a count no stride gives is one line, exit 2, nothing written."""
    import engines.sample as sample
    from utils.errors import run_cli

    def main(*argv):
        capsys.readouterr()
        try:
            run_cli(sample.main, [str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err
    base = ["--ckpt", "none", "--base", save_original(tiny, tmp_path / "tiny.pt"), "--model", "DiT-T/2", "--vae",
            "pixel", "--image_size", "8", "--device", "cpu", "--subset", "custom", "--class_file",
            _write(tmp_path / "c.txt", WOOF[0]), "--ipc", "1", "--grid", "0", "--progress", "false"]
    for argv, keep in ((["--sampler", "ddim"], [0, 200, 400, 600, 800]),
                       (["--sampler", "ddim", "--spacing", "even"], [0, 250, 500, 749, 999])):
        out = tmp_path / f"s{len(os.listdir(tmp_path))}"
        code, err = main(*base, "--num_steps", 5, "--out", out, *argv)
        assert code == 0, err
        assert json.load(open(out / "manifest.json"))["pixels"]["timesteps"] == keep, argv
    code, err = main(*base, "--num_steps", 37, "--sampler", "ddim", "--out", tmp_path / "bad")
    assert code == 2 and err.strip().splitlines() == [
        "error: --num_steps 37 has no ddim spacing (no integer stride gives exactly 37 of 1000 timesteps, as DiT's "
        "ddimN); use --num_steps 36 or --spacing even"] and not (tmp_path / "bad").exists()


#################################################################################
#                     Reproduction plan and published rows                      #
#################################################################################

def test_reproduce_samples_every_ipc_with_guidance(tmp_path):
    from scripts.reproduce import build_steps
    configs = [os.path.join(ROOT, "configs", c) for c in ("imagewoof.yaml", os.path.join("guidance", "mode.yaml"))]
    imagenet = str(tmp_path / "imagenet")
    steps = {s.name: s for s in build_steps("imagewoof", imagenet, str(tmp_path), configs, 1)}
    assert list(steps) == ["finetune-minimax"] + [f"sample-{m}-ipc{k}" for m in ("minimax-mode", "dit-mode")
                                                  for k in (10, 50, 100)] + [
        f"eval-{m}-ipc{k}" for k in (10, 50, 100) for m in ("minimax-mode", "dit-mode")] + ["tables", "figures"]
    cmd = steps["sample-minimax-mode-ipc50"].cmd
    assert cmd[cmd.index("--ckpt") + 1] == str(tmp_path / "finetune-minimax" / "checkpoint.pt")  # not retrained
    assert cmd[cmd.index("--ipc") + 1] == "50" and cmd[cmd.index("--train_dir") + 1] == os.path.join(imagenet, "train")
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "samples" / "minimax-mode-ipc50")
    ev = steps["eval-dit-mode-ipc10"].cmd
    assert ev[ev.index("--train") + 1] == str(tmp_path / "samples" / "dit-mode-ipc10") and "--method" in ev
    plain = [s.name for s in build_steps("imagewoof", imagenet, str(tmp_path), configs[:1], 1)]
    assert "sample-minimax" in plain and not any("ipc" in n and n.startswith("sample") for n in plain)


def test_tables_show_mgd3_published_rows(tmp_path):
    from scripts.tables import make_tables
    recs = [{"kind": "run", "subset": "imagewoof", "method": "dit-mode", "arch": "resnetap10", "ipc": 10, "seed": s,
             "best": b, "last": b, "select": "none"} for s, b in enumerate([40.0, 41.0])]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    md, _ = make_tables([str(tmp_path)], "best", ["mode"])
    lines = md.splitlines()
    assert "MGD³" in lines[0] and "DiT + mode (MGD³)" in lines[2]
    row = next(ln for ln in lines if ln.startswith("| imagewoof | 10 | ResNetAP-10 |"))
    assert "40.5 ± 0.5 (40.4 ± 1.9, +0.1)" in row
    for ipc, arch, paper in ((50, "ConvNet-6", "– (54.5)"), (100, "ResNet-18", "– (68.8)"),
                             (100, "ResNetAP-10", "– (66.5 ± 1.0)")):
        assert paper in next(ln for ln in lines if ln.startswith(f"| imagewoof | {ipc} | {arch} |"))
