"""Fine-tuning image transform (SPEC §2): ADM centre crop -> optional horizontal flip -> [-1, 1] tensor."""
import numpy as np
import torch
from PIL import Image

# bump when anything below changes the pixels a cached latent was computed from (part of the cache key)
TRANSFORM_VERSION = "adm-center-crop-v1"


def center_crop_arr(pil, size):
    """ADM centre crop: halve with BOX while the short side >= 2*size, BICUBIC to short side = size, crop."""
    while min(pil.size) >= 2 * size:
        # box-halving first keeps the final bicubic step from aliasing on large images
        pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
    scale = size / min(pil.size)
    pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
    w, h = pil.size
    left, top = (w - size) // 2, (h - size) // 2
    return pil.crop((left, top, left + size, top + size))


def to_tensor_m11(pil):
    """RGB PIL image -> (3, H, W) float32 in [-1, 1], the same arithmetic as ToTensor + Normalize(0.5, 0.5)."""
    arr = np.asarray(pil.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()  # (3, H, W)
    return x.div(255).sub(0.5).div(0.5)


def hflip(x):
    """Mirror a (..., H, W) tensor left-right (identical to flipping the PIL image first)."""
    return x.flip(-1)


def image_transform(pil, size, flip=False):
    """The whole pipeline for one image; `flip` is decided by the caller (so it can be seeded)."""
    x = to_tensor_m11(center_crop_arr(pil, size))  # (3, size, size)
    return hflip(x) if flip else x
