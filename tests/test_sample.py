"""sample.py and engines/sample/run.py: the loop feeds the original timesteps and the right noises (float64 reference of
SPEC §4), per-image seeds make the PNGs byte-identical whatever the batch size, process count or IPC, a killed run
resumes to the same folder, resuming with other settings is refused, and bad input is a one-line error."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import make_tiny_dit, save_original, save_tiny_diffusers_vae
from models.diffusion import Diffusion
from engines.sample.run import (class_labels_for, grid_path, image_seed, label_table, sample_folder, sample_latents)
from models.vae import load_vae
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WOOF = ["n02086240", "n02087394"]  # the first two ImageWoof classes (DiT labels 155, 159)
LABELS = [155, 159]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as each torchrun process has (OMP_NUM_THREADS=1): the CPU comparisons below are
    between runs with the same thread count."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random DiT-T/2 with ImageNet labels on 4x8x8 latents (saved as a plain state dict) and a tiny diffusers
    AutoencoderKL (16 px images). Its GroupNorms keep the images unsaturated (a pixel VAE would clip almost every
    value of a random DiT's samples to 0 or 255), so a float-level difference would show in the PNG bytes."""
    d = tmp_path_factory.mktemp("w")
    model = make_tiny_dit(input_size=8, in_channels=4, num_classes=1000, depth=4, hidden_size=64, num_heads=4)
    save_tiny_diffusers_vae(d / "vae")
    return model, save_original(model, d / "tiny.pt"), load_vae(str(d / "vae")), str(d / "vae")


def _run(model, vae, out, **kw):
    args = dict(seed=0, batch_size=16, progress=False, identity={"weights": "tiny"}, grid=4)
    args.update(kw)
    diffusion = Diffusion.linear(1000).respaced(args.pop("num_steps", 5))
    return sample_folder(model, vae, diffusion, args.pop("wnids", WOOF), args.pop("labels", LABELS),
                         args.pop("ipc", 8), str(out), **args)


def _pngs(out):
    """{relative path: bytes} of every file under out except the manifest (run history differs)."""
    files = {}
    for d, _, names in os.walk(out):
        for n in names:
            if n != "manifest.json":
                p = os.path.join(d, n)
                files[os.path.relpath(p, out)] = open(p, "rb").read()
    return files


#################################################################################
#                       The loop against a float64 reference                    #
#################################################################################

class FakeDiT:
    """Records what the sampler feeds; eps and v are smooth functions of (x, t) so the reference can recompute them."""
    in_channels, arch, null_class = 2, {"input_size": 4}, 10

    def __init__(self):
        self.calls = []

    @staticmethod
    def out(x, t):
        tt = t.reshape(-1, 1, 1, 1).to(x.dtype) / 1000
        return torch.cat([0.5 * x + 0.1 * tt, torch.tanh(x) * 0.8 - 0.1], 1)  # (N, 2C, H, W): eps, v

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=3):
        self.calls.append((t.clone(), y.clone(), x.clone(), cfg_scale, cfg_channels))
        return self.out(x, t)


