"""Minimax fine-tuning of DiT (SPEC §2-3) and tiny base training: setup checks, model and data, the loop, checkpoints.

Entry point: `train(cfg)` with a dict of models/train_config.CONFIG keys (missing keys take their defaults), returns
a summary dict. Run single-process, or under torchrun (DDP; gloo on CPU, NCCL on CUDA).
"""
import functools
import json
import math
import os
import signal
import time
from contextlib import nullcontext

import torch
import torch.distributed as torch_dist
from tqdm import tqdm

from data.folder import SubsetImageFolder
from data.latent_cache import LatentCache, build_latent_cache, cache_key, sample_latents
from data.lazy_cache import LazyLatentCache, create_lazy_cache, lazy_cache_path
from data.subsets import imagenet_names, imagenet_wnids, resolve_subset
from data.transforms import hflip
from models.difffit import apply_difffit
from models.diffusion import Diffusion
from models.dit import DiT_models
from models.minimax import MinimaxCriterion
from engines.train.schema import full_config, resume_conflicts
from engines.train.state import (CKPT_FORMAT, CKPT_VERSION, EMA, epoch_permutation, get_rng_state, rank_batch,
                                read_checkpoint, seed_everything, set_rng_state)
from models.vae import load_vae
from utils.config import suggest, save_config
from utils.dist import barrier, cleanup, init_distributed
from utils.errors import UserError
from utils import preempt
from utils.io import append_jsonl, atomic_torch_save, atomic_write_text, remove_stale_tmp, run_info
from utils.tracker import Tracker

CKPT_NAME = "checkpoint.pt"


@functools.lru_cache(maxsize=1)
def _run_info():
    """run_info() once per process (it imports diffusers: seconds), as plain strings (torch.__version__ is a
    TorchVersion, which torch.load(weights_only=True) refuses)."""
    return json.loads(json.dumps(run_info(), default=str))


class TrainingDiverged(UserError):
    """A non-finite loss: the run stops before applying that step; the last checkpoint stays as it was."""


#################################################################################
#                   Setup checks (cheap, before any heavy work)                 #
#################################################################################

