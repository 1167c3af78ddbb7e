"""Difffit as the Minimax authors apply it: what trains, the parameter count, identity at init, gradients."""
import copy

import pytest
import torch

from helpers import make_tiny_dit, randomize_gammas_, tiny_inputs
from models.difffit import apply_difffit, count_trainable
from models.dit import DiT_models


def _xl():
    with torch.device("meta"):
        return DiT_models["DiT-XL/2"]()


def test_difffit_xl_count():
    model = _xl()
    names = set(apply_difffit(model))
    assert count_trainable(model) == 1_739_552  # SPEC §2
    assert model.gamma_blocks == list(range(14))
    sizes = {"table": 0, "bias": 0, "gamma": 0}
    for n, p in model.named_parameters():
        if p.requires_grad:
            sizes["bias" if n.endswith(".bias") else "gamma" if "gamma" in n else "table"] += p.numel()
    assert sizes == {"table": 1_153_152, "bias": 489_632, "gamma": 96_768}
    assert names == {n for n, p in model.named_parameters() if p.requires_grad} and "pos_embed" not in names


def test_bitfit_and_full_modes():
    model = _xl()
    names = apply_difffit(model, mode="bitfit")
    assert names and all(n.endswith(".bias") for n in names) and model.gamma_blocks == []
    assert count_trainable(model) == 489_632
    model = _xl()
    apply_difffit(model, mode="full")
    assert count_trainable(model) == 675_129_632 - 294_912  # all but the fixed position embedding
    with pytest.raises(ValueError, match="unknown fine-tuning mode"):
        apply_difffit(_xl(), mode="lora")


def test_gammas_at_one_are_identity():
    model = make_tiny_dit()
    x, t, y = tiny_inputs(model)
    with torch.no_grad():
        before = model(x, t, y)
        after = copy.deepcopy(model).enable_gammas([0, 1])(x, t, y)
    assert torch.equal(before, after)


def test_gradients_reach_exactly_the_trainable_params():
    model = make_tiny_dit()
    apply_difffit(model)  # gammas in block 0 of 2
    randomize_gammas_(model)
    x, t, y = tiny_inputs(model)
    model(x, t, y).square().mean().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"blocks.0.gamma1", "blocks.0.attn.gamma1", "y_embedder.embedding_table.weight"} <= trained
    assert "blocks.1.gamma1" not in trained and "blocks.0.attn.qkv.weight" not in trained
