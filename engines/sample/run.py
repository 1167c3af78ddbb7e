"""Batched, deterministic, resumable sampling of IPC image folders (SPEC §4): `<out>/<wnid>/<i>.png`.

Every image has its own seed, derived from (seed, wnid, index) by SHA-256, and its own CPU generator that draws its
initial noise and then the noise of every step in a fixed order. The model always sees `micro_batch` images per call
(the last chunk padded), so on a given machine an image's pixels do not depend on the batch size, on which images
share its batch, on the number of processes, or on the IPC asked: IPC-10 is the first 10 images of IPC-100.
"""
import hashlib
import itertools
import json
import math
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from tqdm import tqdm

from data.folder import SubsetImageFolder
from data.modes import ensure_modes, load_modes
from data.subsets import resolve_subset
from engines.sample.schema import spacing, weights_source
from engines.sample.state import (MANIFEST, MANIFEST_FORMAT, check_out_dir, check_resume, clean, grid_path, image_path,
                                  weights_fingerprint)
from models.diffusion import Diffusion
from models.loading import identify_source, load_dit
from models.vae import load_vae
from utils.dist import barrier, cleanup, init_distributed
from utils.errors import UserError
from utils import preempt
from utils.io import atomic_save_image, atomic_write_json, file_sha256, run_info
from utils.tracker import Tracker

SAMPLERS = ("ancestral", "ddim")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
SEED_RULE = "first 8 bytes (big-endian) of sha256('{seed}/{wnid}/{index}') >> 1"


#################################################################################
#                    Seeds, class labels, checkpoint class lists                #
#################################################################################

def image_seed(seed, wnid, index):
    """The 63-bit seed of image `index` of class `wnid`: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{seed}/{wnid}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def label_table(subset_desc=None, class_labels=None, num_classes=1000):
    """{wnid: DiT label}. Without a checkpoint class list: ImageNet's order (1000-class DiT). With one (the
    checkpoint's "subset" and "class_labels"): its labels; if labels are absent, ImageNet classes keep their index
    and custom classes take the extra rows num_classes + 1 + k (k = position among the custom classes)."""
    from data.subsets import imagenet_wnids
    table = {w: i for i, w in enumerate(imagenet_wnids())} if num_classes == 1000 else {}
    if subset_desc:
        wnids = list(subset_desc["wnids"])
        if class_labels is None:
            idx = subset_desc.get("imagenet_idx") or [table.get(w) for w in wnids]
            custom = [j for j, i in enumerate(idx) if i is None]
            class_labels = list(idx)
            for k, j in enumerate(custom):
                class_labels[j] = num_classes + 1 + k
        table = dict(zip(wnids, class_labels))  # the model knows exactly the classes it was trained on
    return table


def class_labels_for(wnids, table, model, source="the model"):
    """DiT labels of `wnids`, or a UserError naming the classes the model cannot sample."""
    missing = [w for w in wnids if w not in table]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UserError(f"{source} was not trained on class(es) {', '.join(missing[:3])}{more}; sample the classes it "
                        f"knows (its subset), or fine-tune a checkpoint on this class list and pass it as --ckpt")
    labels = [int(table[w]) for w in wnids]
    rows = model.y_embedder.embedding_table.num_embeddings
    bad = [w for w, lab in zip(wnids, labels) if not 0 <= lab < rows or lab == model.null_class]
    if bad:
        raise UserError(f"class(es) {', '.join(bad[:3])} map to labels outside {source}'s class table ({rows} rows, "
                        f"null {model.null_class}); the checkpoint does not match its class list")
    return labels


def checkpoint_meta(source, ident):
    """The subset, class labels and base a fine-tuned checkpoint records ({} for other formats)."""
    if ident["format"] not in ("adapter", "full"):
        return {}
    ck = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    return {k: ck.get(k) for k in ("subset", "class_labels", "base", "step")}


def check_subset(meta, subset, source):
    """A fine-tuned checkpoint samples only the classes it was trained on (its subset, or some of its classes)."""
    trained = (meta.get("subset") or {}).get("wnids")
    if not trained:
        return
    missing = [w for w in subset.wnids if w not in trained]
    if missing:
        name = meta["subset"].get("name", "?")
        m = re.match(r"^(.*)-p(\d+)$", name)  # a phase: imagenet100-p0, imagenet1k-p3 (with its phase_size)
        size = f" --phase_size {len(trained)}" if m and m.group(1) != "imagenet100" else ""
        hint = f"--subset {m.group(1)} --phase {m.group(2)}{size}" if m else f"--subset {name}"
        raise UserError(f"checkpoint {source} was fine-tuned on subset '{name}' ({len(trained)} classes) but subset "
                        f"'{subset.name}' asks for {len(missing)} other class(es) ({', '.join(missing[:3])}); "
                        f"pass {hint} or a checkpoint fine-tuned on '{subset.name}'")


def vae_identity(source):
    """The VAE as the manifest records it: hub id or folder, plus the weights' sha256 for a local folder."""
    ident = {"source": source}
    for d in (source, os.path.join(source, "vae")):
        for w in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.isfile(os.path.join(d, w)):
                return dict(ident, sha256=file_sha256(os.path.join(d, w)))
    return ident


