"""train_minimax.py / engines.train.run: exact resume, checkpoint format, labels, cache equivalence, errors, base mode."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models.dit import DiT_models
from engines.train.state import EMA, epoch_permutation
from engines.train.run import TrainingDiverged, train
from tests.helpers import randomize_
from utils.errors import run_cli
from utils.io import file_sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = yaml.safe_load(open(os.path.join(ROOT, "configs", "tiny.yaml")))["train"]
WOOF = ["n02086240", "n02087394", "n02088364"]  # ImageWoof wnids: ImageNet labels 155, 159, 162


#################################################################################
#                                    Fixtures                                   #
#################################################################################

@pytest.fixture(autouse=True)
def _one_thread():
    # a tiny model on a shared 2-core machine: 2 intra-op threads are up to 10x slower than 1 under load
    torch.set_num_threads(1)
    yield


def make_images(root, classes, per_class=4, seed=0, size=(20, 24)):
    """root/<class>/<i>.png, random RGB images of (height, width) `size` (20x24: centre-cropped to 16 px by the
    trainer; 16x16: kept whole)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(root, c, f"{i}.png"))
    return root


def make_base(path, seed=0):
    """A random DiT-T/2 for 3x16x16 'pixel' latents with the 1000 ImageNet classes, as a plain state dict."""
    torch.manual_seed(seed)
    model = randomize_(DiT_models["DiT-T/2"](input_size=16, in_channels=3, num_classes=1000), seed)
    with torch.no_grad():  # keep the random net's output O(1): scale down the adaLN and output layers
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.mul_(0.1)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)  # module fixtures run before the function-level thread setting
    root = tmp_path_factory.mktemp("train")
    data = make_images(str(root / "data"), WOOF)  # 12 images: 3 steps/epoch at batch 4
    base = make_base(str(root / "base.pt"))
    # ema_decay: the SPEC value (tiny.yaml lowers it for demos), so the EMA stays within ~1e-4 of the base
    cfg = dict(TINY, data_dir=data, base=base, subset="custom", cache_dir=str(root / "cache"), epochs=3,
               ema_decay=0.9999)
    return {"root": root, "cfg": cfg}


def run(env, name, **kw):
    return train(dict(env["cfg"], run_dir=str(env["root"] / name), **kw))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def straight(env):
    """9 steps (3 epochs) in one go."""
    run(env, "straight")
    return load(env["root"] / "straight" / "checkpoint.pt")


@pytest.fixture(scope="module")
def half(env):
    """The same run stopped after 4 steps (mid-epoch 1); a copy of its checkpoint is kept aside."""
    run(env, "half", max_steps=4)
    src = env["root"] / "half" / "checkpoint.pt"
    shutil.copy(src, env["root"] / "half-step4.pt")
    return load(src)


def assert_same_state(a, b):
    """Adapter weights, EMA, memories, optimiser state and RNG states are bit-identical."""
    for key in ("params", "ema"):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), f"{key}/{n}"
    for ca, cb in zip(a["criterion"], b["criterion"], strict=True):
        for n in ("real", "pred", "ptr", "count"):
            assert torch.equal(ca[n], cb[n]), f"criterion/{n}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for ra, rb in zip(a["rng"], b["rng"], strict=True):
        assert torch.equal(ra["torch"], rb["torch"])
        assert all(torch.equal(ra["generators"][g], rb["generators"][g]) for g in ra["generators"])
    assert a["step"] == b["step"] and a["data"] == b["data"]


#################################################################################
#                                Exact resume                                   #
#################################################################################

def test_stop_and_resume_is_bit_identical(env, straight, half):
    assert half["step"] == 4 and half["data"] == {"epoch": 1, "index": 4, "steps_per_epoch": 3}
    out = run(env, "half")  # auto-resume from half/checkpoint.pt; max_steps back to 0 (a resumable key)
    assert out["step"] == 9
    assert_same_state(load(env["root"] / "half" / "checkpoint.pt"), straight)
    steps = [json.loads(ln)["step"] for ln in open(env["root"] / "half" / "log.jsonl")]
    assert steps == list(range(1, 10))  # one record per step, none duplicated by the resume


def test_sigkill_right_after_a_checkpoint_then_resume(env, straight):
    """kill -9 (the process kills itself right after the step-4 checkpoint), then rerun: auto-resume, exact."""
    run_dir = str(env["root"] / "killed")
    c = env["cfg"]
    argv = [sys.executable, "train_minimax.py", "--config", "configs/tiny.yaml", "--data_dir", c["data_dir"],
            "--base", c["base"], "--subset", "custom", "--cache_dir", c["cache_dir"], "--epochs", "3",
            "--ema_decay", "0.9999", "--run_dir", run_dir, "--debug_kill_step", "4"]
    proc = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert load(os.path.join(run_dir, "checkpoint.pt"))["step"] == 4
    assert not [f for f in os.listdir(run_dir) if f.startswith(".tmp")]  # no half-written files left
    run(env, "killed")
    assert_same_state(load(os.path.join(run_dir, "checkpoint.pt")), straight)