def check_writable(folder, what):
    """Create `folder` and write a probe file there, so an unwritable output fails now, not after training."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to {what} {folder} ({e.strerror or type(e).__name__}); "
                        f"pass a writable --{what}") from None


def locate_resume(cfg):
    """The checkpoint to resume from: --resume, else <run_dir>/checkpoint.pt when auto_resume; None = fresh start."""
    own = os.path.join(cfg["run_dir"], CKPT_NAME)
    if cfg["resume"] and os.path.isdir(cfg["resume"]):  # a run dir: its checkpoint
        cfg["resume"] = os.path.join(cfg["resume"], CKPT_NAME)
    if cfg["resume"]:
        if os.path.isfile(own) and os.path.isfile(cfg["resume"]) and not os.path.samefile(own, cfg["resume"]):
            raise UserError(f"{own} already exists and would be overwritten by the run resumed from "
                            f"{cfg['resume']}; pass another --run_dir (or drop --resume to continue {own})")
        return cfg["resume"]
    if os.path.isfile(own):
        if not cfg["auto_resume"]:
            raise UserError(f"{own} exists and auto_resume is false; resume it (--auto_resume true) or choose "
                            f"another --run_dir (it is never overwritten by a fresh run)")
        return own
    return None


def check_resume(ckpt, path, cfg, world_size, base_sha, steps_per_epoch=None):
    """Refuse a checkpoint this run cannot continue exactly: other mode, settings, process count or base weights."""
    want_kind = "full" if cfg["mode"] == "base" else "adapter"
    if ckpt.get("kind") != want_kind:
        raise UserError(f"{path} is a '{ckpt.get('kind')}' checkpoint but mode {cfg['mode']} writes '{want_kind}'; "
                        f"resume with the mode it was trained with")
    bad = resume_conflicts(ckpt.get("config", {}), cfg)
    if bad:
        saved = ckpt["config"]
        diffs = ", ".join(f"{k}={saved[k]!r} (now {cfg[k]!r})" for k in bad[:4])
        raise UserError(f"{path} was trained with {diffs}; resume with the same settings or use another --run_dir")
    saved_spe = (ckpt.get("data") or {}).get("steps_per_epoch")
    if steps_per_epoch is not None and saved_spe not in (None, steps_per_epoch):
        raise UserError(f"{path} was trained with {saved_spe} steps per epoch, this data gives {steps_per_epoch}; "
                        f"resume on the same images (the data order depends on their number)")
    if ckpt.get("world_size", 1) != world_size:
        raise UserError(f"{path} was written by {ckpt.get('world_size', 1)} process(es), this run has {world_size}; "
                        f"resume with --nproc_per_node {ckpt.get('world_size', 1)} (per-rank RNG and memories)")
    if cfg["mode"] == "finetune":
        saved = (ckpt.get("base") or {}).get("sha256")
        if saved != base_sha:
            raise UserError(f"base weights {cfg['base']} have sha256 {base_sha[:12]}... but {path} was trained on "
                            f"{str(saved)[:12]}...; pass the base it was trained from (--base)")


#################################################################################
#                              Model and class labels                           #
#################################################################################

def base_label_table(ident, model):
    """{wnid: DiT label} the base model was trained with: ImageNet's order for 1000 classes, else the class list a
    base-mode checkpoint records."""
    table = {w: i for i, w in enumerate(imagenet_wnids())} if model.num_classes == 1000 else {}
    if ident["format"] == "full":
        ck = torch.load(ident["source"], map_location="cpu", weights_only=True, mmap=True)
        sub, labels = ck.get("subset") or {}, ck.get("class_labels")
        if sub.get("wnids") and labels:
            table.update(zip(sub["wnids"], labels))
    if not table:
        raise UserError(f"base {ident['source']} has {model.num_classes} classes and records no class list; "
                        f"use an ImageNet DiT (1000 classes) or a checkpoint of mode base")
    return table


def resolve_init_class(spec, table, num_classes):
    """init_class as a DiT label: a wnid, an ImageNet class name, or a label index."""
    if isinstance(spec, int) and 0 <= spec < num_classes:
        return spec
    if isinstance(spec, str) and spec in table:
        return table[spec]
    if isinstance(spec, str):
        for wnid, names in imagenet_names().items():
            if spec.lower() in (n.strip().lower() for n in names.split(",")) and wnid in table:
                return table[wnid]
    raise UserError(f"init_class {spec!r} is not a class of the base model; pass a wnid such as n02099601, an "
                    f"ImageNet class name, a label index < {num_classes}, or null (mean embedding)")


def base_mode_labels(subset, num_classes, name):
    """mode base: DiT label of each subset class (its own index, or its ImageNet index for a 1000-class table)."""
    if name not in DiT_models:
        raise UserError(f"unknown model '{name}'{suggest(name, DiT_models)}")
    if num_classes == 1000:
        if subset.custom_classes:
            raise UserError(f"num_classes 1000 needs ImageNet classes; {subset.wnids[subset.custom_classes[0]]} "
                            f"is not one; use num_classes 0")
        return list(subset.imagenet_idx)
    return list(range(subset.num_classes))


def build_base_model(name, num_classes, input_size, in_channels):
    """mode base: a fresh DiT from the registry; every parameter except the fixed position embedding trains."""
    model = DiT_models[name](input_size=input_size, in_channels=in_channels, num_classes=num_classes)
    apply_difffit(model, mode="full")
    return model


def build_finetune_model(cfg, ident, subset, latent_channels, latent_size):
    """Base weights -> extra class rows for classes the base does not know -> Difffit. Returns (model, labels) with
    labels[j] the DiT label of subset class j."""
    from models.loading import load_dit
    model = load_dit(cfg["base"], device="cpu")
    arch = model.arch
    if (arch["in_channels"], arch["input_size"]) != (latent_channels, latent_size) or not arch["learn_sigma"]:
        raise UserError(f"base {cfg['base']} takes {arch['in_channels']}x{arch['input_size']}x{arch['input_size']} "
                        f"latents (learn_sigma={arch['learn_sigma']}) but vae {cfg['vae']} at image_size "
                        f"{cfg['image_size']} gives {latent_channels}x{latent_size}x{latent_size}; set --image_size "
                        f"and --vae to match the base (learned sigma is required)")
    table = base_label_table(ident, model)
    labels = [table.get(w) for w in subset.wnids]
    custom = [j for j, lab in enumerate(labels) if lab is None]
    if custom:
        rows = model.y_embedder.embedding_table.weight.data
        init = None
        if cfg["init_class"] is not None:
            init = rows[resolve_init_class(cfg["init_class"], table, model.num_classes)][None].expand(len(custom), -1)
        first = rows.shape[0]
        model.extend_classes(len(custom), init)
        for k, j in enumerate(custom):
            labels[j] = first + k  # after the null row: num_classes + 1 + k
    apply_difffit(model, gamma_blocks=cfg["gamma_blocks"], mode=cfg["tune"])
    return model, labels


#################################################################################
#                                     Data                                      #
#################################################################################

class _Images(torch.utils.data.Dataset):
    """Unflipped centre-cropped images and subset-local labels (the flip is drawn in the loop, seeded)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset.load(i, flip=False), self.dataset.items[i][1]


