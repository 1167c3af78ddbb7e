"""load_dit: every supported format reproduces the original DiT function; diffusers weights are converted exactly;
every bad input is a one-line UserError (and exit 2 from the CLI)."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from helpers import (TINY, make_tiny_diffusers_dit, make_tiny_dit, randomize_, randomize_gammas_, rel_err,
                     save_original, save_training_ckpt, tiny_inputs)
from models.difffit import apply_difffit, trainable_state
from models.loading import identify_source, load_dit
from models.loading import main as loading_main
from utils.errors import UserError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _same_function(a, b, tol=1e-5):
    x, t, y = tiny_inputs(b)
    with torch.no_grad():
        assert rel_err(a(x, t, y), b(x, t, y)) < tol


#################################################################################
#                         (a) original, (b) Minimax authors'                     #
#################################################################################

def test_original_plain_and_training_checkpoint(tmp_path):
    raw, ema = make_tiny_dit(seed=0), make_tiny_dit(seed=1)
    save_original(ema, tmp_path / "plain.pt")
    save_training_ckpt(raw, tmp_path / "train.pt", ema=ema)
    loaded = load_dit(tmp_path / "plain.pt", num_heads=2)
    assert loaded.arch == ema.arch and not loaded.training and loaded.gamma_blocks == []
    assert not loaded.pos_embed.requires_grad and all(p.requires_grad for n, p in loaded.named_parameters()
                                                      if n != "pos_embed")
    _same_function(loaded, ema)
    _same_function(load_dit(tmp_path / "train.pt", num_heads=2), ema)  # EMA by default
    _same_function(load_dit(tmp_path / "train.pt", num_heads=2, ema=False), raw)
    info = identify_source(tmp_path / "plain.pt")
    assert info["format"] == "original" and len(info["sha256"]) == 64
    from safetensors.torch import save_file
    save_file(ema.state_dict(), tmp_path / "plain.safetensors")
    _same_function(load_dit(tmp_path / "plain.safetensors", num_heads=2), ema)


def test_registry_size_gives_heads(tmp_path):
    ref = make_tiny_dit(depth=4, hidden_size=64, num_heads=4)  # = DiT-T/2
    save_original(ref, tmp_path / "t2.pt")
    _same_function(load_dit(tmp_path / "t2.pt"), ref)
    _same_function(load_dit(tmp_path / "t2.pt", model="DiT-T/2"), ref)
    with pytest.raises(UserError, match="DiT-S/2 has depth 12"):
        load_dit(tmp_path / "t2.pt", model="DiT-S/2")


def test_minimax_authors_checkpoint(tmp_path):
    ref = randomize_gammas_(make_tiny_dit(gamma_blocks=[0]))  # gammas in the first half, as the authors'
    path = save_training_ckpt(ref, tmp_path / "minimax.pt",
                              args=argparse.Namespace(model="DiT-XL/2", spec="woof", lambda_pos=0.002))
    with pytest.raises(Exception):  # the Namespace really is in the pickle: plain weights_only refuses it
        torch.load(path, weights_only=True)
    loaded = load_dit(path, num_heads=2)
    assert loaded.gamma_blocks == [0]
    _same_function(loaded, ref)
    assert identify_source(path)["format"] == "minimax-authors"


#################################################################################
#                                  (c) diffusers                                 #
#################################################################################

@pytest.fixture(scope="module")
def diffusers_dit(tmp_path_factory):
    d = tmp_path_factory.mktemp("diffusers")
    model = make_tiny_diffusers_dit()
    model.save_pretrained(d / "flat")
    model.save_pretrained(d / "pipe" / "transformer")  # pipeline layout, as facebook/DiT-XL-2-256
    return model, d


def test_diffusers_conversion_is_exact(diffusers_dit):
    dm, d = diffusers_dit
    ours = load_dit(d / "pipe")  # heads from config.json
    assert ours.arch == dict(TINY, mlp_ratio=4.0, class_dropout_prob=0.1, learn_sigma=True)
    x, t, y = tiny_inputs(ours)
    with torch.no_grad():
        out = ours(x, t, y)
        raw = dm(x, t, class_labels=y).sample
        blocks = dm.transformer_blocks
        try:  # undo diffusers' frequency shift (divide by 128, not 127): the only material difference
            for b in blocks:
                b.norm1.emb.time_proj.downscale_freq_shift = 0
            freq_fixed = dm(x, t, class_labels=y).sample
            for b in blocks:  # and its MLP LayerNorm eps (config norm_eps 1e-5 vs the original 1e-6)
                b.norm3.eps = 1e-6
            both_fixed = dm(x, t, class_labels=y).sample
        finally:
            for b in blocks:
                b.norm1.emb.time_proj.downscale_freq_shift, b.norm3.eps = 1, 1e-5
    assert rel_err(out, both_fixed) < 1e-6  # measured 0.0: the conversion is exact
    assert rel_err(out, freq_fixed) < 1e-5  # measured 1.5e-6: the eps difference is negligible
    assert rel_err(out, raw) > 0.1  # measured 0.245 (SPEC: ~26 %): diffusers' forward is a different function
    _same_function(load_dit(d / "flat"), ours, tol=1e-7)
    info = identify_source(d / "pipe")
    assert info["format"] == "diffusers" and len(info["sha256"]) == 64


def test_diffusers_embedder_copies_must_agree(tmp_path):
    dm = make_tiny_diffusers_dit()
    with torch.no_grad():
        dm.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1)
    dm.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="different timestep/class embedders in blocks 1"):
        load_dit(tmp_path)


def test_hub_id_resolves_to_transformer_subfolder(diffusers_dit, monkeypatch):
    import huggingface_hub
    _, d = diffusers_dit
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: str(d / "pipe"))
    _same_function(load_dit("facebook/DiT-XL-2-256"), load_dit(d / "pipe"), tol=1e-7)
    assert identify_source("facebook/DiT-XL-2-256")["format"] == "diffusers"


def test_hub_id_offline_is_user_error():
    with pytest.raises(UserError, match="download it once"):
        load_dit("nonexistent-org-xyz/nonexistent-dit")


#################################################################################
#                           (d) this project's checkpoints                       #
#################################################################################

def _adapter(tmp_path, base_path, extra=2):
    """What train_minimax.py writes: base loaded with load_dit, Difffit applied, classes extended, then trained."""
    model = load_dit(base_path, num_heads=2)
    model.extend_classes(extra)
    apply_difffit(model, gamma_blocks=[0])
    randomize_gammas_(randomize_(model, seed=5, only_trainable=True))
    params = trainable_state(model)
    ema_model = load_dit(base_path, num_heads=2).extend_classes(extra)
    apply_difffit(ema_model, gamma_blocks=[0])
    with torch.no_grad():  # EMA: something between base and trained
        for n, p in ema_model.named_parameters():
            if n in params:
                p.copy_(0.5 * p + 0.5 * params[n])
    ckpt = {"format": "minimax-diffusion-ckpt", "version": 1, "kind": "adapter", "arch": model.arch,
            "base": {"source": str(base_path), "sha256": identify_source(base_path)["sha256"]},
            "difffit": {"mode": "difffit", "gamma_blocks": [0]}, "params": params,
            "ema": trainable_state(ema_model), "step": 3, "config": {"lr": 1e-3}}
    torch.save(ckpt, tmp_path / "adapter.pt")
    return tmp_path / "adapter.pt", model, ema_model


def test_adapter_checkpoint(tmp_path):
    base = save_original(make_tiny_dit(seed=3), tmp_path / "base.pt")
    sha = identify_source(base)["sha256"]
    path, trained, ema_model = _adapter(tmp_path, base)
    assert identify_source(base)["sha256"] == sha  # training the loaded (memory-mapped) weights left the file alone
    loaded = load_dit(path)  # heads from the recorded arch
    assert loaded.gamma_blocks == [0] and loaded.extra_classes == 2
    _same_function(loaded, ema_model)
    _same_function(load_dit(path, ema=False), trained)
    assert identify_source(path)["format"] == "adapter"
    os.rename(base, tmp_path / "moved.pt")
    _same_function(load_dit(path, base_source=tmp_path / "moved.pt"), ema_model)
    save_original(make_tiny_dit(seed=4), tmp_path / "moved.pt")  # a different base
    with pytest.raises(UserError, match=r"moved.pt have sha256 [0-9a-f]{64} but adapter .* sha256 [0-9a-f]{64}"):
        load_dit(path, base_source=tmp_path / "moved.pt")


def test_full_checkpoint(tmp_path):
    ref = randomize_gammas_(make_tiny_dit(seed=6, gamma_blocks=[0, 1]))
    sd = ref.state_dict()
    torch.save({"format": "minimax-diffusion-ckpt", "version": 1, "kind": "full", "arch": ref.arch, "base": None,
                "difffit": {"mode": "full", "gamma_blocks": [0, 1]}, "params": sd, "ema": sd}, tmp_path / "f.pt")
    loaded = load_dit(tmp_path / "f.pt")
    assert loaded.gamma_blocks == [0, 1]
    _same_function(loaded, ref)
    with pytest.raises(UserError, match="config says 2 heads but num_heads says 4"):
        load_dit(tmp_path / "f.pt", num_heads=4)


#################################################################################
#                                    Errors                                      #
#################################################################################

def test_strict_keys(tmp_path):
    sd = make_tiny_dit().state_dict()
    sd.pop("blocks.1.attn.proj.bias")
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    sd["blocks.0.mlp.fc2.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(UserError) as e:
        load_dit(tmp_path / "bad.pt", num_heads=2)
    msg = str(e.value)
    assert "\n" not in msg and "1 missing (blocks.1.attn.proj.bias)" in msg
    assert "1 unexpected (blocks.0.extra.weight)" in msg and "blocks.0.mlp.fc2.bias (5,) vs (32,)" in msg


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.txt").write_text("not a checkpoint\n")
    save_original(make_tiny_dit(), d / "tiny.pt")
    torch.save({"obj": argparse.ArgumentParser}, d / "evil.pt")
    return d


@pytest.mark.parametrize("case, pattern", [
    ("missing", "no such checkpoint file or folder"),
    ("notes.txt", "is not a readable checkpoint"),
    ("evil.pt", "refused for safety"),
    ("other-arch", "but DiT-XL/2 has depth 28"),
    ("unknown-name", "unknown model 'DiT-Q/2'"),
])
def test_cli_errors_are_one_line(bad_sources, capsys, case, pattern):
    tiny = str(bad_sources / "tiny.pt")
    argv = {"missing": [str(bad_sources / "nope.pt")], "notes.txt": [str(bad_sources / "notes.txt")],
            "evil.pt": [str(bad_sources / "evil.pt")], "other-arch": [tiny, "--model", "DiT-XL/2"],
            "unknown-name": [tiny, "--model", "DiT-Q/2"]}[case]
    with pytest.raises(SystemExit) as e:  # what `python -m models.loading ARGS` runs (test_cli_subprocess)
        run_cli(loading_main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and pattern in err


def test_cli_prints_architecture(bad_sources, capsys):
    loading_main([str(bad_sources / "tiny.pt"), "--num_heads", "2"])
    out = capsys.readouterr().out
    assert "format: original" in out and '"depth": 2' in out and "parameters: 51,680" in out


def test_cli_subprocess(bad_sources):
    """The real entry point: an error is one line on stderr, exit 2, no traceback."""
    bad = subprocess.run([sys.executable, "-m", "models.loading", str(bad_sources / "tiny.pt")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert "pass num_heads" in bad.stderr and bad.stderr.count("\n") == 1
