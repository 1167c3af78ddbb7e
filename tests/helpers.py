"""Tiny-model fixtures shared by the tests: random DiTs (every weight non-zero, so no zero-init hides an error),
DiT checkpoints in each supported format, and tiny diffusers models saved with save_pretrained."""
import argparse
import math
import os

import torch

from models.dit import DiT

# a tiny DiT: 2 blocks, hidden 32, 2 heads, 8x8 latents with patch 2 (16 tokens), 10 classes
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)


@torch.no_grad()
def randomize_(model, seed=0, only_trainable=False):
    """Overwrite the weights (or only those that require grad) with seeded noise of a scale that keeps activations
    O(1); gammas keep their value (see randomize_gammas_), pos_embed (fixed) is untouched."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "pos_embed" or "gamma" in name.rsplit(".", 1)[-1] or (only_trainable and not p.requires_grad):
            continue
        fan_in = p[0].numel() if p.ndim > 1 else 1
        std = 1 / math.sqrt(fan_in) if p.ndim > 1 else 0.1
        if "embedding_table" in name:
            std = 0.5
        p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@torch.no_grad()
def randomize_gammas_(model, seed=1):
    """Gammas around 1 (not exactly 1), so tests can see that they are used."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "gamma" in name.rsplit(".", 1)[-1]:
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return model


def make_tiny_dit(seed=0, gamma_blocks=(), **overrides):
    """A random tiny DiT (TINY, overridable) in eval mode."""
    torch.manual_seed(seed)
    model = DiT(**dict(TINY, **overrides), gamma_blocks=gamma_blocks)
    return randomize_(model, seed).eval()


def tiny_inputs(model, n=3, seed=0):
    """(x, t, y) for a model: random latents, timesteps in [0, 1000), labels in [0, num_classes]."""
    g = torch.Generator().manual_seed(seed)
    a = model.arch
    x = torch.randn(n, a["in_channels"], a["input_size"], a["input_size"], generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, a["num_classes"] + 1, (n,), generator=g)
    return x, t, y


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


#################################################################################
#                         Checkpoints in each format                             #
#################################################################################

def save_original(model, path):
    """Plain state dict, as DiT-XL-2-256x256.pt."""
    torch.save(model.state_dict(), path)
    return path


def save_training_ckpt(model, path, ema=None, args=None):
    """{"model", "ema", "opt", "args"} as DiT's and the Minimax authors' train.py write it (args: a Namespace)."""
    ema = model if ema is None else ema
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    args = args or argparse.Namespace(model="DiT-XL/2", image_size=256, num_classes=1000, epochs=8, global_batch_size=8,
                                      global_seed=0, ckpt_every=12000, lr=1e-3)
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "args": args}, path)
    return path


#################################################################################
#                              Tiny diffusers models                             #
#################################################################################

def tiny_diffusers_config(**overrides):
    """diffusers.DiTTransformer2DModel config equivalent to TINY (hidden 2 x 16 = 32)."""
    cfg = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
               sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
               activation_fn="gelu-approximate", norm_elementwise_affine=False)
    cfg.update(overrides)
    return cfg


@torch.no_grad()
def make_tiny_diffusers_dit(seed=0, **overrides):
    """A DiTTransformer2DModel with every weight random and the per-block embedder copies identical (as in the
    real facebook/DiT-XL-2-256 checkpoint)."""
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**tiny_diffusers_config(**overrides))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        fan_in = p[0].numel() if p.ndim > 1 else 1
        std = 0.5 if "embedding_table" in name else (1 / math.sqrt(fan_in) if p.ndim > 1 else 0.1)
        p.copy_(torch.randn(p.shape, generator=g) * std)
    first = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first.state_dict())
    return model.eval()


def save_tiny_diffusers_vae(path, seed=0):
    """A tiny AutoencoderKL (2 levels: 16x16 images -> 8x8x4 latents) saved with save_pretrained; returns it."""
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16).eval()
    os.makedirs(path, exist_ok=True)
    vae.save_pretrained(path)
    return vae
