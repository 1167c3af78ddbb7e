"""The DiT registry (timm style: every entry), the timestep embedding, classifier-free guidance and gradient
checkpointing."""
import math

import pytest
import torch

from helpers import make_tiny_dit, randomize_, tiny_inputs
from models.dit import DIT_SIZES, DiT_models, TimestepEmbedder, registry_arch

SMALL = [n for n in DiT_models if n.split("-")[1][0] in "ST"]
LARGE = [n for n in DiT_models if n not in SMALL]


def expected_params(depth, hidden, patch, input_size=32, in_ch=4, classes=1000):
    """DiT parameter count written out layer by layer (learned sigma: 2 * in_ch output channels)."""
    d, out = hidden, 2 * in_ch
    embed = (in_ch * patch * patch * d + d) + (256 * d + d + d * d + d) + (classes + 1) * d
    pos = (input_size // patch) ** 2 * d
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + (6 * d * d + 6 * d)
    final = (d * patch * patch * out + patch * patch * out) + (2 * d * d + 2 * d)
    return embed + pos + depth * block + final


def test_registry_covers_every_size_and_patch():
    assert set(DiT_models) == {f"DiT-{s}/{p}" for s in DIT_SIZES for p in (2, 4, 8)}
    assert registry_arch("DiT-XL/2") == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)


@pytest.mark.parametrize("name", SMALL)
def test_small_models_forward(name):
    arch = registry_arch(name)
    size = 16 if arch["patch_size"] == 8 else 8  # 4-16 tokens: the test checks wiring, not speed
    model = DiT_models[name](input_size=size, num_classes=10).eval()
    randomize_(model.final_layer)  # zero-initialised layers: make the output (and the last block) non-trivial
    randomize_(model.blocks[-1].adaLN_modulation)
    x = torch.randn(2, 4, size, size)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]), torch.tensor([3, 10]))  # 10 = the null class
    assert out.shape == (2, 8, size, size) and torch.isfinite(out).all() and out.std() > 0
    assert sum(p.numel() for p in model.parameters()) == expected_params(arch["depth"], arch["hidden_size"],
                                                                         arch["patch_size"], size, classes=10)


@pytest.mark.parametrize("name", LARGE)
def test_large_models_on_meta(name):
    with torch.device("meta"):
        model = DiT_models[name]()
        out = model(torch.randn(2, 4, 32, 32), torch.tensor([1, 2]), torch.tensor([3, 1000]))
    assert out.shape == (2, 8, 32, 32)
    arch = registry_arch(name)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_params(arch["depth"], arch["hidden_size"], arch["patch_size"])
    if name == "DiT-XL/2":
        assert n == 675_129_632 and model.pos_embed.numel() == 294_912


def test_timestep_embedding_matches_spec():
    """256 features, frequencies exp(-ln(1e4) k / 128), [cos, sin] (SPEC §2; diffusers divides by 127)."""
    t = torch.tensor([0, 1, 500, 999])
    emb = TimestepEmbedder.timestep_embedding(t, 256).double()
    k = torch.arange(128, dtype=torch.float64)
    args = t[:, None].double() * torch.exp(-math.log(10000) * k / 128)[None]
    assert torch.allclose(emb, torch.cat([torch.cos(args), torch.sin(args)], 1), atol=1e-4)


@pytest.mark.parametrize("cfg_channels", [3, None])
def test_forward_with_cfg(cfg_channels):
    model = make_tiny_dit()
    x, t, y = tiny_inputs(model, n=2)
    x = torch.cat([x[:1], torch.randn_like(x[:1])])  # the uncond half's latent is ignored: both use the first
    t = torch.cat([t[:1], t[:1]])
    y = torch.tensor([int(y[0]), model.null_class])
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, cfg_scale=4.0, cfg_channels=cfg_channels)
        cond = model(x[:1], t[:1], y[:1])
        uncond = model(x[:1], t[:1], y[1:])
    k = 4 if cfg_channels is None else 3
    guided = uncond[:, :k] + 4.0 * (cond[:, :k] - uncond[:, :k])
    assert torch.allclose(out[0, :k], guided[0], atol=1e-5) and torch.allclose(out[1, :k], guided[0], atol=1e-5)
    assert torch.allclose(out[0, k:], cond[0, k:], atol=1e-6)  # the rest comes from each half's own output
    assert torch.allclose(out[1, k:], uncond[0, k:], atol=1e-6)


def test_grad_checkpointing_is_exact():
    model = make_tiny_dit()
    x, t, y = tiny_inputs(model)
    grads = []
    for ckpt in (False, True):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(ckpt)
        out = model(x, t, y)
        out.square().mean().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (o1, g1), (o2, g2) = grads
    assert torch.equal(o1, o2) and g1.keys() == g2.keys() and len(g1) > 0
    assert all(torch.equal(g1[n], g2[n]) for n in g1)