def test_cli_error_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "train_minimax.py", "--config", "configs/tiny.yaml", "--lamda_r", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == "error: unknown config key 'lamda_r'; did you mean 'lambda_r'?\n"


def test_finished_run_is_not_retrained(env, straight, capsys):
    before = file_sha256(env["root"] / "straight" / "checkpoint.pt")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = env["root"] / "straight" / f".tmp-checkpoint.pt.{dead.pid}.x1y2z3w4"  # a write killed mid-way
    leftover.write_bytes(b"partial")
    out = run(env, "straight")
    assert out["step"] == 9 and "nothing to do" in capsys.readouterr().out
    assert file_sha256(env["root"] / "straight" / "checkpoint.pt") == before
    assert not leftover.exists()  # the rerun of the same command removed it


def test_latent_cache_and_on_the_fly_encoding_agree(env, half):
    """With an exact cache (float32, pixel encoder) both paths draw the same flips and eps: identical training."""
    run(env, "nocache", max_steps=4, latent_cache=False)
    assert_same_state(load(env["root"] / "nocache" / "checkpoint.pt"), load(env["root"] / "half-step4.pt"))


def test_grad_checkpointing_changes_nothing_and_bf16_runs(env):
    run(env, "plain2", max_steps=2)
    run(env, "gc2", max_steps=2, grad_checkpointing=True)
    a, b = load(env["root"] / "plain2" / "checkpoint.pt"), load(env["root"] / "gc2" / "checkpoint.pt")
    assert all(torch.equal(a["params"][n], b["params"][n]) for n in a["params"])
    out = run(env, "bf16", max_steps=2, bf16=True)
    assert out["step"] == 2 and np.isfinite(out["last_log"]["loss"])


