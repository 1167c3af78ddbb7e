"""Latent cache: VAE posterior mean/std of every train image and its mirror, encoded once, drawn per step.

Layout of `<cache_dir>/<key>/` (key = hash of items + file sizes/mtimes, VAE identity, image size, transform):
  meta.json      what was encoded and how (written first)
  labels.npy     (N,) int64 subset-local labels
  mean.npy       (N, 2, C, h, w) posterior mean, UNSCALED; [:, 1] is the horizontal mirror
  std.npy        (N, 2, C, h, w) posterior std, UNSCALED
  progress.json  {"chunks_done": k, "num_chunks": n}, rewritten atomically after each chunk is flushed
mean/std are memory-mapped .npy files, so a build that dies (even kill -9) keeps every finished chunk and a
rerun resumes at the first unfinished one; chunks are fixed index ranges encoded in fixed batches, so the
result equals an uninterrupted build whenever the encoder itself is deterministic.

Drawing z = (mean + std * eps) * scale for the image or its mirror (p = 0.5) is the same distribution as
`vae.encode(flip(x)).latent_dist.sample() * scale` on the fly; float16 storage rounds mean and std to
~3 significant digits (relative 2^-11), far below the VAE's own reconstruction error.
"""
import hashlib
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from data.transforms import TRANSFORM_VERSION, hflip
from utils.errors import UserError
from utils.io import atomic_write_json

CACHE_FORMAT = "minimax-latent-cache"
CACHE_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}


#################################################################################
#                                   Cache key                                   #
#################################################################################

def item_stats(dataset):
    """[relative path, label, size, mtime_ns] per item: what the cache content depends on in the data."""
    known = getattr(dataset, "file_stats", None)  # a remembered scan (data/folder.py) spares 1.28M stat calls
    if known:
        return [[rel, int(label), *known[rel]] for rel, label in dataset.items]
    out = []
    for rel, label in dataset.items:
        st = os.stat(os.path.join(dataset.root, rel))
        out.append([rel, int(label), st.st_size, st.st_mtime_ns])
    return out


def cache_key(dataset, vae, dtype="float16"):
    """Hash of (sorted items with file sizes/mtimes, VAE identity, image size, transform, storage dtype)."""
    desc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "vae": str(vae.identity),
            "image_size": int(dataset.image_size), "transform": TRANSFORM_VERSION, "dtype": dtype,
            "items": sorted(item_stats(dataset))}
    return hashlib.sha256(json.dumps(desc, separators=(",", ":")).encode()).hexdigest()[:20]


def _read_json(path):
    with open(path) as f:
        return json.load(f)


#################################################################################
#                                     Build                                     #
#################################################################################

class _Unflipped(torch.utils.data.Dataset):
    """Centre-cropped, unflipped images of a dataset (the mirror is made from the tensor)."""

    def __init__(self, dataset, start):
        self.dataset, self.start = dataset, start

    def __len__(self):
        return len(self.dataset) - self.start

    def __getitem__(self, i):
        return self.dataset.load(self.start + i, flip=False)


