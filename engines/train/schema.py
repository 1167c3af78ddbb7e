"""Every key of train_minimax.py with its default (SPEC §2-3) and what it does; validation of a resolved config."""
import os

from data.subsets import get_subset, subset_names
from models import DIT_NAMES, check_image_size
from utils.config import Key, check_device, check_output, resolve
from utils.errors import UserError
from utils.tracker import HELP as TRACKER_HELP, TRACKERS, check_tracker


# key -> Key(default, allowed values, help): the one declaration that parsing, --help and validation use.
# configs/train_default.yaml spells out the same defaults (tests/test_schema.py proves it); configs/tiny.yaml is the
# CPU smoke test.
CONFIG = {
    #### what to train
    "mode": Key("finetune", choices=("finetune", "base"),
                help="finetune: Difffit + minimax losses on a pretrained DiT (SPEC §2-3); base: train a DiT from "
                     "scratch, every parameter (tiny models for tests and the demo)"),
    "base": Key("DiT-XL-2-256x256.pt", type="str",
                help="finetune: base weights, anything load_dit accepts (original .pt, diffusers folder or hub id, "
                     "a base-mode checkpoint.pt); its sha256 is recorded and checked on resume"),
    "model": Key("DiT-XL/2", type="str", choices=DIT_NAMES,
                 help="base mode: DiT registry name to build from scratch (DiT-T/2 is the tiny CPU model)"),
    "num_classes": Key(0, choices=(0, 1000),
                       help="base mode: class-table size; 0 = the subset's classes with labels 0..K-1, 1000 = "
                            "ImageNet labels (every class must be an ImageNet wnid)"),
    "tune": Key("difffit", choices=("difffit", "bitfit", "full"),
                help="finetune: what trains: difffit (biases + class table + gammas, the authors') | bitfit | full"),
    "gamma_blocks": Key(None, type="list", items="int", lo=0, null=True,
                        help="difffit: block indices that get gammas, e.g. [0,1,2]; null = first half (the "
                             "authors')"),
    "init_class": Key(None, type="int|str", null=True,
                      help="classes the base model does not know get new class-table rows initialised from this "
                           "base class (wnid, ImageNet name or label index); null = the mean of the base rows"),
    #### minimax criteria
    "rep": Key("minimax", choices=("minimax", "mean", "off"),
               help="representativeness: minimax (Eq. 3, min over the real memory) | mean (Eq. 2) | off"),
    "div": Key("minimax", choices=("minimax", "mean", "off"),
               help="diversity: minimax (Eq. 4, max over the predicted memory) | mean | off"),
    "lambda_r": Key(0.002, lo=0, help="weight of the representativeness loss"),
    "lambda_d": Key(0.008, lo=0, help="weight of the diversity loss"),
    "memory_size": Key(64, lo=1, help="entries per class in each FIFO memory (N_M)"),
    "memory_sync": Key("local", choices=("local", "global"),
                       help="DDP: local = one memory per rank, never synchronised (the authors'); global = "
                            "all-gather real/pred/labels before each update so every rank holds the same memory"),
    "memory_dtype": Key("float32", choices=("float32", "float16"),
                        help="memory storage: float32 | float16 (halves the memory; cosines move ~1e-3)"),
    #### data
    "subset": Key("imagewoof", choices=(*subset_names(), "custom"),
                  help="registered subset (imagewoof, imagenette, imageidc, imagenet100, imagenet1k) or custom"),
    "phase": Key(None, type="int", lo=0, null=True,
                 help="imagenet100: which block of 20 classes (0-4) this model fine-tunes; null = all"),
    "phase_size": Key(None, "classes per phase for --phase (consecutive blocks of the class list, the last one "
                            "holds the remainder); null = the subset's own (imagenet100: 20). imagenet1k: e.g. 100 "
                            "-> phases 0-9", type="int", null=True, lo=1),
    "data_dir": Key("", path="dir", required=True,
                    help="train folder holding <wnid>/<image> (ImageNet's train dir or one with only the subset)"),
    "class_file": Key(None, type="str", path="file", null=True,
                      help="custom subset: one class folder name per line, in label order; null = sorted folders"),
    "image_size": Key(256, lo=1,
                      help="training resolution (ADM centre crop); the latent side is image_size / VAE "
                           "downsampling"),
    "vae": Key("stabilityai/sd-vae-ft-ema", type="str",
               help="encoder: hub id or local diffusers folder, or 'pixel' (identity, tiny runs)"),
    "latent_cache": Key(True,
                        help="encode every image and its mirror once and draw mean + std * eps per step; false = "
                             "encode with the VAE at every step (the authors')"),
    "cache_dir": Key("cache/latents", type="str",  # an output location only when used (check_config)
                     help="where latent caches live (one per dataset + VAE + transform, shared by runs)"),
    "cache_fill": Key("eager", "latent cache: eager = encode every image and its mirror before step 1; lazy = "
                               "encode an (image, flip) entry the first time a step draws it, then reuse it (never "
                               "more VAE work than no cache; ImageNet-1K at 1-8 epochs)", choices=("eager", "lazy")),
    "cache_fill_batch": Key(2, "lazy latent cache: images per VAE call when filling (padded to this many, so an entry "
                               "does not depend on its batch mates); small, so a step with few missing entries encodes "
                               "few", type="int", lo=1),
    "scan_cache": Key(False, "remember the train-dir listing (paths, sizes, mtimes) in <cache_dir>/scans/ and reuse it "
                             "while every class folder's mtime is unchanged (ImageNet-1K: 1.28M files listed and "
                             "stat-ed once); an image edited in place without a folder change is not seen: delete "
                             "the scan file", type="bool"),
    "cache_dtype": Key("float16", choices=("float16", "float32"),
                       help="latent cache storage: float16 (half the disk) | float32"),
    "cache_resident": Key(False, "copy the whole latent cache to the training device (ImageWoof ~0.4 GB in float16)"),
    "cache_batch_size": Key(32, lo=1, help="images per VAE batch while building the latent cache"),
    "num_workers": Key(4, lo=0, help="DataLoader workers for image decoding (cache build and on-the-fly encoding)"),
    #### optimisation
    "lr": Key(0.001, gt=0, help="AdamW learning rate, constant (the authors')"),
    "weight_decay": Key(0.0, lo=0, help="AdamW weight decay"),
    "batch_size": Key(8, lo=1,
                      help="images per step over ALL processes (the authors' --global-batch-size); each of K ranks "
                           "takes batch_size / K, so steps, EMA and lr schedule do not depend on the GPU count"),
    "epochs": Key(8, lo=1,
                  help="passes over the subset's train images (drop_last: steps/epoch = images // global batch)"),
    "max_steps": Key(0, lo=0,
                     help="stop after this many steps in total (0 = epochs decide); the lr is constant so the "
                          "trajectory up to there is unchanged"),
    "ema_decay": Key(0.9999, lo=0, lt=1,
                     help="EMA of the trainable parameters, updated every step, started from the base weights"),
    "seed": Key(0, lo=0, help="seeds everything; the data order of epoch e is a function of (seed, e) only"),
    "flip": Key(True, "random horizontal flip of each training image (DiT's; off for data whose mirror image is "
                      "another class or no class, e.g. digits)", type="bool"),
    #### speed
    "device": Key("auto", choices=("auto", "cpu", "cuda"), help="auto (CUDA if available) | cpu | cuda"),
    "bf16": Key(False, "bfloat16 autocast for the forward pass (the authors train in fp32)"),
    "tf32": Key(True, "allow TF32 matmuls on CUDA (DiT's train.py does)"),
    "compile": Key(False, "torch.compile the model (first steps are slow while it compiles)"),
    "grad_checkpointing": Key(False, "recompute block activations in backward: less memory, ~30% slower"),
    #### run dir, checkpoints, logging
    "run_dir": Key("results/minimax-imagewoof", path="out_dir", required=True,
                   help="holds config.yaml, log.jsonl and checkpoint.pt (auto-resumed from)"),
    "resume": Key("", path="exists",
                  help="checkpoint to resume from (default: <run_dir>/checkpoint.pt when auto_resume)"),
    "auto_resume": Key(True, "resume from <run_dir>/checkpoint.pt when it exists; false refuses to overwrite it"),
    "ckpt_every": Key(500, lo=1, help="write <run_dir>/checkpoint.pt every this many steps (and always at the end)"),
    "keep_every": Key(0, lo=0,
                      help="also keep a copy checkpoint-<step>.pt every this many steps (0 = only the latest)"),
    "log_every": Key(10, lo=1,
                     help="append a log.jsonl record (losses averaged over the window, lr, steps/s) every this "
                          "many steps"),
    "progress": Key(True, "tqdm progress bar"),
    "tracker": Key("none", TRACKER_HELP + " (folder <run_dir>/tracker)", choices=TRACKERS),
    #### testing hooks
    "debug_nan_step": Key(0, lo=0,
                          help="testing: make the loss of this step NaN (the run must stop, the checkpoint stay "
                               "intact)"),
    "debug_kill_step": Key(0, lo=0,
                           help="testing: SIGKILL this process right after the checkpoint of this step is written"),
}

