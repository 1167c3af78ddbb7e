"""The full-size rehearsal's own pieces (scripts/rehearse.py) and the fixes it needed; the rehearsal itself runs in
.ci/run (minutes at full size), not here."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.rehearse import SD_VAE_CONFIG, random_dit_state  # noqa: E402
from utils.dist import cuda_placement  # noqa: E402


def test_random_dit_state_is_the_original_layout_and_loads_strictly(tmp_path):
    from models.dit import DiT_models
    from models.loading import identify_source, load_dit
    state = random_dit_state("DiT-T/2", input_size=8, seed=0)
    ref = DiT_models["DiT-T/2"](input_size=8, num_classes=1000).state_dict()
    assert list(state) == list(ref)  # the original key names, in the original order
    assert all(state[k].shape == ref[k].shape and state[k].dtype == torch.float32 for k in ref)
    assert torch.equal(state["pos_embed"], ref["pos_embed"])  # the fixed sin-cos table, as in the original file
    assert all(state[k].abs().min() >= 0 and state[k].std() > 0 for k in ref if k != "pos_embed")  # no zero-init
    assert torch.equal(random_dit_state("DiT-T/2", 8, seed=0)["blocks.3.mlp.fc1.weight"],
                       state["blocks.3.mlp.fc1.weight"])  # seeded
    path = tmp_path / "DiT-T-2.pt"
    torch.save(state, path)
    assert identify_source(str(path))["format"] == "original"
    model = load_dit(str(path), num_heads=4)
    assert model.arch["depth"] == 4 and model.arch["hidden_size"] == 64 and model.num_classes == 1000
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_random_dit_xl_state_has_the_original_checkpoint_keys_and_count():
    # DiT-XL-2-256x256.pt: 675,129,632 values under these shapes (checked on meta tensors: nothing is allocated)
    from models.dit import DiT_models
    with torch.device("meta"):
        ref = DiT_models["DiT-XL/2"](input_size=32, num_classes=1000).state_dict()
    assert sum(v.numel() for v in ref.values()) == 675_129_632
    assert ref["y_embedder.embedding_table.weight"].shape == (1001, 1152) and ref["pos_embed"].shape == (1, 256, 1152)


def test_sd_vae_config_is_the_published_architecture():
    from diffusers import AutoencoderKL
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        vae = AutoencoderKL(**SD_VAE_CONFIG)
    # stabilityai/sd-vae-ft-ema (and ft-mse): 83,653,863 parameters, 8x downsampling to 4 latent channels
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8 and vae.config.latent_channels == 4


@pytest.mark.parametrize("local,world,gpus,want", [(0, 1, 1, (0, "nccl")), (1, 2, 1, (0, "gloo")),
                                                   (1, 2, 2, (1, "nccl")), (3, 4, 2, (1, "gloo")),
                                                   (5, 8, 8, (5, "nccl"))])
def test_cuda_placement_shares_a_gpu_with_gloo(local, world, gpus, want):
    # torchrun with 2 processes on a 1-GPU machine: rank 1 asked for cuda:1 and NCCL refuses two ranks on one GPU
    assert cuda_placement(local, world, gpus) == want


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "rehearse.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_rehearse_bad_out_is_one_line_exit_2(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    for out, words in ((f / "out", "is a file"), (os.path.join(ROOT, "rehearsal-out"), "inside the repository"),
                       (full, "not empty")):
        r = _run(str(out))
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and words in r.stderr and "Traceback" not in r.stderr
    assert f.read_text() == "keep" and os.listdir(full) == ["x"] and not os.path.exists(
        os.path.join(ROOT, "rehearsal-out"))
