"""The keys of sample.py (SPEC §4): the one declaration that parsing, --help and validation use, and the checks
across keys made before any model loads (no torch here)."""
import os

from data.subsets import subset_names
from models import DIT_NAMES, check_image_size
from utils.config import Key, check_device, check_output
from utils.errors import UserError
from utils.tracker import HELP as TRACKER_HELP, TRACKERS, check_tracker

DEFAULT_BASE = ("DiT-XL-2-256x256.pt", "facebook/DiT-XL-2-256")
SD_VAE_HUB = ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse")  # one encoder, two decoders

# key -> Key(default, allowed values, help): parsing, --help and validation come from here.
# configs/sample.yaml spells out the same defaults (tests/test_schema.py proves it).
CONFIG = {
    #### what to sample
    "subset": Key("imagewoof", choices=(*subset_names(), "custom"),
                  help="registered subset (imagewoof, imagenette, imageidc, imagenet100, imagenet1k) or custom"),
    "phase": Key(None, type="int", lo=0, null=True,
                 help="imagenet100: block of 20 classes (0-4) the checkpoint was fine-tuned on; null = all classes"),
    "phase_size": Key(None, "classes per phase for --phase (as train_minimax.py's phase_size); null = the subset's "
                            "own (imagenet100: 20)", type="int", null=True, lo=1),
    "class_file": Key(None, type="str", path="file", null=True,
                      help="custom subset: one class folder name (wnid) per line, in label order"),
    "train_dir": Key(None, type="str", path="dir", null=True,
                     help="custom subset without class_file: the class names are its sorted sub-folders; with "
                          "--guidance mode: the train images (<wnid>/<image>) the modes are computed from"),
    "ipc": Key(100, lo=1, help="images per class: files 0..ipc-1 (IPC-k of a larger set = its first k images)"),
    "ckpt": Key("", type="str", required=True,
                help="REQUIRED: fine-tuned checkpoint (train_minimax.py's checkpoint.pt, or any DiT weights), or "
                     "'none' for the pretrained DiT without fine-tuning (the paper's DiT baseline)"),
    "base": Key(None, type="str", null=True,
                help="base DiT weights: with --ckpt none what is sampled; with an adapter checkpoint where its "
                     "base is now (null: as recorded); null = DiT-XL-2-256x256.pt if present, else hub "
                     "facebook/DiT-XL-2-256"),
    "ema": Key(True, "use the EMA weights (the authors'); false = the raw trained weights"),
    "model": Key("DiT-XL/2", type="str", null=True, choices=DIT_NAMES,
                 help="DiT registry name checked against the weights (DiT-T/2 is the tiny CPU model); null = any"),
    "vae": Key("stabilityai/sd-vae-ft-mse", type="str",
               help="decoder: hub id or local diffusers folder, or 'pixel' (identity, tiny runs)"),
    "image_size": Key(256, lo=1,
                      help="output side in pixels; the latent side is image_size / VAE downsampling (32 for "
                           "SD-VAE)"),
    #### sampler (SPEC §4)
    "num_steps": Key(50, lo=2, hi=1000,
                     help="sampling steps respaced from 1000 (see spacing)"),
    "sampler": Key("ancestral", choices=("ancestral", "ddim"),
                   help="ancestral (DDPM with learned variance, the authors') | ddim"),
    "spacing": Key("auto", choices=("auto", "even", "ddim"),
                   help="kept timesteps: auto = even for ancestral, ddim for ddim (as DiT/ADM and MGD³ create "
                        "them) | even: round(linspace(0, 999, n)) (DiT's \"N\", 999 included) | ddim: 0, s, 2s, ... "
                        "for the integer stride s giving n (DiT's \"ddimN\": 20 steps -> 0, 50, ..., 950)"),
    "ddim_eta": Key(0.0, lo=0, hi=1, help="ddim: noise scale (0 = deterministic)"),
    "cfg_scale": Key(4.0, lo=0, help="classifier-free guidance scale (1 = none: a single conditional forward)"),
    "cfg_channels": Key(3, type="int", lo=1, literals=("all",),
                        help="latent channels guided: 3 (DiT's and the authors', the 4th comes from the "
                             "conditional half) or 'all'"),
    "seed": Key(0, lo=0,
                help="image i of class c uses seed sha256(seed/c/i): the same whatever the batch, IPC or GPU count"),
    #### mode guidance (MGD³, training-free; README "Mode guidance")
    "guidance": Key("none", "none (the authors' sampler) | mode: guide image i of class c towards mode i of c, the "
                            "k-means centroids (k = ipc) of c's train latents; no extra model call",
                    type="str", choices=("none", "mode")),
    "mode_scale": Key(0.1, "mode guidance strength lambda: each step adds -lambda * sigma_t * (x0_hat - mode) "
                           "(ddim: x0_hat moves by -lambda * (x0_hat - mode) and eps is re-derived from it, as "
                           "MGD³'s guided DDIM); MGD³'s 0.1", type="float", lo=0.0),
    "mode_stop": Key(None, "guide only while the step index t > mode_stop (t counts num_steps-1 -> 0); null = half of "
                           "num_steps (MGD³: 25 of 50; its sweep: 20 best, 10-30 fine)", type="int", lo=0, null=True),
    "modes": Key("centroid", "centroid (k-means centres, MGD³'s) | nearest (the real train latent nearest to each "
                             "centre, a weaker variant)", type="str", choices=("centroid", "nearest")),
    "modes_flip": Key("random", "random (MGD³'s: each train image mirrored with p 0.5 before clustering, one draw "
                                "per image seeded by --seed and its path, so every build clusters the same) | none "
                                "(never mirrored; one modes file for every seed)", type="str",
                      choices=("random", "none")),
    "modes_precision": Key("float32", "float32 (MGD³'s: posterior means as the encoder gives them, from a float32 "
                                      "latent cache, built if missing) | float16 (from a float16 cache such as the "
                                      "fine-tuning default: no encoding if it exists, means rounded to 2^-11)",
                           type="str", choices=("float32", "float16")),
    "cache_dir": Key("cache/latents", "guidance: latent caches and modes files (train_minimax.py's cache_dir, shared: "
                                      "an existing cache of the same data and encoder is reused)",
                     type="str"),  # checked as an output location only when guidance uses it
    "modes_vae": Key(None, "guidance: the encoder of the latent cache the modes come from; null = the encoder of "
                           "--vae (for an SD-VAE hub id stabilityai/sd-vae-ft-ema, the fine-tuning cache's: ft-ema and "
                           "ft-mse share SD-VAE's encoder, only the decoders differ; pixel for pixel models)",
                     type="str", null=True),
    #### speed
    "batch_size": Key(32, lo=1,
                      help="images sampled together per process (on a large GPU raise it with micro_batch, e.g. "
                           "128)"),
    "micro_batch": Key(32, lo=0,
                       help="images per model call, the last call padded: fixed shapes make an image independent "
                            "of batch_size and of its batch mates; 0 = the whole batch (no padding, float-level "
                            "dependence on the batch)"),
    "precision": Key("fp32", choices=("fp32", "bf16"),
                     help="fp32 (the authors') | bf16 (autocast for the DiT; diffusion math and VAE stay fp32)"),
    "tf32": Key(True, "allow TF32 matmuls and convolutions on CUDA (DiT's sample.py does)"),
    "compile": Key(False, "torch.compile the guided forward (pays off for large IPC on GPU)"),
    "device": Key("auto", choices=("auto", "cpu", "cuda"),
                  help="auto (CUDA if available) | cpu | cuda; under torchrun one GPU per process"),
    #### output
    "out": Key("", type="str", path="out_dir", required=True,
               help="REQUIRED: output folder; images go to <out>/<wnid>/<i>.png, preview to <out>_grid.png"),
    "overwrite": Key(False, "replace the sample images of a folder made with other settings (default: refuse)"),
    "grid": Key(10, lo=0, help="images per class in the preview grid <out>_grid.png (0 = no grid)"),
    "class_grids": Key(False, "also write a page per class of all its IPC images, <out>_grids/<wnid>.png "
                              "(any IPC: the tiles wrap into a near-square page)"),
    "progress": Key(True, "tqdm progress bar with images/s"),
    "tracker": Key("none", TRACKER_HELP + " (folder <out>_tracker: config, speed, grids)", choices=TRACKERS),
    "debug_kill_after": Key(0, lo=0,
                            help="testing: SIGKILL this process after this many images are written (0 = off)"),
}


