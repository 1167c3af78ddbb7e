"""Rules across keys that no single key's declaration can check: image size against the VAE's downsampling and the
DiT's patch, and the guidance defaults that follow the sampler's own keys (mode_stop, modes_vae)."""
import json
import os
import subprocess
import sys

import pytest

import engines.sample as sample
import engines.train as train
from engines.sample.schema import resolve_guidance
from models import check_image_size, vae_downsampling
from utils.config import resolve
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vae_downsampling_is_read_without_loading(tmp_path):
    assert vae_downsampling("pixel") == 1
    assert vae_downsampling("stabilityai/sd-vae-ft-ema") == vae_downsampling("stabilityai/sd-vae-ft-mse") == 8
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"block_out_channels": [32, 64, 64]}))
    assert vae_downsampling(str(folder)) == 4
    nested = tmp_path / "pipe"
    (nested / "vae").mkdir(parents=True)
    (nested / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 8, 8, 8]}))
    assert vae_downsampling(str(nested)) == 8
    assert vae_downsampling(str(tmp_path / "missing")) is None  # unknown until load_vae (which names the problem)


@pytest.mark.parametrize("size, vae, model, step", [(7, "pixel", "DiT-T/2", 2), (30, "pixel", "DiT-S/4", 4),
                                                    (260, "stabilityai/sd-vae-ft-ema", "DiT-XL/2", 16),
                                                    (100, "stabilityai/sd-vae-ft-mse", None, 8)])
def test_image_size_must_be_a_multiple_of_downsampling_times_patch(size, vae, model, step):
    line = check_image_size(size, vae, model)
    below, above = size // step * step, size // step * step + step
    assert line.startswith(f"image_size {size} does not fit") and f"multiple of {step}" in line
    assert f"{below} or {above}" in line and "--image_size" in line
    for ok in (below, above):
        assert check_image_size(ok, vae, model) is None
    assert check_image_size(3, "pixel", "DiT-T/2") == ("image_size 3 does not fit: vae pixel downsamples by 1 and "
                                                       "DiT-T/2 patches by 2, so image_size must be a multiple of 2 "
                                                       "(e.g. 2 or 4); set --image_size")
    assert "(e.g. 16)" in check_image_size(7, "stabilityai/sd-vae-ft-ema", "DiT-XL/2")  # no 0 suggested


def _train_args(tmp_path, *extra):
    data = tmp_path / "D"
    (data / "a").mkdir(parents=True, exist_ok=True)
    return ["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--mode", "base", "--subset", "custom",
            "--data_dir", str(data), "--run_dir", str(tmp_path / "run"), *extra]


def test_train_image_size_7_is_one_line_before_anything_loads(tmp_path):
    with pytest.raises(UserError, match=r"^image_size 7 does not fit: vae pixel downsamples by 1 and DiT-T/2 "
                                        r"patches by 2, so image_size must be a multiple of 2 \(e.g. 6 or 8\)"):
        train.main(_train_args(tmp_path, "--image_size", "7"))
    # the real command: exit 2, one line, no traceback, nothing written
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_minimax.py"),
                        *_train_args(tmp_path, "--image_size", "7")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "image_size 7" in r.stderr
    assert not (tmp_path / "run").exists()


def test_train_finetune_leaves_the_patch_to_the_base_weights():
    cfg = resolve(train.CONFIG, {"mode": "finetune", "vae": "pixel", "image_size": 7, "model": "DiT-XL/2",
                                 "data_dir": ".", "device": "cpu"})
    train.check_config(cfg)  # the base's input size is checked against the latent when it loads
    with pytest.raises(UserError, match="image_size 36 does not fit: vae stabilityai/sd-vae-ft-ema downsamples by 8"):
        train.check_config(dict(cfg, vae="stabilityai/sd-vae-ft-ema", image_size=36))


def _sample_cfg(**kw):
    base = {"ckpt": "none", "out": "o", "device": "cpu", "guidance": "mode", "train_dir": "."}
    return resolve(sample.CONFIG, dict(base, **kw))


def test_sample_image_size_checked_against_vae_and_model():
    with pytest.raises(UserError, match=r"multiple of 16 \(e.g. 256 or 272\)"):
        sample.check_config(_sample_cfg(image_size=260, guidance="none"))
    with pytest.raises(UserError, match=r"multiple of 2 \(e.g. 6 or 8\)"):
        sample.check_config(_sample_cfg(image_size=7, vae="pixel", model="DiT-T/2", guidance="none"))
    sample.check_config(_sample_cfg(image_size=7, vae="pixel", model=None, guidance="none"))  # any model: at load


@pytest.mark.parametrize("vae, expected", [("pixel", "pixel"),
                                           ("stabilityai/sd-vae-ft-mse", "stabilityai/sd-vae-ft-ema"),
                                           ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-ema"),
                                           ("my/local-vae", "my/local-vae")])
def test_modes_vae_follows_the_sampler_vae_unless_set(vae, expected):
    cfg = _sample_cfg(vae=vae, image_size=64 if vae != "pixel" else 16, model=None)
    assert cfg["modes_vae"] is None
    sample.check_config(cfg)  # resolves in place: the manifest records what was used
    assert cfg["modes_vae"] == expected
    set_ = _sample_cfg(vae="pixel", image_size=16, model=None, modes_vae="stabilityai/sd-vae-ft-ema")
    with pytest.raises(UserError, match="do not work in the same space"):  # an explicit value is kept and checked
        sample.check_config(set_)


@pytest.mark.parametrize("steps, stop", [(50, 25), (10, 5), (25, 12), (3, 1), (2, 1)])
def test_mode_stop_follows_num_steps_unless_set(steps, stop):
    cfg = _sample_cfg(vae="pixel", image_size=16, model=None, num_steps=steps)
    if stop >= steps - 1:  # 2 steps leave no index above any stop: refused, one line naming the range
        with pytest.raises(UserError, match=r"mode_stop must be in 0\.\.0"):
            sample.check_config(cfg)
        return
    sample.check_config(cfg)
    assert cfg["mode_stop"] == stop
    with pytest.raises(UserError, match=r"mode_stop must be in 0\.\.8 .* got 25"):  # an explicit value is kept
        sample.check_config(_sample_cfg(vae="pixel", image_size=16, model=None, num_steps=10, mode_stop=25))


def test_guidance_defaults_stay_null_without_guidance():
    cfg = _sample_cfg(vae="pixel", image_size=16, model=None, guidance="none")
    sample.check_config(cfg)
    assert cfg["mode_stop"] is None and cfg["modes_vae"] is None
    assert resolve_guidance(dict(cfg))["mode_stop"] == 25