def build_latent_cache(dataset, vae, cache_dir, batch_size=32, chunk_size=1024, num_workers=0, device="cpu",
                       dtype="float16", progress=True):
    """Encode every image and its mirror once (resuming an interrupted build); returns the LatentCache.

    A complete cache with the same key is reused without any work. A resumed build uses the batch and chunk
    sizes recorded when it started, so its chunks are encoded exactly as an uninterrupted build would.
    Under DDP build on the main rank only, then barrier, then open with LatentCache(path) everywhere.
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown latent cache dtype '{dtype}'; use float16 or float32")
    if batch_size < 1 or chunk_size < 1:
        raise UserError("latent cache batch and chunk sizes must be >= 1")
    size, down = int(dataset.image_size), int(vae.downsample)
    if size % down:
        raise UserError(f"image size {size} is not a multiple of the VAE downsampling {down}; use e.g. 256")
    if len(dataset) == 0:
        raise UserError(f"no images in {dataset.root}; nothing to cache")
    key = cache_key(dataset, vae, dtype)
    path = os.path.join(cache_dir, key)
    prog_path = os.path.join(path, "progress.json")
    n = len(dataset)

    if os.path.isfile(prog_path):  # resume (or reuse): the recorded layout wins
        meta = _read_json(os.path.join(path, "meta.json"))
        batch_size, chunk_size = meta["batch_size"], meta["chunk_size"]
        done = _read_json(prog_path)["chunks_done"]
        mode = "r+"
    else:
        chunk_size = max(1, chunk_size // batch_size) * batch_size  # whole batches per chunk
        shape = [int(vae.latent_channels), size // down, size // down]
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "vae": str(vae.identity),
                "scale": float(vae.scale), "latent_shape": shape, "image_size": size,
                "transform": TRANSFORM_VERSION, "dtype": dtype, "num_items": n,
                "subset": dataset.subset.describe() if hasattr(dataset, "subset") else None,
                "batch_size": batch_size, "chunk_size": chunk_size, "source_root": os.path.abspath(dataset.root)}
        os.makedirs(path, exist_ok=True)
        atomic_write_json(os.path.join(path, "meta.json"), meta)
        np.save(os.path.join(path, "labels.npy"), np.asarray([y for _, y in dataset.items], dtype=np.int64))
        done, mode = 0, "w+"
    num_chunks = -(-n // chunk_size)
    if done >= num_chunks:
        return LatentCache(path)

    full = (n, 2, *meta["latent_shape"])
    arrays = {name: np.lib.format.open_memmap(os.path.join(path, f"{name}.npy"), mode=mode,
                                              dtype=DTYPES[dtype], shape=tuple(full) if mode == "w+" else None)
              for name in ("mean", "std")}
    if mode == "w+":  # the files exist with their full size before progress.json says they do
        for a in arrays.values():
            a.flush()
        atomic_write_json(prog_path, {"chunks_done": 0, "num_chunks": num_chunks})

    start = done * chunk_size
    loader = torch.utils.data.DataLoader(_Unflipped(dataset, start), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    bar = tqdm(total=n, initial=start, desc="encoding latents", unit="img", disable=not progress)
    pos = start
    with torch.no_grad():
        for x in loader:
            b = x.shape[0]
            x = x.to(device)  # (b, 3, S, S)
            mean, std = vae.encode_stats(torch.cat([x, hflip(x)]))  # (2b, C, h, w) each, unscaled
            if tuple(mean.shape[1:]) != tuple(full[2:]) or mean.shape != std.shape:
                raise ValueError(f"encoder returned {tuple(mean.shape)}/{tuple(std.shape)}, expected "
                                 f"(2b, {', '.join(map(str, full[2:]))})")
            for name, v in (("mean", mean), ("std", std)):
                v = v.float().cpu().reshape(2, b, *full[2:]).transpose(0, 1)  # (b, 2, C, h, w)
                arrays[name][pos:pos + b] = v.numpy().astype(DTYPES[dtype])
            pos += b
            bar.update(b)
            if pos % chunk_size == 0 or pos == n:
                for a in arrays.values():
                    a.flush()  # data on disk before the progress record that vouches for it
                atomic_write_json(prog_path, {"chunks_done": -(-pos // chunk_size), "num_chunks": num_chunks})
    bar.close()
    del arrays
    return LatentCache(path)


#################################################################################
#                                      Draw                                     #
#################################################################################

class LatentCache:
    """A complete cache, memory-mapped read-only (or copied to `device` with resident=True)."""

    def __init__(self, path, device="cpu", resident=False):
        prog = os.path.join(path, "progress.json")
        if not os.path.isfile(prog):
            raise UserError(f"no latent cache at {path}; build it with build_latent_cache first")
        p = _read_json(prog)
        if p["chunks_done"] < p["num_chunks"]:
            raise UserError(f"latent cache {path} is incomplete ({p['chunks_done']}/{p['num_chunks']} chunks); "
                            f"rerun the build to finish it")
        self.path, self.meta = path, _read_json(os.path.join(path, "meta.json"))
        self.scale, self.latent_shape = self.meta["scale"], tuple(self.meta["latent_shape"])
        self.device = torch.device(device)
        self.labels = torch.from_numpy(np.load(os.path.join(path, "labels.npy")))  # (N,) int64
        self.mean = np.load(os.path.join(path, "mean.npy"), mmap_mode="r")  # (N, 2, C, h, w)
        self.std = np.load(os.path.join(path, "std.npy"), mmap_mode="r")
        self.resident = resident
        if resident:  # whole cache in device memory: no host reads per step (ImageWoof: ~0.4 GB in float16)
            self.mean = torch.from_numpy(np.array(self.mean)).to(self.device)
            self.std = torch.from_numpy(np.array(self.std)).to(self.device)

    def __len__(self):
        return len(self.labels)

    def stats(self, indices, flips):
        """Stored (mean, std) of items `indices` (mirrored where `flips`), float32 unscaled (B, C, h, w)."""
        idx, fl = torch.as_tensor(indices).long().reshape(-1), torch.as_tensor(flips).long().reshape(-1)
        if self.resident:
            idx, fl = idx.to(self.device), fl.to(self.device)
            return self.mean[idx, fl].float(), self.std[idx, fl].float()
        ii, ff = idx.numpy(), fl.numpy()
        mean = torch.from_numpy(np.asarray(self.mean[ii, ff], dtype=np.float32))
        std = torch.from_numpy(np.asarray(self.std[ii, ff], dtype=np.float32))
        return mean.to(self.device), std.to(self.device)

    def draw(self, indices, generator, flip=True):
        """z = (mean + std * eps) * scale of each item or its mirror (p = 0.5): (B, C, h, w) float32, labels (B,).

        All randomness comes from `generator` (a CPU torch.Generator): flips first, then eps, so a run is
        reproducible and resumable from the generator's saved state, resident or not. flip=False: never the mirror
        (the flips are still drawn, so eps is the same stream).
        """
        idx = torch.as_tensor(indices).long().reshape(-1)  # (B,)
        flips = (torch.rand(idx.numel(), generator=generator) < 0.5) & flip  # (B,)
        eps = torch.randn((idx.numel(), *self.latent_shape), generator=generator)  # (B, C, h, w)
        mean, std = self.stats(idx, flips)
        z = (mean + std * eps.to(self.device)) * self.scale  # (B, C, h, w)
        return z, self.labels[idx].to(self.device)


def sample_latents(vae, x, generator=None):
    """On-the-fly alternative: z = (mean + std * eps) * scale for images x in [-1, 1] (already flipped)."""
    with torch.no_grad():
        mean, std = vae.encode_stats(x)  # (B, C, h, w) unscaled
    eps = torch.randn(mean.shape, generator=generator).to(mean.device)
    return (mean.float() + std.float() * eps) * vae.scale
