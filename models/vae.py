"""Latent encoders: SD-VAE through diffusers.AutoencoderKL (hub id or local folder), or the identity "pixel"
encoder for tiny CPU pipelines. Latents are scaled by `scale` (0.18215 for SD-VAE)."""
import os

import torch

from utils.errors import UserError

SD_VAE_SCALE = 0.18215
VAE_CHOICES = ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse", "pixel")


class PixelVAE:
    """Identity encoder: the 'latent' is the image in [-1, 1] (posterior std 0)."""
    identity, scale, latent_channels, downsample = "pixel", 1.0, 3, 1

    def to(self, *args, **kwargs):
        return self

    def encode_stats(self, x):
        return x, torch.zeros_like(x)

    def encode(self, x, generator=None):
        return x * self.scale

    def decode(self, z):
        return z / self.scale


class SDVAE:
    """diffusers.AutoencoderKL with SD-VAE scaling: encode -> scaled latent sample, decode(scaled latent) -> [-1, 1]."""

    def __init__(self, model, identity, scale=SD_VAE_SCALE):
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.scale = scale
        self.latent_channels = model.config.latent_channels
        self.downsample = 2 ** (len(model.config.block_out_channels) - 1)

    def to(self, *args, **kwargs):
        self.model.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def encode_stats(self, x):
        """Posterior mean and std in unscaled latent units, x: (N, 3, H, W) in [-1, 1]."""
        dist = self.model.encode(x.to(self.model.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    @torch.no_grad()
    def encode(self, x, generator=None):
        mean, std = self.encode_stats(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * noise) * self.scale

    @torch.no_grad()
    def decode(self, z):
        return self.model.decode((z / self.scale).to(self.model.dtype)).sample.float()


def load_vae(source, device="cpu", dtype=torch.float32):
    """"pixel", a local diffusers folder (with config.json, or a pipeline folder with vae/), or a hub id."""
    if source == "pixel":
        return PixelVAE()
    from diffusers import AutoencoderKL
    kwargs = {"torch_dtype": dtype}
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")) and os.path.isdir(os.path.join(source, "vae")):
            kwargs["subfolder"] = "vae"
    elif os.path.exists(source) or source.startswith((".", "/")):
        raise UserError(f"VAE path {source} is not a diffusers folder; pass a folder with config.json, "
                        f"a hub id such as stabilityai/sd-vae-ft-mse, or 'pixel'")
    try:
        model = AutoencoderKL.from_pretrained(source, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise UserError(f"cannot load VAE '{source}' ({str(e).splitlines()[0][:160]}); download it once "
                        f"(huggingface-cli download {source}) or pass a local folder") from None
    return SDVAE(model.to(device), identity=source).to(device)
