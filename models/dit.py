"""The original DiT (Peebles & Xie, 2023): adaLN-Zero blocks, one class table with a null class, fixed 2-D sin-cos
position embedding, learned sigma. Parameter names follow the original checkpoints, plus the Difffit gammas of the
Minimax authors' checkpoints (blocks.i.gamma1/2, blocks.i.attn.gamma1/2)."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                          Embedders and building blocks                        #
#################################################################################

class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (a strided conv, as in the original)."""

    def __init__(self, input_size, patch_size, in_channels, hidden_size):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (frequencies exp(-ln(1e4) k / half), [cos, sin]) -> MLP."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        # divide by `half` (the original), not half - 1 as diffusers' downscale_freq_shift=1 does
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (N, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb  # (N, dim)

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """One class table: rows 0..K-1 the classes, row K the null class, then `extra` custom classes."""

    def __init__(self, num_classes, hidden_size, dropout_prob, extra_classes=0):
        super().__init__()
        rows = num_classes + int(dropout_prob > 0) + extra_classes
        self.embedding_table = nn.Embedding(rows, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels, train, force_drop_ids=None):
        if force_drop_ids is not None:
            labels = torch.where(force_drop_ids == 1, self.num_classes, labels)
        elif train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention on SDPA; optional Difffit gammas on the qkv and output projections."""

    def __init__(self, dim, num_heads, use_gamma=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.gamma1 = nn.Parameter(torch.ones(dim * 3)) if use_gamma else None  # scales qkv
        self.gamma2 = nn.Parameter(torch.ones(dim)) if use_gamma else None  # scales proj

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.qkv(x)
        if self.gamma1 is not None:
            qkv = self.gamma1 * qkv
        q, k, v = qkv.reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        x = F.scaled_dot_product_attention(q, k, v)
        x = self.proj(x.transpose(1, 2).reshape(B, T, C))
        return x if self.gamma2 is None else self.gamma2 * x


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block; with gammas: x += g1 * gate * Attn(...), x += g2 * gate * MLP(...)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, use_gamma=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, use_gamma)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.gamma1 = nn.Parameter(torch.ones(hidden_size)) if use_gamma else None
        self.gamma2 = nn.Parameter(torch.ones(hidden_size)) if use_gamma else None

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, D)
        x = x + (h if self.gamma1 is None else self.gamma1 * h)
        h = gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + (h if self.gamma2 is None else self.gamma2 * h)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                                   The model                                   #
#################################################################################

class DiT(nn.Module):
    """Class-conditional diffusion transformer; forward(x, t, y) -> (N, 2C, H, W) with learned sigma."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, extra_classes=0,
                 gamma_blocks=()):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.arch = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                         hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         class_dropout_prob=class_dropout_prob, num_classes=num_classes, learn_sigma=learn_sigma)
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.extra_classes = extra_classes
        self.grad_checkpointing = False
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob, extra_classes)
        # fixed sin-cos embedding, stored (as the original) so checkpoints carry it, never trained
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()
        self.enable_gammas(gamma_blocks)

    @property
    def null_class(self):
        return self.num_classes

    @property
    def gamma_blocks(self):
        return [i for i, b in enumerate(self.blocks) if b.gamma1 is not None]

    def initialize_weights(self):
        """The original initialisation: xavier linears, zeroed adaLN and output layers, N(0, 0.02) tables."""
        def _basic_init(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic_init)
        grid = int(self.x_embedder.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid)).float()[None])
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                      self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def enable_gammas(self, blocks):
        """Add Difffit gammas (init 1, so the function is unchanged) to the given block indices."""
        for i in blocks:
            b = self.blocks[i]
            if b.gamma1 is None:
                dev = b.adaLN_modulation[-1].weight.device
                d = self.arch["hidden_size"]
                b.gamma1 = nn.Parameter(torch.ones(d, device=dev))
                b.gamma2 = nn.Parameter(torch.ones(d, device=dev))
                b.attn.gamma1 = nn.Parameter(torch.ones(3 * d, device=dev))
                b.attn.gamma2 = nn.Parameter(torch.ones(d, device=dev))
        return self

    def extend_classes(self, k, init=None):
        """Append k class-table rows after the null row (labels num_classes+1+j), init from `init` (k, D) or the
        mean of the real class rows."""
        table = self.y_embedder.embedding_table
        old = table.weight.data
        if init is None:
            init = old[:self.num_classes].mean(0, keepdim=True).expand(k, -1)
        new = nn.Embedding(old.shape[0] + k, old.shape[1], device=old.device, dtype=old.dtype)
        new.weight.data.copy_(torch.cat([old, init.to(old)], 0))
        new.weight.requires_grad_(table.weight.requires_grad)
        self.y_embedder.embedding_table = new
        self.extra_classes += k
        return self

    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable
        return self

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)  # (N, C_out, H, W)

    def forward(self, x, t, y, force_drop_ids=None):
        """x: (N, C, H, W) latents, t: (N,) timesteps, y: (N,) class labels -> (N, C_out, H, W)."""
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)  # (N, D)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x)

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=3):
        """Classifier-free guidance in one forward: x, t, y hold [cond; uncond] halves. Guidance is applied to the
        first `cfg_channels` channels (3, as the original, for exact reproducibility; None = all eps channels);
        the rest comes from the conditional half."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], 0), t, y).float()  # guidance arithmetic in fp32 under autocast
        k = self.in_channels if cfg_channels is None else cfg_channels
        eps, rest = out[:, :k], out[:, k:]
        cond, uncond = eps.chunk(2, dim=0)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided], 0), rest], dim=1)


#################################################################################
#                           2-D sin-cos position embedding                      #
#################################################################################

def sincos_pos_embed_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # (D/2,)
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def sincos_pos_embed_2d(dim, grid_size):
    """(grid_size**2, dim): the first half encodes the column index, the second the row index (as the original)."""
    gw, gh = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    return np.concatenate([sincos_pos_embed_1d(dim // 2, gw), sincos_pos_embed_1d(dim // 2, gh)], axis=1)


#################################################################################
#                                    Registry                                   #
#################################################################################

# name -> (depth, hidden_size, num_heads); patch size from the suffix. "T" is a tiny CPU model for tests and demos.
DIT_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6), "T": (4, 64, 4)}


def _maker(depth, hidden, heads, patch):
    def make(**kwargs):
        return DiT(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, **kwargs)
    return make


DiT_models = {f"DiT-{s}/{p}": _maker(*DIT_SIZES[s], p) for s in DIT_SIZES for p in (2, 4, 8)}


def registry_arch(name):
    """The constructor keywords a registry name fixes (depth, hidden_size, num_heads, patch_size)."""
    size, patch = name[len("DiT-"):].split("/")
    depth, hidden, heads = DIT_SIZES[size]
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(patch))