#################################################################################
#                                   Validation                                  #
#################################################################################

def spacing(cfg):
    """The timestep spacing of models/diffusion.Diffusion.respaced: even | ddim ('auto' resolved by the sampler)."""
    if cfg["spacing"] != "auto":
        return cfg["spacing"]
    return "ddim" if cfg["sampler"] == "ddim" else "even"


def check_config(cfg):
    """Checks across keys, after the per-key schema (parse_config) and before anything is loaded."""
    if spacing(cfg) == "ddim":  # DiT's ddimN: only the counts some integer stride gives (no torch needed)
        counts = sorted({len(range(0, 1000, s)) for s in range(1, 1000)})
        if cfg["num_steps"] not in counts:
            near = min(counts, key=lambda c: (abs(c - cfg["num_steps"]), c))
            raise UserError(f"--num_steps {cfg['num_steps']} has no ddim spacing (no integer stride gives exactly "
                            f"{cfg['num_steps']} of 1000 timesteps, as DiT's ddimN); use --num_steps {near} or "
                            f"--spacing even")
    if cfg["guidance"] == "mode":
        resolve_guidance(cfg)
        if not cfg["train_dir"]:
            raise UserError("--guidance mode needs --train_dir: the train folder (<wnid>/<image>) the modes come from")
        if cfg["mode_stop"] >= cfg["num_steps"] - 1:
            raise UserError(f"mode_stop must be in 0..{cfg['num_steps'] - 2} (guidance runs while the step index > "
                            f"mode_stop), got {cfg['mode_stop']}")
        if (cfg["modes_vae"] == "pixel") != (cfg["vae"] == "pixel"):
            raise UserError(f"modes_vae {cfg['modes_vae']} and vae {cfg['vae']} do not work in the same space; pass "
                            f"pixel for both (pixel models) or an SD-VAE for both")
        check_output(cfg["cache_dir"], "--cache_dir")
    bad = check_image_size(cfg["image_size"], cfg["vae"], cfg["model"])
    if bad:
        raise UserError(bad)
    check_device(cfg["device"])
    check_tracker(cfg["tracker"])
    return None if cfg["cfg_channels"] == "all" else cfg["cfg_channels"]


def resolve_guidance(cfg):
    """Fill the guidance keys left null from the sampler's own: mode_stop = num_steps // 2, modes_vae = the encoder
    of --vae (SD-VAE hub ids share one encoder, so the fine-tuning cache's ft-ema is reused)."""
    if cfg["mode_stop"] is None:
        cfg["mode_stop"] = cfg["num_steps"] // 2
    if cfg["modes_vae"] is None:
        cfg["modes_vae"] = "stabilityai/sd-vae-ft-ema" if cfg["vae"] in SD_VAE_HUB else cfg["vae"]
    return cfg


def weights_source(cfg):
    """(source to load, base_source for an adapter): --ckpt, or with --ckpt none the base weights."""
    base = cfg["base"]
    if str(cfg["ckpt"]).lower() != "none":
        return cfg["ckpt"], base
    if base is None:
        base = DEFAULT_BASE[0] if os.path.isfile(DEFAULT_BASE[0]) else DEFAULT_BASE[1]
    return base, None
