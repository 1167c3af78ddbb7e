"""load_vae: diffusers folders (flat and pipeline-style vae/), SD-VAE scaling, the pixel identity, bad paths."""
import pytest
import torch

from helpers import save_tiny_diffusers_vae
from models.vae import SD_VAE_SCALE, load_vae
from utils.errors import UserError


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae")
    ref = save_tiny_diffusers_vae(d / "flat")
    save_tiny_diffusers_vae(d / "pipe" / "vae")
    return ref, d


@pytest.mark.parametrize("layout", ["flat", "pipe"])
def test_load_vae_folders(vae_dirs, layout):
    ref, d = vae_dirs
    vae = load_vae(str(d / layout))
    assert vae.scale == SD_VAE_SCALE == 0.18215 and vae.latent_channels == 4 and vae.downsample == 2
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = vae.encode(x, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(z, (dist.mean + dist.std * noise) * 0.18215, atol=1e-6)  # sample, then scale
        mean, std = vae.encode_stats(x)
        assert torch.allclose(mean, dist.mean) and torch.allclose(std, dist.std)
        img = vae.decode(z)
        assert img.shape == (2, 3, 16, 16)
        assert torch.allclose(img, ref.decode(z / 0.18215).sample, atol=1e-6)  # unscale, then decode


def test_pixel_identity():
    vae = load_vae("pixel")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(vae.encode(x), x) and torch.equal(vae.decode(x), x) and vae.latent_channels == 3


@pytest.mark.parametrize("bad", ["/nonexistent/vae", "./missing-vae"])
def test_bad_path(bad):
    with pytest.raises(UserError, match="not a diffusers folder"):
        load_vae(bad)


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="cannot load VAE"):
        load_vae(str(tmp_path))