#################################################################################
#                                  The sampler                                  #
#################################################################################

def _padded_chunks(n, micro):
    """(start, stop) chunks of a batch of n; every chunk is later padded to `micro` rows (micro 0: one chunk)."""
    step = micro or n
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _pad(x, m):
    """Pad x (k, ...) to m rows by repeating its last row (valid inputs; the extra rows are dropped)."""
    return x if len(x) >= m else torch.cat([x, x[-1:].expand(m - len(x), *x.shape[1:])], 0)


def guided_eps(model, x, t, y, cfg_scale, cfg_channels, micro_batch, forward=None):
    """Model output (N, 2C, H, W) with classifier-free guidance, both halves in one forward per chunk of
    `micro_batch` images (padded, so every call has the same shape)."""
    forward = forward or model.forward_with_cfg
    null = torch.full_like(y, model.null_class)
    outs = []
    for a, b in _padded_chunks(len(x), micro_batch):
        m = micro_batch or (b - a)
        xc, tc, yc, nc = (_pad(v[a:b], m) for v in (x, t, y, null))
        if cfg_scale == 1.0:  # no guidance: the conditional half alone
            out = model(xc, tc, yc)  # (m, 2C, H, W)
        else:
            out = forward(torch.cat([xc, xc]), torch.cat([tc, tc]), torch.cat([yc, nc]), cfg_scale,
                          cfg_channels)[:m]  # (m, 2C, H, W): the guided conditional half
        outs.append(out[: b - a].float())
    return torch.cat(outs, 0)  # (N, 2C, H, W)


class ImageNoise:
    """One CPU generator per image: draws x_T, then one noise per step, always in that order."""

    def __init__(self, seeds, shape, device):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.device = tuple(shape), device

    def draw(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens]).to(self.device)  # (N, C, H, W)


