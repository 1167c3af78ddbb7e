"""Every key of train_minimax.py with its default (SPEC §2-3) and what it does; validation of a resolved config."""
from utils.config import Key, as_key, coerce, suggest
from utils.errors import UserError

# key -> (default, help). configs/train_default.yaml spells out the same defaults; configs/tiny.yaml is the
# CPU smoke test.
CONFIG = {
    #### what to train
    "mode": ("finetune", "finetune: Difffit + minimax losses on a pretrained DiT (SPEC §2-3); base: train a DiT "
                         "from scratch, every parameter (tiny models for tests and the demo)"),
    "base": ("DiT-XL-2-256x256.pt", "finetune: base weights, anything load_dit accepts (original .pt, diffusers "
                                    "folder or hub id, a base-mode checkpoint.pt); its sha256 is recorded and checked "
                                    "on resume"),
    "model": ("DiT-XL/2", "base mode: DiT registry name to build from scratch (DiT-T/2 is the tiny CPU model)"),
    "num_classes": (0, "base mode: class-table size; 0 = the subset's classes with labels 0..K-1, "
                       "1000 = ImageNet labels (every class must be an ImageNet wnid)"),
    "tune": ("difffit", "finetune: what trains: difffit (biases + class table + gammas, the authors') | bitfit | full"),
    "gamma_blocks": (None, "difffit: block indices that get gammas, e.g. [0,1,2]; null = first half (the authors')"),
    "init_class": (None, "classes the base model does not know get new class-table rows initialised from this base "
                         "class (wnid, ImageNet name or label index); null = the mean of the base rows"),
    #### minimax criteria
    "rep": ("minimax", "representativeness: minimax (Eq. 3, min over the real memory) | mean (Eq. 2) | off"),
    "div": ("minimax", "diversity: minimax (Eq. 4, max over the predicted memory) | mean | off"),
    "lambda_r": (0.002, "weight of the representativeness loss"),
    "lambda_d": (0.008, "weight of the diversity loss"),
    "memory_size": (64, "entries per class in each FIFO memory (N_M)"),
    "memory_sync": ("local", "DDP: local = one memory per rank, never synchronised (the authors'); global = all-gather "
                             "real/pred/labels before each update so every rank holds the same memory"),
    "memory_dtype": ("float32", "memory storage: float32 | float16 (halves the memory; cosines move ~1e-3)"),
    #### data
    "subset": ("imagewoof", "registered subset (imagewoof, imagenette, imageidc, imagenet100, imagenet1k) or custom"),
    "phase": (None, "imagenet100: which block of 20 classes (0-4) this model fine-tunes; null = all"),
    "data_dir": ("", "train folder holding <wnid>/<image> (ImageNet's train dir or one with only the subset)"),
    "class_file": (None, "custom subset: one class folder name per line, in label order; null = sorted folders"),
    "image_size": (256, "training resolution (ADM centre crop); the latent side is image_size / VAE downsampling"),
    "vae": ("stabilityai/sd-vae-ft-ema", "encoder: hub id or local diffusers folder, or 'pixel' (identity, tiny runs)"),
    "latent_cache": (True, "encode every image and its mirror once and draw mean + std * eps per step; false = encode "
                           "with the VAE at every step (the authors')"),
    "cache_dir": ("cache/latents", "where latent caches live (one per dataset + VAE + transform, shared by runs)"),
    "cache_dtype": ("float16", "latent cache storage: float16 (half the disk) | float32"),
    "cache_resident": (False, "copy the whole latent cache to the training device (ImageWoof ~0.4 GB in float16)"),
    "cache_batch_size": (32, "images per VAE batch while building the latent cache"),
    "num_workers": (4, "DataLoader workers for image decoding (cache build and on-the-fly encoding)"),
    #### optimisation
    "lr": (1e-3, "AdamW learning rate, constant (the authors')"),
    "weight_decay": (0.0, "AdamW weight decay"),
    "batch_size": (8, "images per step over ALL processes (the authors' --global-batch-size); each of K ranks "
                      "takes batch_size / K, so steps, EMA and lr schedule do not depend on the GPU count"),
    "epochs": (8, "passes over the subset's train images (drop_last: steps/epoch = images // global batch)"),
    "max_steps": (0, "stop after this many steps in total (0 = epochs decide); the lr is constant so the trajectory "
                     "up to there is unchanged"),
    "ema_decay": (0.9999, "EMA of the trainable parameters, updated every step, started from the base weights"),
    "seed": (0, "seeds everything; the data order of epoch e is a function of (seed, e) only"),
    "flip": Key(True, "random horizontal flip of each training image (DiT's; off for data whose mirror image is "
                      "another class or no class, e.g. digits)", type="bool"),
    #### speed
    "device": ("auto", "auto (CUDA if available) | cpu | cuda"),
    "bf16": (False, "bfloat16 autocast for the forward pass (the authors train in fp32)"),
    "tf32": (True, "allow TF32 matmuls on CUDA (DiT's train.py does)"),
    "compile": (False, "torch.compile the model (first steps are slow while it compiles)"),
    "grad_checkpointing": (False, "recompute block activations in backward: less memory, ~30% slower"),
    #### run dir, checkpoints, logging
    "run_dir": ("results/minimax-imagewoof", "holds config.yaml, log.jsonl and checkpoint.pt (auto-resumed from)"),
    "resume": ("", "checkpoint to resume from (default: <run_dir>/checkpoint.pt when auto_resume)"),
    "auto_resume": (True, "resume from <run_dir>/checkpoint.pt when it exists; false refuses to overwrite it"),
    "ckpt_every": (500, "write <run_dir>/checkpoint.pt every this many steps (and always at the end)"),
    "keep_every": (0, "also keep a copy checkpoint-<step>.pt every this many steps (0 = only the latest)"),
    "log_every": (10, "append a log.jsonl record (losses averaged over the window, lr, steps/s) every this many steps"),
    "progress": (True, "tqdm progress bar"),
    #### testing hooks
    "debug_nan_step": (0, "testing: make the loss of this step NaN (the run must stop, the checkpoint stay intact)"),
    "debug_kill_step": (0, "testing: SIGKILL this process right after the checkpoint of this step is written"),
}

