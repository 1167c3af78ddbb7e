"""The networks and their math: DiT, Difffit, diffusion, the VAE helpers, the minimax criterion, the evaluation
classifiers, and weight loading. Nothing here imports an engine or a schema."""
import json
import os

# models.dit.DiT_models' names, spelt out so that validation runs without torch (tests/test_schema.py: equal)
DIT_NAMES = tuple(f"DiT-{s}/{p}" for s in ("XL", "L", "B", "S", "T") for p in (2, 4, 8))


def vae_downsampling(source):
    """The spatial downsampling of a VAE named by `source`, read without torch: 1 for 'pixel', a local diffusers
    folder's from its config.json, 8 for the SD-VAE hub ids; None when it cannot be known before loading."""
    if source == "pixel":
        return 1
    for path in (os.path.join(source, "config.json"), os.path.join(source, "vae", "config.json")):
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return 2 ** (len(json.load(f)["block_out_channels"]) - 1)
            except (OSError, ValueError, KeyError, TypeError):
                return None  # unreadable: load_vae says why
    return 8 if "sd-vae" in str(source) else None


def check_image_size(image_size, vae, model=None):
    """The image side must give a whole latent (image_size / VAE downsampling) that the DiT's patch divides.
    Returns an error line, or None when the sizes fit (or cannot be known before loading)."""
    down = vae_downsampling(vae)
    patch = int(model.rsplit("/", 1)[1]) if model in DIT_NAMES else 1
    if down is None:
        return None
    step = down * patch
    if image_size % step:
        below, above = image_size // step * step, (image_size // step + 1) * step
        sizes = f"{below} or {above}" if below else f"{above}"
        by = f"vae {vae} downsamples by {down}" + (f" and {model} patches by {patch}" if patch > 1 else "")
        return (f"image_size {image_size} does not fit: {by}, so image_size must be a multiple of {step} (e.g. "
                f"{sizes}); set --image_size")
    return None