@torch.no_grad()
def sample_latents(model, diffusion, labels, seeds, *, sampler="ancestral", eta=0.0, cfg_scale=4.0, cfg_channels=3,
                   micro_batch=32, precision="fp32", device="cpu", forward=None, modes=None, mode_scale=0.1,
                   mode_stop=25):
    """Latents (N, C, H, W) float32 for DiT labels (N,) and per-image seeds (N,).

    ancestral: x_T, then at step i = n-1..0 the model sees the ORIGINAL timestep diffusion.timesteps[i] and
    p_step(out, x, i, noise_i) is applied; each image draws x_T and noise_{n-1}, ..., noise_0 from its own generator
    (noise_0 is drawn but unused, as in DiT). ddim: the same with ddim_step; noise is drawn only when eta > 0.
    modes (N, C, H, W): each image's mode for MGD³'s mode guidance, applied while the step index i > mode_stop
    (i counts n-1 -> 0); it reuses the guided eps of the step, so it adds no model call. None: no guidance.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    device = torch.device(device)
    shape = (model.in_channels, model.arch["input_size"], model.arch["input_size"])
    noise = ImageNoise(seeds, shape, device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    x = noise.draw()  # (N, C, H, W): x_T
    dtype = PRECISIONS[precision]
    modes = None if modes is None else torch.as_tensor(modes, dtype=torch.float32).to(device)  # (N, C, H, W)
    for i in reversed(range(diffusion.num_steps)):
        t = diffusion.model_timesteps(i, len(x), device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = guided_eps(model, x, t, y, cfg_scale, cfg_channels, micro_batch, forward)  # (N, 2C, H, W)
        guide = {"mode": modes, "mode_scale": mode_scale} if modes is not None and i > mode_stop else {}
        if sampler == "ancestral":
            x = diffusion.p_step(out, x, i, noise.draw(), **guide)
        else:
            x = diffusion.ddim_step(out, x, i, noise.draw() if eta > 0 else None, eta=eta, **guide)
    return x


@torch.no_grad()
def decode_uint8(vae, z, micro_batch=32):
    """Latents -> (N, H, W, 3) uint8 on the CPU, decoded in padded chunks of `micro_batch` (fixed shapes) and
    quantised as torchvision's save_image(normalize=True, value_range=(-1, 1)) does."""
    outs = []
    for a, b in _padded_chunks(len(z), micro_batch):
        img = vae.decode(_pad(z[a:b], micro_batch or (b - a)))[: b - a].float()  # (k, 3, H, W) in [-1, 1]
        img = ((img + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
        outs.append(img.permute(0, 2, 3, 1).cpu())
    return torch.cat(outs, 0).numpy()


#################################################################################
#                                Preview grid                                   #
#################################################################################

def write_grid(out, wnids, per_class, path=None):
    """A row per class of its first `per_class` images (tiles shrink for many classes); None if nothing exists."""
    rows = []
    for w in wnids:
        row = [image_path(out, w, i) for i in range(per_class) if os.path.isfile(image_path(out, w, i))]
        rows.append(row)
    first = next((p for r in rows for p in r), None)
    if first is None:
        return None
    with Image.open(first) as im:
        side = im.size[0]
    tile = side if len(rows) * side <= 4096 else max(16, 4096 // len(rows))
    if tile < 48:  # tiny images (CPU demos): enlarge by an integer factor, nearest, so pixels stay visible
        tile *= -(-48 // tile)
    canvas = Image.new("RGB", (per_class * tile, len(rows) * tile))
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            with Image.open(p) as im:
                rs = Image.NEAREST if tile % side == 0 and tile >= side else Image.BICUBIC
                canvas.paste(im.convert("RGB").resize((tile, tile), rs), (c * tile, r * tile))
    path = path or grid_path(out)
    atomic_save_image(canvas, path)
    return path


def class_pages_dir(out):
    """The per-class pages beside the folder: <out>_grids/."""
    return os.path.normpath(os.path.abspath(out)) + "_grids"


def write_class_pages(out, wnids, ipc):
    """One page per class of its images 0..ipc-1 (those that exist), in a near-square grid of ceil(sqrt(ipc))
    columns, row-major, at the images' size (tiny images enlarged by an integer factor, nearest):
    <out>_grids/<wnid>.png. Returns the written paths."""
    cols = math.ceil(math.sqrt(ipc))
    rows = math.ceil(ipc / cols)
    written = []
    for w in wnids:
        files = [(i, image_path(out, w, i)) for i in range(ipc) if os.path.isfile(image_path(out, w, i))]
        if not files:
            continue
        with Image.open(files[0][1]) as im:
            side = im.size[0]
        tile = side * -(-48 // side) if side < 48 else side
        page = Image.new("RGB", (cols * tile, rows * tile), "white")
        for i, p in files:
            with Image.open(p) as im:
                page.paste(im.convert("RGB").resize((tile, tile), Image.NEAREST), ((i % cols) * tile,
                                                                                    (i // cols) * tile))
        path = os.path.join(class_pages_dir(out), f"{w}.png")
        atomic_save_image(page, path)
        written.append(path)
    return written


#################################################################################
#                                 sample_folder                                 #
#################################################################################

def sample_folder(model, vae, diffusion, wnids, labels, ipc, out, *, seed=0, sampler="ancestral", eta=0.0,
                  cfg_scale=4.0, cfg_channels=3, batch_size=32, micro_batch=32, precision="fp32", device="cpu",
                  compile=False, overwrite=False, grid=10, class_grids=False, identity=None, config=None, rank=0,
                  world_size=1, progress=True, debug_kill_after=0, modes=None, mode_scale=0.1, mode_stop=25,
                  modes_info=None):
    """Sample images 0..ipc-1 of every class into out/<wnid>/<i>.png; existing images are kept (resume).

    model: DiT in eval mode on `device`; vae: models.vae encoder; diffusion: the respaced process; labels[j]: DiT
    label of class wnids[j]; identity: what else fixes the pixels (weights, VAE, ...), recorded in manifest.json and
    compared on resume (without a "weights" entry the weights are fingerprinted); config: recorded as is. With world_size > 1 (torchrun), the missing images are split across
    ranks. modes (K, ipc, C, H, W), aligned with wnids: image i of class j is mode-guided towards modes[j, i]
    (mode_scale, mode_stop as in sample_latents); modes_info (e.g. the modes file's sha256 and IPC) is recorded in
    the manifest and compared on resume. class_grids: also a page per class of all its images (write_class_pages).
    Returns {"written", "skipped", "seconds", "images_per_s", "grid", "class_grids", "manifest"}.
    """
    if ipc <= 0:
        raise UserError(f"ipc must be at least 1, got {ipc}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if batch_size <= 0 or micro_batch < 0:
        raise UserError(f"batch_size must be >= 1 and micro_batch >= 0, got {batch_size} and {micro_batch}")
    if len(set(wnids)) != len(wnids):
        raise UserError("the class list repeats a class; each wnid must appear once")
    check_out_dir(out)
    device = torch.device(device)
    # everything that changes an image's pixels (batch size and process count do not): compared on resume
    identity = dict(identity or {})
    identity.setdefault("weights", {"fingerprint": weights_fingerprint(model)})
    pixels = dict(identity, latent=[model.in_channels, model.arch["input_size"]],
                  timesteps=list(diffusion.timesteps), sampler=sampler, eta=eta if sampler == "ddim" else None,
                  cfg_scale=cfg_scale, cfg_channels=cfg_channels, seed=seed, precision=precision,
                  micro_batch=micro_batch, device=device.type,
                  tf32=device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    if modes is not None:  # only guided folders carry the key: unguided manifests stay as they were
        modes = torch.as_tensor(modes, dtype=torch.float32)
        if modes.ndim != 5 or len(modes) != len(wnids) or modes.shape[1] != ipc or tuple(modes.shape[2:]) != (
                model.in_channels, model.arch["input_size"], model.arch["input_size"]):
            raise UserError(f"modes of shape {tuple(modes.shape)} do not fit {len(wnids)} classes x IPC {ipc} of "
                            f"{model.in_channels}x{model.arch['input_size']}x{model.arch['input_size']} latents; "
                            f"compute the modes for this IPC, class list and VAE")
        pixels["guidance"] = dict(modes_info or {}, kind="mode", scale=mode_scale, stop=mode_stop)
    pixels = json.loads(json.dumps(pixels))  # compared with what JSON gives back on resume
    classes = dict(zip(wnids, labels))

    #### refuse or prepare the folder (every rank checks before rank 0 writes anything)
    old, replace = check_resume(out, pixels, classes, overwrite)
    barrier()
    if rank == 0:
        prev = old or {}
        clean(out, list(dict.fromkeys(list(wnids) + list(prev.get("classes", {})))), remove_images=replace)
        if replace:
            prev = {}
        ipcs = dict(prev.get("ipc", {}))
        ipcs.update({w: max(ipc, ipcs.get(w, 0)) for w in wnids})
        manifest = {"format": MANIFEST_FORMAT, "version": 1, "complete": False, "pixels": pixels,
                    "classes": dict(prev.get("classes", {}), **classes), "ipc": ipcs, "seed_rule": SEED_RULE,
                    "seeds": {w: [image_seed(seed, w, i) for i in range(n)] for w, n in ipcs.items()},
                    "config": config, "runs": prev.get("runs", []) + [{
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "ipc": ipc, "classes": list(wnids),
                        "batch_size": batch_size, "world_size": world_size, "compile": compile,
                        "info": run_info()}]}
        for w in wnids:
            os.makedirs(os.path.join(out, w), exist_ok=True)
        atomic_write_json(os.path.join(out, MANIFEST), manifest)
    barrier()
    todo = [(j, i) for j, w in enumerate(wnids) for i in range(ipc) if not os.path.isfile(image_path(out, w, i))]
    barrier()  # every rank has listed before any rank writes
    mine = todo[rank::world_size]

    #### sample
    forward = torch.compile(model.forward_with_cfg) if compile else None
    bar = tqdm(total=len(mine), unit="img", disable=not progress or rank != 0, desc="sampling")
    saved, t0 = itertools.count(1), time.perf_counter()

    def save(arr, path):
        atomic_save_image(Image.fromarray(arr), path)
        if debug_kill_after and next(saved) >= debug_kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # testing hook: die as a crash would, mid-run

    with ThreadPoolExecutor(max_workers=1 if debug_kill_after else 4) as pool:  # PNG encoding overlaps sampling
        pending = []
        for a in range(0, len(mine), batch_size):
            batch = mine[a:a + batch_size]
            seeds = [image_seed(seed, wnids[j], i) for j, i in batch]
            guide = {} if modes is None else {"modes": modes[[j for j, _ in batch], [i for _, i in batch]],
                                              "mode_scale": mode_scale, "mode_stop": mode_stop}
            z = sample_latents(model, diffusion, [labels[j] for j, _ in batch], seeds, sampler=sampler, eta=eta,
                               cfg_scale=cfg_scale, cfg_channels=cfg_channels, micro_batch=micro_batch,
                               precision=precision, device=device, forward=forward, **guide)
            imgs = decode_uint8(vae, z, micro_batch)  # (B, H, W, 3)
            pending += [pool.submit(save, arr, image_path(out, wnids[j], i)) for (j, i), arr in zip(batch, imgs)]
            for f in [f for f in pending if f.done()]:
                f.result()  # re-raise a failed write now
            pending = [f for f in pending if not f.done()]
            bar.update(len(batch))
            if preempt.requested() is not None and a + batch_size < len(mine):  # SIGTERM / SIGUSR1: the PNGs
                for f in pending:  # written so far are the state; finish them and stop (exit 75)
                    f.result()
                bar.close()
                preempt.stop(f"{out}: every finished image is written (rank {rank})")
        for f in pending:
            f.result()
    bar.close()
    seconds = time.perf_counter() - t0
    barrier()

    #### preview grid and final manifest
    gpath, pages = None, []
    if rank == 0:
        gpath = write_grid(out, wnids, min(grid, ipc)) if grid > 0 else None
        pages = write_class_pages(out, wnids, ipc) if class_grids else []
        manifest["complete"] = all(os.path.isfile(image_path(out, w, i)) for w in wnids for i in range(ipc))
        manifest["runs"][-1]["seconds"] = round(seconds, 3)
        atomic_write_json(os.path.join(out, MANIFEST), manifest)
    barrier()
    return {"written": len(mine), "skipped": len(wnids) * ipc - len(todo), "seconds": seconds,
            "images_per_s": len(mine) / seconds if seconds > 0 else 0.0, "grid": gpath, "class_grids": pages,
            "manifest": os.path.join(out, MANIFEST)}


#################################################################################
#                                    sample.py                                  #
#################################################################################

def run(cfg):
    """sample.py after its config is parsed: the subset, the weights and the VAE checked against each other, the
    modes for --guidance mode, then sample_folder. Returns its stats."""
    cfg_channels = None if cfg["cfg_channels"] == "all" else cfg["cfg_channels"]
    subset = resolve_subset(cfg["subset"], cfg["train_dir"], cfg["class_file"], cfg["phase"],
                             cfg["phase_size"])
    train_data = None
    if cfg["guidance"] == "mode":  # listed now: a wrong train dir fails before anything is loaded
        train_data = SubsetImageFolder(cfg["train_dir"], subset, cfg["image_size"], flip=False)
        fewest = min(train_data.labels.count(c) for c in range(len(subset.wnids)))
        if fewest < cfg["ipc"]:  # k-means needs at least k = ipc latents per class
            raise UserError(f"--guidance mode at ipc {cfg['ipc']} needs {cfg['ipc']} train images per class, but a "
                            f"class of {cfg['train_dir']} has {fewest}; lower --ipc or add images")

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
    diffusion = Diffusion.linear(1000).respaced(cfg["num_steps"], spacing(cfg))  # the manifest records its timesteps
    guide = {}
    if train_data is not None:  # the modes file is built once (rank 0) and then only read
        path = ensure_modes(train_data, cfg["ipc"], cfg["cache_dir"], cfg["modes_vae"], flip=cfg["modes_flip"],
                            seed=cfg["seed"], precision=cfg["modes_precision"], is_main=dist.is_main,
                            device=dist.device, progress=cfg["progress"])
        modes, info = load_modes(path, subset.wnids, cfg["ipc"], cfg["modes"])
        if tuple(modes.shape[2:]) != (arch["in_channels"], latent, latent):
            raise UserError(f"modes_vae {cfg['modes_vae']} gives {'x'.join(map(str, modes.shape[2:]))} latents but "
                            f"the model takes {arch['in_channels']}x{latent}x{latent}; pass the encoder of --vae "
                            f"(pixel for pixel models)")
        guide = dict(modes=modes, mode_scale=cfg["mode_scale"], mode_stop=cfg["mode_stop"], modes_info=info)
    stats = sample_folder(model, vae, diffusion, subset.wnids, labels, cfg["ipc"], cfg["out"], seed=cfg["seed"],
                          sampler=cfg["sampler"], eta=cfg["ddim_eta"], cfg_scale=cfg["cfg_scale"],
                          cfg_channels=cfg_channels, batch_size=cfg["batch_size"], micro_batch=cfg["micro_batch"],
                          precision=cfg["precision"], device=dist.device, compile=cfg["compile"],
                          overwrite=cfg["overwrite"], grid=cfg["grid"], class_grids=cfg["class_grids"],
                          identity=identity, config=dict(cfg),
                          rank=dist.rank, world_size=dist.world_size, progress=cfg["progress"],
                          debug_kill_after=cfg["debug_kill_after"], **guide)
    if dist.is_main:  # the tracker gets what the run wrote: speed and the grids (nothing here changes a pixel)
        tracker = Tracker(cfg["tracker"], os.path.normpath(os.path.abspath(cfg["out"])) + "_tracker",
                          os.path.basename(os.path.normpath(cfg["out"])), cfg)
        tracker.scalars({k: stats[k] for k in ("written", "skipped", "seconds", "images_per_s")}, 0, "sample")
        tracker.image("sample/grid", stats["grid"])
        for page in stats["class_grids"]:
            tracker.image(f"sample/class/{os.path.splitext(os.path.basename(page))[0]}", page)
        tracker.close()
        print(f"{stats['written']} image(s) written on rank 0 of {dist.world_size}, {stats['skipped']} kept, "
              f"{stats['images_per_s']:.2f} img/s; folder {cfg['out']}, grid {stats['grid']}")
    cleanup()
    return stats