# keys that may differ when resuming (they change speed, logging or the end point, not the trajectory);
# `base` may move as long as its sha256 matches.
RESUME_MUTABLE = {"base", "data_dir", "latent_cache", "cache_dir", "cache_dtype", "cache_resident", "cache_batch_size",
                  "num_workers", "epochs", "max_steps", "device", "bf16", "tf32", "compile", "grad_checkpointing",
                  "cache_fill", "cache_fill_batch", "scan_cache",
                  "run_dir", "resume", "auto_resume", "ckpt_every", "keep_every", "log_every", "progress", "tracker",
                  "debug_nan_step", "debug_kill_step"}

def full_config(overrides=None):
    """Defaults <- overrides (a dict, e.g. from the demo), type-coerced and validated like the command line."""
    return check_config(resolve(CONFIG, overrides))


def check_config(cfg):
    """Checks across keys, after the per-key schema and before any model or data is touched."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if cfg["batch_size"] % world:  # the global batch (the authors' --global-batch-size) splits over the ranks
        raise UserError(f"batch_size {cfg['batch_size']} (the global batch) does not split over {world} processes; "
                        f"use a multiple of {world}")
    if cfg["subset"] != "custom":
        get_subset(cfg["subset"], cfg["phase"], cfg["phase_size"])  # a phase the subset does not have
    if cfg["latent_cache"] or cfg["scan_cache"]:
        check_output(cfg["cache_dir"], "--cache_dir")
    bad = check_image_size(cfg["image_size"], cfg["vae"], cfg["model"] if cfg["mode"] == "base" else None)
    if bad:  # finetune: the base's input size is checked against the latent when it loads
        raise UserError(bad)
    check_device(cfg["device"])
    check_tracker(cfg["tracker"])
    return cfg


def resume_conflicts(saved, cfg):
    """Keys that differ between a checkpoint's config and this run's and would change the trajectory."""
    return [k for k in CONFIG if k not in RESUME_MUTABLE and k in saved and saved[k] != cfg[k]]