# keys that may differ when resuming (they change speed, logging or the end point, not the trajectory);
# `base` may move as long as its sha256 matches.
RESUME_MUTABLE = {"base", "data_dir", "latent_cache", "cache_dir", "cache_dtype", "cache_resident", "cache_batch_size",
                  "num_workers", "epochs", "max_steps", "device", "bf16", "tf32", "compile", "grad_checkpointing",
                  "run_dir", "resume", "auto_resume", "ckpt_every", "keep_every", "log_every", "progress",
                  "debug_nan_step", "debug_kill_step"}

CHOICES = {"mode": ("finetune", "base"), "tune": ("difffit", "bitfit", "full"), "rep": ("minimax", "mean", "off"),
           "div": ("minimax", "mean", "off"), "memory_sync": ("local", "global"),
           "memory_dtype": ("float32", "float16"), "cache_dtype": ("float16", "float32"),
           "device": ("auto", "cpu", "cuda")}
POSITIVE = ("batch_size", "epochs", "memory_size", "ckpt_every", "log_every", "image_size", "cache_batch_size")
NON_NEGATIVE = ("max_steps", "keep_every", "num_workers", "num_classes", "debug_nan_step", "debug_kill_step",
                "weight_decay", "lambda_r", "lambda_d")


def full_config(overrides=None):
    """Defaults <- overrides (a dict, e.g. from the demo), type-coerced and validated like the command line."""
    cfg = {k: as_key(e).default for k, e in CONFIG.items()}
    for k, v in (overrides or {}).items():
        if k not in CONFIG:
            raise UserError(f"unknown config key '{k}'{suggest(k, CONFIG)}")
        cfg[k] = coerce(k, v, as_key(CONFIG[k]).default)
    return validate(cfg)


def validate(cfg):
    """Cheap value checks, so a typo fails before any model or data is touched."""
    for k, allowed in CHOICES.items():
        if cfg[k] not in allowed:
            raise UserError(f"{k} must be one of {', '.join(allowed)} (got {cfg[k]!r})")
    for k in POSITIVE:
        if not cfg[k] > 0:
            raise UserError(f"{k} must be > 0 (got {cfg[k]})")
    for k in NON_NEGATIVE:
        if cfg[k] < 0:
            raise UserError(f"{k} must be >= 0 (got {cfg[k]})")
    if not 0.0 <= cfg["ema_decay"] < 1.0:
        raise UserError(f"ema_decay must be in [0, 1) (got {cfg['ema_decay']}); the authors use 0.9999")
    if not cfg["lr"] > 0:
        raise UserError(f"lr must be > 0 (got {cfg['lr']})")
    if cfg["mode"] == "base" and cfg["num_classes"] not in (0, 1000):
        raise UserError(f"num_classes must be 0 (the subset's classes) or 1000 (ImageNet labels), "
                        f"got {cfg['num_classes']}")
    if cfg["gamma_blocks"] is not None and not (isinstance(cfg["gamma_blocks"], list)
                                                and all(isinstance(i, int) for i in cfg["gamma_blocks"])):
        raise UserError(f"gamma_blocks must be a list of block indices such as [0,1,2] or null "
                        f"(got {cfg['gamma_blocks']!r})")
    if not cfg["data_dir"]:
        raise UserError("data_dir is not set; pass --data_dir pointing at the folder of <wnid>/<image> train images")
    if not cfg["run_dir"]:
        raise UserError("run_dir is not set; pass --run_dir for the checkpoint, config and log")
    return cfg


def resume_conflicts(saved, cfg):
    """Keys that differ between a checkpoint's config and this run's and would change the trajectory."""
    return [k for k in CONFIG if k not in RESUME_MUTABLE and k in saved and saved[k] != cfg[k]]