def epoch_batches(dataset, cache, vae, perm, first, last, rank, world, batch, gen, device, num_workers, flip=True):
    """(z scaled latents (B, C, h, w), subset-local labels (B,)) for steps first..last-1 of an epoch.

    Cache and on-the-fly encoding draw the same random numbers from `gen` (flips, then eps), so with an exact cache
    (float32, deterministic encoder) both give the same latents. flip=False draws the flips all the same (the eps
    stream does not move) and mirrors nothing."""
    order = [rank_batch(perm, s, rank, world, batch) for s in range(first, last)]
    if cache is not None:
        for idx in order:
            z, y = cache.draw(idx, gen, flip=flip)
            yield z.to(device, non_blocking=True), y.to(device)
        return
    if not order:
        return
    loader = torch.utils.data.DataLoader(_Images(dataset), batch_size=batch, sampler=torch.cat(order).tolist(),
                                         num_workers=num_workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0))  # keep off torch's global RNG
    for x, y in loader:
        flips = (torch.rand(x.shape[0], generator=gen) < 0.5) & flip  # (B,)
        x = torch.where(flips[:, None, None, None], hflip(x), x)  # (B, 3, S, S)
        yield sample_latents(vae, x.to(device), generator=gen), y.to(device)


def open_latent_cache(dataset, vae, cfg, info):
    """Build the cache on the main rank (resumable, reused when complete), then open it on every rank.
    cache_fill lazy: create the empty lazy cache on the main rank; entries are encoded when first drawn (a complete
    eager cache of the same data, when there is one, is used instead: same content, no encoding left)."""
    if cfg["cache_fill"] == "lazy":
        eager = os.path.join(cfg["cache_dir"], cache_key(dataset, vae, cfg["cache_dtype"]))
        try:
            return LatentCache(eager, device=info.device if cfg["cache_resident"] else "cpu",
                               resident=cfg["cache_resident"])
        except UserError:
            pass  # none, or incomplete: fill lazily
        if info.is_main:
            create_lazy_cache(dataset, vae, cfg["cache_dir"], cfg["cache_dtype"])
        barrier()
        return LazyLatentCache(lazy_cache_path(cfg["cache_dir"], dataset, vae, cfg["cache_dtype"]), dataset, vae,
                               device="cpu", encode_batch=cfg["cache_fill_batch"],
                               workers=max(1, cfg["num_workers"]))
    if info.is_main:
        build_latent_cache(dataset, vae, cfg["cache_dir"], batch_size=cfg["cache_batch_size"],
                           num_workers=cfg["num_workers"], device=info.device, dtype=cfg["cache_dtype"],
                           progress=cfg["progress"])
    barrier()
    path = os.path.join(cfg["cache_dir"], cache_key(dataset, vae, cfg["cache_dtype"]))
    return LatentCache(path, device=info.device if cfg["cache_resident"] else "cpu", resident=cfg["cache_resident"])


