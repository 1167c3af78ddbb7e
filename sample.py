"""Sample an IPC image folder <out>/<wnid>/<i>.png from a (fine-tuned) DiT, as the Minimax authors do (SPEC §4),
batched, with per-image seeds, resumable, and sharded across GPUs under torchrun.

  python sample.py --config configs/sample.yaml --ckpt results/woof/checkpoint.pt --out results/samples/woof
  python sample.py --config configs/sample.yaml --ckpt none --out results/samples/woof-dit      # the "DiT" baseline
  torchrun --nproc_per_node=8 sample.py --config configs/sample.yaml --ckpt ... --out ...       # same images, faster

Rerunning the same command skips the images that exist; a larger --ipc adds images (IPC-10 = the first 10 of
IPC-100). manifest.json in <out> records the config, weights identity, seeds and versions; <out>_grid.png previews.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utils.config import Key, parse_config  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402

DEFAULT_BASE = ("DiT-XL-2-256x256.pt", "facebook/DiT-XL-2-256")

# key -> (default, help). configs/sample.yaml spells out the same defaults.
CONFIG = {
    #### what to sample
    "subset": ("imagewoof", "registered subset (imagewoof, imagenette, imageidc, imagenet100, imagenet1k) or custom"),
    "phase": (None, "imagenet100: block of 20 classes (0-4) the checkpoint was fine-tuned on; null = all classes"),
    "phase_size": Key(None, "classes per phase for --phase (as train_minimax.py's phase_size); null = the subset's "
                            "own (imagenet100: 20)", type="int", null=True, lo=1),
    "class_file": (None, "custom subset: one class folder name (wnid) per line, in label order"),
    "train_dir": (None, "custom subset without class_file: the class names are its sorted sub-folders"),
    "ipc": (100, "images per class: files 0..ipc-1 (IPC-k of a larger set = its first k images)"),
    "ckpt": ("", "REQUIRED: fine-tuned checkpoint (train_minimax.py's checkpoint.pt, or any DiT weights), or 'none' "
                 "for the pretrained DiT without fine-tuning (the paper's DiT baseline)"),
    "base": (None, "base DiT weights: with --ckpt none what is sampled; with an adapter checkpoint where its base is "
                   "now (null: as recorded); null = DiT-XL-2-256x256.pt if present, else hub facebook/DiT-XL-2-256"),
    "ema": (True, "use the EMA weights (the authors'); false = the raw trained weights"),
    "model": ("DiT-XL/2", "DiT registry name checked against the weights (DiT-T/2 is the tiny CPU model); null = any"),
    "vae": ("stabilityai/sd-vae-ft-mse", "decoder: hub id or local diffusers folder, or 'pixel' (identity, tiny runs)"),
    "image_size": (256, "output side in pixels; the latent side is image_size / VAE downsampling (32 for SD-VAE)"),
    #### sampler (SPEC §4)
    "num_steps": (50, "sampling steps respaced evenly from 1000 (timesteps round(linspace(0, 999, n)))"),
    "sampler": ("ancestral", "ancestral (DDPM with learned variance, the authors') | ddim"),
    "ddim_eta": (0.0, "ddim: noise scale (0 = deterministic)"),
    "cfg_scale": (4.0, "classifier-free guidance scale (1 = none: a single conditional forward)"),
    "cfg_channels": ("3", "latent channels guided: 3 (DiT's and the authors', the 4th comes from the conditional "
                          "half) or 'all'"),
    "seed": (0, "image i of class c uses seed sha256(seed/c/i): the same whatever the batch, IPC or GPU count"),
    #### speed
    "batch_size": (32, "images sampled together per process (on a large GPU raise it with micro_batch, e.g. 128)"),
    "micro_batch": (32, "images per model call, the last call padded: fixed shapes make an image independent of "
                        "batch_size and of its batch mates; 0 = the whole batch (no padding, float-level "
                        "dependence on the batch)"),
    "precision": ("fp32", "fp32 (the authors') | bf16 (autocast for the DiT; diffusion math and VAE stay fp32)"),
    "tf32": (True, "allow TF32 matmuls and convolutions on CUDA (DiT's sample.py does)"),
    "compile": (False, "torch.compile the guided forward (pays off for large IPC on GPU)"),
    "device": ("auto", "auto (CUDA if available) | cpu | cuda; under torchrun one GPU per process"),
    #### output
    "out": ("", "REQUIRED: output folder; images go to <out>/<wnid>/<i>.png, preview to <out>_grid.png"),
    "overwrite": (False, "replace the sample images of a folder made with other settings (default: refuse)"),
    "grid": (10, "images per class in the preview grid <out>_grid.png (0 = no grid)"),
    "progress": (True, "tqdm progress bar with images/s"),
    "debug_kill_after": (0, "testing: SIGKILL this process after this many images are written (0 = off)"),
}


#################################################################################
#                                   Validation                                  #
#################################################################################

def check_config(cfg):
    """Cheap checks, before anything is loaded."""
    from models.sampling import PRECISIONS, SAMPLERS, check_out_dir
    if not cfg["ckpt"]:
        raise UserError("pass --ckpt: a fine-tuned checkpoint, or 'none' to sample the pretrained DiT")
    if not cfg["out"]:
        raise UserError("pass --out: the folder that receives <wnid>/<i>.png")
    if cfg["ipc"] <= 0:
        raise UserError(f"ipc must be at least 1, got {cfg['ipc']}")
    check_out_dir(cfg["out"])
    if cfg["sampler"] not in SAMPLERS:
        raise UserError(f"unknown sampler '{cfg['sampler']}'; choose one of {', '.join(SAMPLERS)}")
    if cfg["precision"] not in PRECISIONS:
        raise UserError(f"unknown precision '{cfg['precision']}'; choose one of {', '.join(PRECISIONS)}")
    if not 2 <= cfg["num_steps"] <= 1000:
        raise UserError(f"num_steps must be in 2..1000, got {cfg['num_steps']}")
    if cfg["batch_size"] < 1 or cfg["micro_batch"] < 0:
        raise UserError(f"batch_size must be >= 1 and micro_batch >= 0, got {cfg['batch_size']}, {cfg['micro_batch']}")
    ch = str(cfg["cfg_channels"]).lower()
    if ch != "all" and not ch.isdigit():
        raise UserError(f"cfg_channels must be a number of channels or 'all', got {cfg['cfg_channels']!r}")
    return None if ch == "all" else int(ch)


def weights_source(cfg):
    """(source to load, base_source for an adapter): --ckpt, or with --ckpt none the base weights."""
    base = cfg["base"]
    if str(cfg["ckpt"]).lower() != "none":
        return cfg["ckpt"], base
    if base is None:
        base = DEFAULT_BASE[0] if os.path.isfile(DEFAULT_BASE[0]) else DEFAULT_BASE[1]
    return base, None


#################################################################################
#                                      Main                                     #
#################################################################################

def main(argv=None):
    cfg = parse_config(CONFIG, argv, description=__doc__.split("\n")[0], prog="sample.py", section="sample")
    cfg_channels = check_config(cfg)
    from data.subsets import resolve_subset
    subset = resolve_subset(cfg["subset"], cfg["train_dir"], cfg["class_file"], cfg["phase"],
                            cfg["phase_size"])

    import torch
    from models.diffusion import Diffusion
    from models.loading import identify_source, load_dit
    from models.sampling import (check_subset, checkpoint_meta, class_labels_for, label_table, sample_folder,
                                 vae_identity)
    from models.vae import load_vae
    from utils.dist import cleanup, init_distributed

    #### weights: identity and class list first (refusals before anything heavy)
    source, base_source = weights_source(cfg)
    ident = identify_source(source)
    meta = checkpoint_meta(source, ident)
    check_subset(meta, subset, source)

    dist = init_distributed(cfg["device"])
    torch.backends.cuda.matmul.allow_tf32 = cfg["tf32"]
    torch.backends.cudnn.allow_tf32 = cfg["tf32"]
    vae = load_vae(cfg["vae"], device=dist.device)
    if cfg["image_size"] % vae.downsample:
        raise UserError(f"image_size {cfg['image_size']} is not a multiple of the VAE's downsampling {vae.downsample}")
    latent = cfg["image_size"] // vae.downsample
    name = None if str(cfg["model"]).lower() in ("", "none", "null", "auto") else cfg["model"]
    model = load_dit(source, model=name, ema=cfg["ema"], device=dist.device, base_source=base_source)
    arch = model.arch
    if (arch["in_channels"], arch["input_size"]) != (vae.latent_channels, latent) or not arch["learn_sigma"]:
        raise UserError(f"{source} takes {arch['in_channels']}x{arch['input_size']}x{arch['input_size']} latents "
                        f"(learn_sigma={arch['learn_sigma']}) but vae {cfg['vae']} at image_size {cfg['image_size']} "
                        f"gives {vae.latent_channels}x{latent}x{latent}; set --image_size and --vae to match the "
                        f"weights (learned sigma is required)")
    if cfg_channels is not None and not 1 <= cfg_channels <= arch["in_channels"]:
        raise UserError(f"cfg_channels {cfg_channels} is not in 1..{arch['in_channels']} (the latent channels); "
                        f"use 3 (DiT's) or 'all'")
    table = label_table(meta.get("subset"), meta.get("class_labels"), model.num_classes)
    labels = class_labels_for(subset.wnids, table, model, source)

    identity = {"weights": dict(ident, ema=cfg["ema"], base=meta.get("base")), "vae": vae_identity(cfg["vae"]),
                "image_size": cfg["image_size"]}
    diffusion = Diffusion.linear(1000).respaced(cfg["num_steps"])
    stats = sample_folder(model, vae, diffusion, subset.wnids, labels, cfg["ipc"], cfg["out"], seed=cfg["seed"],
                          sampler=cfg["sampler"], eta=cfg["ddim_eta"], cfg_scale=cfg["cfg_scale"],
                          cfg_channels=cfg_channels, batch_size=cfg["batch_size"], micro_batch=cfg["micro_batch"],
                          precision=cfg["precision"], device=dist.device, compile=cfg["compile"],
                          overwrite=cfg["overwrite"], grid=cfg["grid"], identity=identity, config=dict(cfg),
                          rank=dist.rank, world_size=dist.world_size, progress=cfg["progress"],
                          debug_kill_after=cfg["debug_kill_after"])
    if dist.is_main:
        print(f"{stats['written']} image(s) written on rank 0 of {dist.world_size}, {stats['skipped']} kept, "
              f"{stats['images_per_s']:.2f} img/s; folder {cfg['out']}, grid {stats['grid']}")
    cleanup()


if __name__ == "__main__":
    run_cli(main)