def _reference(seeds, labels_n, n=50):
    """SPEC §4 in float64: respaced betas from the kept cumulative alphas, learned-range variance, no clipping."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ac = np.cumprod(1 - betas)
    keep = [int(k) for k in np.round(np.linspace(0, 999, n))]
    ack = ac[keep]
    b = 1 - ack / np.append(1.0, ack[:-1])
    acp = np.append(1.0, ack[:-1])
    post_var = b * (1 - acp) / (1 - ack)
    min_log = np.log(np.append(post_var[1], post_var[1:]))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(2, 4, 4, generator=g) for g in gens]).double()
    for i in reversed(range(n)):
        noise = torch.stack([torch.randn(2, 4, 4, generator=g) for g in gens]).double()
        eps, v = FakeDiT.out(x, torch.full((len(x),), keep[i])).chunk(2, 1)
        frac = (v + 1) / 2
        log_var = frac * np.log(b[i]) + (1 - frac) * min_log[i]
        x0 = np.sqrt(1 / ack[i]) * x - np.sqrt(1 / ack[i] - 1) * eps
        mean = b[i] * np.sqrt(acp[i]) / (1 - ack[i]) * x0 + (1 - acp[i]) * np.sqrt(1 - b[i]) / (1 - ack[i]) * x
        x = mean + (i > 0) * torch.exp(0.5 * log_var) * noise
    return x, keep


def test_loop_feeds_original_timesteps_and_noise_in_order():
    fake, seeds = FakeDiT(), [image_seed(0, "n02086240", i) for i in range(3)]
    z = sample_latents(fake, Diffusion.linear(1000).respaced(50), [1, 2, 3], seeds, cfg_scale=4.0, micro_batch=2)
    ref, keep = _reference(seeds, 3)
    assert keep[:4] == [0, 20, 41, 61] and keep[-1] == 999
    per_step = [c[0] for c in fake.calls[::2]]  # micro_batch 2: two calls per step for 3 images
    assert [int(t[0]) for t in per_step] == keep[::-1]  # 999, ..., 41, 20, 0 (original, descending)
    t, y, x, scale, ch = fake.calls[0]
    assert scale == 4.0 and ch == 3 and y.tolist() == [1, 2, 10, 10]  # [cond; uncond] halves, null label 10
    assert torch.equal(x[:2], x[2:])
    assert fake.calls[1][1].tolist() == [3, 3, 10, 10]  # the last chunk padded by repeating its last image
    assert torch.allclose(z.double(), ref, rtol=1e-4, atol=1e-5), (z.double() - ref).abs().max()


def test_image_seed_is_stable_and_independent():
    s = image_seed(0, "n02086240", 0)
    assert s == image_seed(0, "n02086240", 0) == 8121206973956165670 and 0 <= s < 2 ** 63
    assert len({image_seed(a, w, i) for a in (0, 1) for w in WOOF for i in range(50)}) == 200


#################################################################################
#                     Byte-identical PNGs, resume, refusals                     #
#################################################################################

def test_batch_size_does_not_change_a_byte(tiny, tmp_path):
    model, _, vae, _ = tiny
    runs = []
    for bs in (1, 7, 16):
        _run(model, vae, tmp_path / f"b{bs}", batch_size=bs)
        runs.append(_pngs(tmp_path / f"b{bs}"))
    assert len(runs[0]) == 2 * 8 and runs[0] == runs[1] == runs[2]
    assert len(set(runs[0].values())) == 16  # every image different
    from PIL import Image
    img = np.asarray(Image.open(tmp_path / "b1" / WOOF[0] / "0.png"))
    assert img.shape == (16, 16, 3) and ((img > 0) & (img < 255)).mean() > 0.9  # not saturated
    assert os.path.isfile(grid_path(tmp_path / "b1")) and not any("grid" in k for k in runs[0])


def test_latents_exact_across_batches(tiny):
    """The float latents themselves (not only the PNGs) are bit-identical for batch sizes 1, 7 and 16 (20 steps)."""
    model = tiny[0]
    diffusion, seeds = Diffusion.linear(1000).respaced(20), [image_seed(0, WOOF[0], i) for i in range(16)]
    z = {bs: torch.cat([sample_latents(model, diffusion, [155] * len(seeds[a:a + bs]), seeds[a:a + bs], micro_batch=8)
                        for a in range(0, 16, bs)]) for bs in (1, 7, 16)}
    assert torch.equal(z[1], z[7]) and torch.equal(z[1], z[16])


def test_ipc_prefix_resume_and_refusals(tiny, tmp_path):
    model, _, vae, _ = tiny
    full = _pngs(os.path.dirname(_run(model, vae, tmp_path / "full", ipc=5)["manifest"]))
    part = tmp_path / "part"
    assert _run(model, vae, part, ipc=3, batch_size=4)["written"] == 6
    stats = _run(model, vae, part, ipc=5, batch_size=3)  # IPC 3 -> 5: only the two new images per class
    assert (stats["written"], stats["skipped"]) == (4, 6)
    assert _pngs(part) == full
    with pytest.raises(UserError, match=r"other settings: cfg_scale \(4.0 -> 2.0\)"):
        _run(model, vae, part, ipc=5, cfg_scale=2.0)
    with pytest.raises(UserError, match="weights"):
        _run(model, vae, part, ipc=5, identity={"weights": "another"})
    with pytest.raises(UserError, match="label of n02086240"):
        _run(model, vae, part, ipc=5, labels=[156, 159])
    stats = _run(model, vae, part, ipc=2, cfg_scale=2.0, overwrite=True)
    assert stats["written"] == 4 and sorted(os.listdir(part / WOOF[0])) == ["0.png", "1.png"]
    assert _pngs(part)[f"{WOOF[0]}/0.png"] != full[f"{WOOF[0]}/0.png"]
    _run(model, vae, tmp_path / "fp", ipc=1, identity={})  # no weights identity: the weights are fingerprinted
    with pytest.raises(UserError, match="weights.fingerprint"):
        _run(make_tiny_dit(seed=5, input_size=8, in_channels=4, num_classes=1000), vae, tmp_path / "fp", ipc=1,
             identity={})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not made by sample.py"):
        _run(model, vae, tmp_path / "foreign")
    with pytest.raises(UserError, match="is a file"):
        _run(model, vae, tmp_path / "foreign" / "notes.txt")
    with pytest.raises(UserError, match="at least 1"):
        _run(model, vae, tmp_path / "x", ipc=0)


def test_labels_of_custom_classes():
    desc = {"name": "custom", "wnids": ["n02086240", "my_cat", "my_dog"], "imagenet_idx": [155, None, None]}
    table = label_table(desc, None, 1000)
    assert [table[w] for w in desc["wnids"]] == [155, 1001, 1002]  # num_classes + 1 + position among custom
    assert label_table(desc, [155, 1001, 1003], 1000)["my_dog"] == 1003  # the checkpoint's own labels win
    model = make_tiny_dit(num_classes=1000, extra_classes=2)
    assert class_labels_for(desc["wnids"], table, model) == [155, 1001, 1002]
    with pytest.raises(UserError, match="not trained on class"):
        class_labels_for(["n01440764"], table, model)
    with pytest.raises(UserError, match="not trained on class"):
        class_labels_for(["my_cat"], label_table(None, None, 1000), model)  # plain DiT: ImageNet classes only


#################################################################################
#                         CLI: errors, torchrun, kill -9                        #
#################################################################################

def _cli(*args, launcher=(sys.executable,)):
    return subprocess.run([*launcher, "sample.py", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=240)


def _full_ckpt(model, path, wnids, name):
    """A fine-tuned checkpoint in the CONTRACTS.md format (kind full)."""
    sd = model.state_dict()
    torch.save({"format": "minimax-diffusion-ckpt", "version": 1, "kind": "full", "arch": model.arch, "base": None,
                "difffit": {"mode": "full", "gamma_blocks": []}, "params": sd, "ema": sd, "step": 1, "config": {},
                "subset": {"name": name, "wnids": wnids, "imagenet_idx": [None] * len(wnids)},
                "class_labels": list(range(len(wnids)))}, path)
    return path


def _assert_one_line_error(proc, match):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_errors(tiny, tmp_path):
    model, path, _, vae_dir = tiny
    common = ["--ckpt", "none", "--base", str(path), "--model", "DiT-T/2", "--vae", vae_dir, "--image_size", "16",
              "--num_steps", "2", "--device", "cpu"]
    _assert_one_line_error(_cli(*common, "--ipc", "0", "--out", tmp_path / "o"), "ipc must be >= 1, got 0")
    woof_ckpt = _full_ckpt(make_tiny_dit(input_size=8, in_channels=3, num_classes=10), tmp_path / "woof.pt",
                           WOOF, "imagewoof")
    _assert_one_line_error(_cli(*common[2:], "--ckpt", woof_ckpt, "--subset", "imagenette", "--out", tmp_path / "o"),
                           "fine-tuned on subset 'imagewoof'")
    from sample import main
    with pytest.raises(UserError, match="subset must be one of .*got 'woof'"):
        main([*common, "--subset", "woof", "--out", str(tmp_path / "o")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        main([*common, "--out", str(tmp_path / "file")])
    (tmp_path / "classes.txt").write_text("n02086240\nn0208739\n")  # a typo: not an ImageNet wnid
    with pytest.raises(UserError, match="not trained on class.*n0208739"):
        main([*common, "--subset", "custom", "--class_file", str(tmp_path / "classes.txt"), "--out",
              str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # every refusal came before anything was written


def test_cli_checkpoint_labels(tmp_path):
    """A fine-tuned checkpoint of a two-class custom subset samples with its own labels (0, 1 of 10)."""
    model = make_tiny_dit(input_size=8, in_channels=3, num_classes=10)
    ckpt = _full_ckpt(model, tmp_path / "woof.pt", WOOF, "imagewoof")
    from sample import main
    main(["--ckpt", str(ckpt), "--model", "none", "--vae", "pixel", "--image_size", "8", "--num_steps", "2",
          "--device", "cpu", "--subset", "custom", "--class_file", _write(tmp_path / "c.txt", WOOF[1]), "--ipc",
          "2", "--out", str(tmp_path / "o"), "--progress", "false"])
    import json
    manifest = json.load(open(tmp_path / "o" / "manifest.json"))
    assert manifest["classes"] == {WOOF[1]: 1} and manifest["complete"]
    assert manifest["pixels"]["weights"]["format"] == "full" and len(manifest["seeds"][WOOF[1]]) == 2


def _write(path, text):
    path.write_text(text + "\n")
    return str(path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_torchrun_and_kill_resume(tiny, tmp_path):
    model, path, vae, vae_dir = tiny
    _run(model, vae, tmp_path / "ref", ipc=6, grid=10)
    ref = _pngs(tmp_path / "ref")
    common = ["--ckpt", "none", "--base", str(path), "--model", "DiT-T/2", "--vae", vae_dir, "--image_size", "16",
              "--num_steps", "5", "--device", "cpu", "--subset", "custom", "--class_file",
              _write(tmp_path / "c.txt", "\n".join(WOOF)), "--ipc", "6"]
    proc = _cli(*common, "--out", tmp_path / "ddp", "--batch_size", "4",
                launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _pngs(tmp_path / "ddp") == ref  # the union of the two ranks = the 1-process run
    assert open(grid_path(tmp_path / "ddp"), "rb").read() == open(grid_path(tmp_path / "ref"), "rb").read()

    killed = _cli(*common, "--out", tmp_path / "k", "--batch_size", "4", "--debug_kill_after", "5")
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = sum(len(f) for _, _, f in os.walk(tmp_path / "k")) - 1  # minus the manifest
    assert 5 <= done < 12
    (tmp_path / "k" / WOOF[1] / ".tmp-3.png.abc123").write_bytes(b"half a png")  # a write the kill cut short
    proc = _cli(*common, "--out", tmp_path / "k", "--batch_size", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _pngs(tmp_path / "k") == ref  # identical folder, no .tmp leftovers
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