def test_base_mode_resume_is_exact(env):
    data = make_images(str(env["root"] / "digits-resume"), ["0", "1"], per_class=4)  # 2 steps per epoch
    run(env, "base-straight", mode="base", data_dir=data, epochs=2)
    run(env, "base-split", mode="base", data_dir=data, epochs=2, max_steps=3)
    run(env, "base-split", mode="base", data_dir=data, epochs=2)
    a, b = load(env["root"] / "base-straight" / "checkpoint.pt"), load(env["root"] / "base-split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for key in ("params", "ema"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key])


def test_data_order_depends_on_seed_and_epoch_only():
    assert torch.equal(epoch_permutation(0, 3, 50), epoch_permutation(0, 3, 50))
    assert not torch.equal(epoch_permutation(0, 3, 50), epoch_permutation(0, 4, 50))
    assert sorted(epoch_permutation(1, 0, 50).tolist()) == list(range(50))


#################################################################################
#                             Checkpoint contents                               #
#################################################################################

def test_checkpoint_holds_only_what_training_changes(env, straight):
    from models.loading import load_dit
    path = env["root"] / "straight" / "checkpoint.pt"
    ck = straight
    assert (ck["format"], ck["version"], ck["kind"], ck["world_size"]) == ("minimax-diffusion-ckpt", 1, "adapter", 1)
    assert ck["base"] == {"source": env["cfg"]["base"], "sha256": file_sha256(env["cfg"]["base"])}
    assert ck["difffit"] == {"mode": "difffit", "gamma_blocks": [0, 1]}
    names = set(ck["params"])
    assert names == set(ck["ema"]) and "y_embedder.embedding_table.weight" in names
    assert all(n.endswith(".bias") or "gamma" in n or "embedding_table" in n for n in names)
    assert "pos_embed" not in names and not any(n.endswith("qkv.weight") for n in names)
    assert ck["class_labels"] == [155, 159, 162]  # ImageNet indices of the wnids, not folder positions
    assert ck["config"]["lr"] == 1e-3 and ck["subset"]["wnids"] == WOOF
    assert set(ck["rng"][0]) >= {"torch", "numpy", "python", "generators"}
    assert os.path.getsize(path) < 3e6
    # the EMA started at the base weights and moved by (1 - 0.9999) per step: close to the base, not equal
    base = torch.load(env["cfg"]["base"], weights_only=True)
    b = base["blocks.0.attn.qkv.bias"]
    assert not torch.equal(ck["ema"]["blocks.0.attn.qkv.bias"], b)
    assert torch.allclose(ck["ema"]["blocks.0.attn.qkv.bias"], b, atol=1e-4)
    # load_dit reads it: base + EMA adapter by default, the raw trained params with ema=False
    model = load_dit(str(path))
    sd = model.state_dict()
    assert all(torch.equal(sd[n], ck["ema"][n]) for n in names)
    assert torch.equal(sd["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])
    raw = load_dit(str(path), ema=False).state_dict()
    assert all(torch.equal(raw[n], ck["params"][n]) for n in names)


def test_ema_update_matches_dit_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA({"p": p}, decay=0.9)
    with torch.no_grad():
        p.add_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow[0], 0.9 * torch.tensor([1.0, 2.0]) + 0.1 * torch.tensor([2.0, 3.0]))


#################################################################################
#                                Class labels                                   #
#################################################################################

@pytest.mark.parametrize("init_class", [None, "n02086240"])
def test_custom_classes_get_their_own_rows(env, init_class):
    data = make_images(str(env["root"] / f"data-custom-{init_class}"), ["my_dogs", WOOF[0]], per_class=2)
    run(env, f"custom-{init_class}", data_dir=data, batch_size=2, epochs=1, init_class=init_class)
    ck = load(env["root"] / f"custom-{init_class}" / "checkpoint.pt")
    table = ck["ema"]["y_embedder.embedding_table.weight"]
    assert table.shape == (1002, 64) and ck["class_labels"] == [1001, 155]  # "my_dogs" after the null row
    base = torch.load(env["cfg"]["base"], weights_only=True)["y_embedder.embedding_table.weight"]
    init = base[:1000].mean(0) if init_class is None else base[155]
    assert torch.allclose(table[1001], init, atol=1e-5)  # EMA barely moved from the initial row
    assert not torch.equal(ck["params"]["y_embedder.embedding_table.weight"][1001], init)  # Difffit trains it


def test_base_mode_then_finetune_from_it(env):
    """The demo's path: train a tiny DiT from scratch (kind full), then fine-tune it with its own class labels."""
    from models.loading import load_dit
    data = make_images(str(env["root"] / "digits"), ["0", "1", "2"], per_class=4)
    run(env, "base", mode="base", data_dir=data, epochs=1)
    path = env["root"] / "base" / "checkpoint.pt"
    ck = load(path)
    assert ck["kind"] == "full" and ck["base"] is None and ck["class_labels"] == [0, 1, 2]
    assert ck["arch"]["num_classes"] == 3 and set(ck["params"]) == set(ck["ema"])  # whole state dicts
    assert not ck["criterion"]
    model = load_dit(str(path))
    assert torch.equal(model.state_dict()["pos_embed"], ck["params"]["pos_embed"])
    out = run(env, "ft-from-base", base=str(path), data_dir=data, epochs=1)
    ft = load(out["checkpoint"])
    assert ft["class_labels"] == [0, 1, 2] and ft["params"]["y_embedder.embedding_table.weight"].shape == (4, 64)
    assert ft["base"]["sha256"] == file_sha256(path)


#################################################################################
#                         Non-finite loss and user errors                       #
#################################################################################

def test_nan_stops_and_keeps_last_checkpoint(env, capsys):
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 3.*checkpoint.*is intact"):
        run(env, "nan", debug_nan_step=3)
    ck = load(env["root"] / "nan" / "checkpoint.pt")
    assert ck["step"] == 2  # written at step 2 (ckpt_every 2), never after the NaN
    from train_minimax import main
    argv = ["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--data_dir", env["cfg"]["data_dir"],
            "--base", env["cfg"]["base"], "--subset", "custom", "--cache_dir", env["cfg"]["cache_dir"],
            "--run_dir", str(env["root"] / "nan2"), "--debug_nan_step", "1"]
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: non-finite loss at step 1") and err.count("\n") == 1
    assert not os.path.exists(env["root"] / "nan2" / "checkpoint.pt")


def cli_error(env, capsys, monkeypatch, argv):
    """Run the CLI in-process with heavy work forbidden; returns the error line (exit 2)."""
    import engines.train.run as trainer
    from train_minimax import main

    def no_heavy_work(*a, **k):
        raise AssertionError("heavy work started before the error")
    monkeypatch.setattr(trainer, "load_vae", no_heavy_work)
    base = ["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--data_dir", env["cfg"]["data_dir"],
            "--base", env["cfg"]["base"], "--subset", "custom", "--cache_dir", env["cfg"]["cache_dir"],
            "--ema_decay", "0.9999"]
    with pytest.raises(SystemExit) as e:
        run_cli(main, base + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_user_errors_before_heavy_work(env, straight, capsys, monkeypatch, tmp_path):
    r = str(tmp_path / "run")
    assert "data_dir /nonexistent: folder not found" in cli_error(env, capsys, monkeypatch, ["--run_dir", r, "--data_dir", "/nonexistent"])
    assert "missing" in cli_error(env, capsys, monkeypatch, ["--run_dir", r, "--subset", "imagewoof"])
    assert "did you mean 'lambda_r'" in cli_error(env, capsys, monkeypatch, ["--run_dir", r, "--lamda_r", "1"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "which is a file" in cli_error(env, capsys, monkeypatch, ["--run_dir", str(blocker / "run")])
    assert "mode must be one of" in cli_error(env, capsys, monkeypatch, ["--run_dir", r, "--mode", "fine"])


def test_resume_refusals_leave_checkpoint_untouched(env, straight, half, capsys, monkeypatch):
    run_dir = env["root"] / "straight"
    ckpt = run_dir / "checkpoint.pt"
    before = file_sha256(ckpt)
    other = make_base(str(env["root"] / "other-base.pt"), seed=1)
    err = cli_error(env, capsys, monkeypatch, ["--run_dir", str(run_dir), "--base", other, "--epochs", "4"])
    assert "sha256" in err and "--base" in err
    err = cli_error(env, capsys, monkeypatch, ["--run_dir", str(run_dir), "--lr", "0.01", "--epochs", "4"])
    assert "lr=0.001 (now 0.01)" in err
    err = cli_error(env, capsys, monkeypatch, ["--run_dir", str(run_dir), "--auto_resume", "false"])
    assert "never overwritten" in err
    err = cli_error(env, capsys, monkeypatch, ["--run_dir", str(run_dir), "--mode", "base"])
    assert "'adapter' checkpoint" in err
    other_ckpt = str(env["root"] / "half-step4.pt")
    err = cli_error(env, capsys, monkeypatch, ["--run_dir", str(run_dir), "--resume", other_ckpt])
    assert "would be overwritten" in err
    err = cli_error(env, capsys, monkeypatch, ["--run_dir", str(env["root"] / "new"), "--resume", env["cfg"]["base"]])
    assert "not a training checkpoint" in err
    err = cli_error(env, capsys, monkeypatch, ["--run_dir", str(env["root"] / "new"), "--resume", "/nonexistent.pt"])
    assert "resume /nonexistent.pt not found" in err
    assert file_sha256(ckpt) == before and hashlib.sha256(ckpt.read_bytes()).hexdigest() == before


def test_flip_off_never_mirrors_and_keeps_the_noise_stream(tmp_path):
    """The digits demo trained its DiT on mirrored digits half the time (a mirrored 3 is no digit): flip=False
    must give exactly the stored images, on the fly and from the latent cache, with the same eps draws after."""
    from data.folder import SubsetImageFolder
    from data.latent_cache import build_latent_cache
    from data.subsets import resolve_subset
    from engines.train.run import epoch_batches
    from models.vae import load_vae
    rng = np.random.RandomState(0)
    for c in ("a", "b"):
        os.makedirs(tmp_path / "img" / c)
        for i in range(4):  # left half bright, right half dark: a mirror is easy to tell
            x = np.zeros((8, 8, 3), np.uint8)
            x[:, :4] = 200 + rng.randint(0, 50, (8, 4, 3))
            Image.fromarray(x).save(tmp_path / "img" / c / f"{i}.png")
    subset = resolve_subset("custom", str(tmp_path / "img"))
    ds = SubsetImageFolder(str(tmp_path / "img"), subset, 8, flip=False)
    vae = load_vae("pixel")
    want = torch.stack([ds.load(i, flip=False) for i in range(8)]) * vae.scale  # (8, 3, 8, 8)
    perm = torch.arange(8)
    cache = build_latent_cache(ds, vae, str(tmp_path / "cache"), dtype="float32", progress=False)
    for source in (None, cache):
        got = {}
        for flip in (False, True):
            gen = torch.Generator().manual_seed(3)
            (z, y), = list(epoch_batches(ds, source, vae, perm, 0, 1, 0, 1, 8, gen, torch.device("cpu"), 0, flip=flip))
            got[flip] = (z, torch.rand(1, generator=gen))
        assert torch.equal(got[False][0], want)  # nothing mirrored
        assert not torch.equal(got[True][0], want)  # with flips, some are (seed 3 draws at least one)
        assert torch.equal(got[False][1], got[True][1])  # the generator advanced the same way