#################################################################################
#                              Distributed helpers                              #
#################################################################################

def preempt_requested(info):
    """Whether any rank got a preemption signal (all ranks then stop at the same step)."""
    flag = preempt.requested() is not None
    if info.world_size > 1:
        t = torch.tensor([float(flag)], device=info.device)
        torch_dist.all_reduce(t)
        flag = bool(t.item())
    return flag


def gather_to_main(obj, info):
    """[obj of rank 0, rank 1, ...] on the main rank (None elsewhere)."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    torch_dist.gather_object(obj, out, dst=0)
    return out


def all_gather_cat(x, info):
    """(B, ...) per rank -> (world * B, ...), rank order (every rank's batch has the same size: drop_last)."""
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_mean(x, info):
    if info.world_size > 1:
        torch_dist.all_reduce(x)
        x = x / info.world_size
    return x


#################################################################################
#                                  Checkpoints                                  #
#################################################################################

def make_checkpoint(*, kind, model, ema, opt, crit_states, rng_states, step, steps_per_epoch, global_batch, cfg,
                    base, subset, class_labels, world_size, info):
    """The CONTRACTS.md format: only what training changes, plus everything needed to continue it exactly."""
    trained = ema.state_dict()
    if kind == "full":
        params = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        ema_sd = dict(params, **trained)  # frozen entries (pos_embed) as they are, trained ones averaged
    else:
        params = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        ema_sd = trained
    epoch, within = divmod(step, steps_per_epoch)
    return {"format": CKPT_FORMAT, "version": CKPT_VERSION, "kind": kind, "arch": dict(model.arch),
            "base": base, "difffit": {"mode": "full" if kind == "full" else cfg["tune"],
                                      "gamma_blocks": list(model.gamma_blocks)},
            "params": params, "ema": ema_sd, "optimizer": opt.state_dict(),
            "criterion": crit_states, "rng": rng_states, "world_size": world_size, "step": step,
            "data": {"epoch": epoch, "index": within * global_batch, "steps_per_epoch": steps_per_epoch},
            "config": dict(cfg), "subset": subset.describe(), "class_labels": list(class_labels), "info": info}


def restore(ckpt, model, ema, opt, crit, generators, rank, device):
    """Put a checkpoint's trained weights, EMA, optimiser, this rank's memories and RNG states back."""
    if ckpt["kind"] == "full":
        model.load_state_dict(ckpt["params"], strict=True)
    else:
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if set(named) != set(ckpt["params"]):
            raise UserError("checkpoint's trainable parameters differ from this model's; resume with the same "
                            "tune and gamma_blocks")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(ckpt["params"][n])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    if crit is not None:
        crit.load_state_dict(ckpt["criterion"][rank])
    try:
        set_rng_state(ckpt["rng"][rank], generators, device)
    except (RuntimeError, KeyError) as e:
        raise UserError(f"cannot restore the checkpoint's RNG state on {device} ({str(e)[:80]}); resume on the "
                        f"device type it was trained on") from None


def trim_log(path, step):
    """Drop log records past `step` (written after the checkpoint a resumed run continues from)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(keep))


#################################################################################
#                                   Training                                    #
#################################################################################

def train(cfg):
    """Fine-tune (or base-train) as `cfg` says; see engines/train/schema.py for every key. Returns a summary dict."""
    cfg = full_config(cfg)
    info = init_distributed(cfg["device"])
    try:
        return _train(cfg, info)
    finally:
        cleanup()


def _train(cfg, info):
    #### cheap checks: config, data, output dir, resume checkpoint, base identity
    subset = resolve_subset(cfg["subset"], cfg["data_dir"], cfg["class_file"], cfg["phase"], cfg["phase_size"])
    if cfg["latent_cache"] or cfg["scan_cache"]:
        check_writable(cfg["cache_dir"], "cache_dir")
    # the listing of 1.28M files is remembered beside the latent caches
    scan_dir = os.path.join(cfg["cache_dir"], "scans") if cfg["scan_cache"] else None
    dataset = SubsetImageFolder(cfg["data_dir"], subset, cfg["image_size"], flip=False, scan_dir=scan_dir)
    check_writable(cfg["run_dir"], "run_dir")
    if info.is_main:  # a run killed mid-write left .tmp-checkpoint.pt.<pid>.*: the rerun of its command removes it
        remove_stale_tmp(cfg["run_dir"])
    n, B, W = len(dataset), cfg["batch_size"], info.world_size
    if B % W:  # B is the global batch (the authors' --global-batch-size): same steps and EMA for any GPU count
        raise UserError(f"batch_size {B} (the global batch) does not split over {W} processes; use a multiple of {W}")
    b = B // W  # per rank
    steps_per_epoch = n // B
    if steps_per_epoch == 0:
        raise UserError(f"{n} images cannot fill one global batch of {B}; lower --batch_size")
    total = cfg["epochs"] * steps_per_epoch
    total = min(total, cfg["max_steps"]) if cfg["max_steps"] else total
    ident = None
    if cfg["mode"] == "base":
        class_labels = base_mode_labels(subset, cfg["num_classes"], cfg["model"])
    else:
        from models.loading import identify_source
        ident = identify_source(cfg["base"])
        if ident["format"] == "adapter":
            raise UserError(f"base {cfg['base']} is an adapter checkpoint; continue it with --resume, or fine-tune "
                            f"from its base weights")
    resume_path = locate_resume(cfg)
    ckpt = read_checkpoint(resume_path) if resume_path else None
    if ckpt is not None:
        check_resume(ckpt, resume_path, cfg, W, ident and ident["sha256"], steps_per_epoch)
    step = ckpt["step"] if ckpt else 0
    log_path = os.path.join(cfg["run_dir"], "log.jsonl")
    if ckpt is not None and step >= total:
        if info.is_main:
            print(f"{resume_path} is at step {step} of {total}: nothing to do (raise --epochs or --max_steps)")
        return {"run_dir": cfg["run_dir"], "checkpoint": resume_path, "step": step, "total_steps": total}

    #### heavy setup: devices, VAE, model, optimiser, criterion, RNG
    device = info.device
    torch.backends.cuda.matmul.allow_tf32 = cfg["tf32"]
    torch.backends.cudnn.allow_tf32 = cfg["tf32"]
    vae = load_vae(cfg["vae"], device=device)
    latent_size = cfg["image_size"] // vae.downsample
    if cfg["image_size"] % vae.downsample:
        raise UserError(f"image_size {cfg['image_size']} is not a multiple of the VAE downsampling {vae.downsample}")
    latent_channels = vae.latent_channels
    # before any seeding: building the cache runs DataLoaders, which draw from torch's global RNG
    cache = open_latent_cache(dataset, vae, cfg, info) if cfg["latent_cache"] else None
    if isinstance(cache, LatentCache):
        vae = None  # not needed any more: the cache holds every latent (a lazy cache keeps encoding)
    seed_everything(cfg["seed"])  # model init identical on every rank
    if cfg["mode"] == "base":
        model = build_base_model(cfg["model"], cfg["num_classes"] or subset.num_classes, latent_size,
                                 latent_channels)
    else:
        model, class_labels = build_finetune_model(cfg, ident, subset, latent_channels, latent_size)
    model.to(device).train()
    if cfg["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    trainable = {nm: p for nm, p in model.named_parameters() if p.requires_grad}
    ema = EMA(trainable, cfg["ema_decay"])
    opt = torch.optim.AdamW(list(trainable.values()), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    crit = None
    if cfg["mode"] == "finetune" and (cfg["rep"] != "off" or cfg["div"] != "off"):
        crit = MinimaxCriterion(subset.num_classes, latent_channels * latent_size ** 2, cfg["memory_size"],
                                cfg["lambda_r"], cfg["lambda_d"], rep=cfg["rep"], div=cfg["div"], device=device,
                                memory_dtype=cfg["memory_dtype"])
    seed_everything(cfg["seed"] * 1000 + info.rank)  # per-rank: label dropout draws from torch's global RNG
    gens = {"data": torch.Generator().manual_seed(cfg["seed"] * 1000 + info.rank),  # flips + posterior eps
            "noise": torch.Generator(device).manual_seed(cfg["seed"] * 1000 + 500 + info.rank)}  # t + noise
    if ckpt is not None:
        restore(ckpt, model, ema, opt, crit, gens, info.rank, device)
    kind = "full" if cfg["mode"] == "base" else "adapter"
    base = None if kind == "full" else {"source": ident["source"], "sha256": ident["sha256"]}
    label_map = torch.tensor(class_labels, dtype=torch.long, device=device)  # subset-local -> DiT label
    provenance = _run_info() if info.is_main else None  # only the main rank writes checkpoints
    tracker = Tracker(cfg["tracker"] if info.is_main else "none", os.path.join(cfg["run_dir"], "tracker"),
                      os.path.basename(os.path.normpath(cfg["run_dir"])), cfg)  # log.jsonl's scalars, sent on
    if info.is_main:
        save_config(cfg, os.path.join(cfg["run_dir"], "config.yaml"))
        trim_log(log_path, step)
        n_train = sum(p.numel() for p in trainable.values())
        print(f"trainable parameters: {n_train:,} ({kind}, {'base' if kind == 'full' else cfg['tune']}); "
              f"{n} images, {steps_per_epoch} steps/epoch, global batch {B} = {W} rank(s) x {b}; "
              f"{'resuming at' if ckpt else 'starting at'} step {step} of {total}")

    fwd = model
    if W > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index]
                                                        if device.type == "cuda" else None)
    if cfg["compile"]:
        fwd = torch.compile(fwd)
    diffusion = Diffusion.linear(1000)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg["bf16"] else nullcontext())
    ckpt_path = os.path.join(cfg["run_dir"], CKPT_NAME)
    last_saved = resume_path if ckpt else None

    def save(at_step):
        if hasattr(cache, "sync"):  # a lazy cache flags its new entries on disk with every checkpoint
            cache.sync()
        rng = gather_to_main(get_rng_state(gens, device), info)
        crits = gather_to_main(crit.state_dict(), info) if crit is not None else []
        if info.is_main:
            obj = make_checkpoint(kind=kind, model=model, ema=ema, opt=opt, crit_states=crits, rng_states=rng,
                                  step=at_step, steps_per_epoch=steps_per_epoch, global_batch=B, cfg=cfg,
                                  base=base, subset=subset, class_labels=class_labels, world_size=W, info=provenance)
            atomic_torch_save(obj, ckpt_path)
            if cfg["keep_every"] and at_step % cfg["keep_every"] == 0:
                atomic_torch_save(obj, os.path.join(cfg["run_dir"], f"checkpoint-{at_step:07d}.pt"))
        barrier()

    #### loop
    bar = tqdm(total=total, initial=step, desc="train", disable=not (cfg["progress"] and info.is_main))
    window = torch.zeros(5, device=device)  # sums of loss, mse, vb, L_r, L_d over the log window
    t_window, n_window, last = time.perf_counter(), 0, {}
    for epoch in range(step // steps_per_epoch, math.ceil(total / steps_per_epoch)):
        perm = epoch_permutation(cfg["seed"], epoch, n)
        first, stop = step - epoch * steps_per_epoch, min(steps_per_epoch, total - epoch * steps_per_epoch)
        for z, y in epoch_batches(dataset, cache, vae, perm, first, stop, info.rank, W, b, gens["data"], device,
                                  cfg["num_workers"], flip=cfg["flip"]):
            t = torch.randint(0, diffusion.num_steps, (z.shape[0],), generator=gens["noise"], device=device)  # (b,)
            noise = torch.randn(z.shape, generator=gens["noise"], device=device)  # (b, C, h, w)
            with autocast:
                out = diffusion.training_losses(fwd, z, t, label_map[y], noise)
            diff = out["loss"].float().mean()
            zero = diff.new_zeros(())
            loss_r, loss_d = crit.losses(out["pred_x0"].float(), z, y) if crit is not None else (zero, zero)
            loss = diff + loss_r + loss_d  # Eq. 5
            if cfg["debug_nan_step"] == step + 1:
                loss = loss * float("nan")
            bad = (~torch.isfinite(loss.detach())).float()
            if W > 1:
                torch_dist.all_reduce(bad)
            if bad.item():
                raise TrainingDiverged(
                    f"non-finite loss at step {step + 1} (total {loss.item():.4g}, diffusion {diff.item():.4g}, "
                    f"L_r {loss_r.item():.4g}, L_d {loss_d.item():.4g}); stopped before applying it; "
                    + (f"the last good checkpoint {last_saved} is intact: resume from it with a lower --lr or "
                       f"without --bf16" if last_saved else "no checkpoint was written yet: lower --lr or drop --bf16"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update()
            probe = None
            if crit is not None and ((step + 1) % cfg["log_every"] == 0 or step + 1 == total):
                probe = crit.probe(out["pred_x0"].detach().float(), y)  # before the update, as the losses saw it
            if crit is not None:  # after the loss: the batch never sees itself (SPEC §3)
                pred = out["pred_x0"].detach().float()
                if cfg["memory_sync"] == "global" and W > 1:
                    crit.update(all_gather_cat(z, info), all_gather_cat(pred, info), all_gather_cat(y, info))
                else:
                    crit.update(z, pred, y)
            step += 1
            n_window += 1
            window += torch.stack([diff.detach(), out["mse"].detach().float().mean(), out["vb"].detach().float().mean(),
                                   loss_r.detach(), loss_d.detach()])
            bar.update(1)
            if step % cfg["log_every"] == 0 or step == total:
                vals = (all_mean(window.clone(), info) / n_window).tolist()
                now = time.perf_counter()
                last = {"step": step, "epoch": epoch, "loss": vals[0] + vals[3] + vals[4], "diffusion": vals[0],
                        "mse": vals[1], "vb": vals[2], "loss_r": vals[3], "loss_d": vals[4],
                        "lr": opt.param_groups[0]["lr"], "steps_per_s": n_window / (now - t_window),
                        **(probe or {})}  # this step's batch on rank 0: memory fill and the losses' cosines
                if info.is_main:
                    append_jsonl(log_path, last)
                    tracker.scalars(last, step, "train")
                    bar.set_postfix(loss=f"{last['loss']:.4f}", L_r=f"{vals[3]:.2e}", L_d=f"{vals[4]:.2e}")
                window.zero_()
                t_window, n_window = now, 0
            if step % cfg["ckpt_every"] == 0 or step == total:
                save(step)
                last_saved = ckpt_path
                if cfg["debug_kill_step"] == step:
                    os.kill(os.getpid(), signal.SIGKILL)  # testing: die like kill -9, right after the write
            if step < total and preempt_requested(info):  # SIGTERM / SIGUSR1: save this step, exit 75
                if step % cfg["ckpt_every"]:  # else saved just above
                    save(step)
                bar.close()
                preempt.stop(f"checkpoint {ckpt_path} at step {step} of {total}")
            if step >= total:
                break
    bar.close()
    tracker.close()
    return {"run_dir": cfg["run_dir"], "checkpoint": ckpt_path, "step": step, "total_steps": total,
            "trainable": sum(p.numel() for p in trainable.values()), "last_log": last}
