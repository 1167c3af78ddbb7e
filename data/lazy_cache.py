"""Lazy latent cache: the eager cache's layout and draws, but an (image, flip) entry is encoded the first time a
step draws it, then stored and reused.

Why: the eager build (data/latent_cache.py) encodes every image AND its mirror before step 1 (2N encodings); at one
or two epochs over ImageNet-1K (N = 1.28M) that is as much VAE work as encoding on the fly, or more. Encoding on
first draw never costs more than either: after E epochs the expected number of encodings is 2N (1 - 2^-E)
(N after one epoch, like no cache; 1.5N after two; -> 2N, like the eager build), and every later draw is a read.

Layout of `<cache_dir>/<key>-lazy/` (key = data/latent_cache.cache_key: items, VAE, image size, transform, dtype):
  meta.json      as the eager cache's, with "fill": "lazy"
  labels.npy     (N,) int64 subset-local labels
  mean.npy       (N, 2, C, h, w) posterior mean, UNSCALED; [:, 1] is the mirror (sparse file: unwritten rows
  std.npy        (N, 2, C, h, w) posterior std,  UNSCALED   take no disk)
  filled.npy     (N, 2) uint8: 1 once the entry is stored
Flags are written only by sync(): the rows are flushed to disk first, then the flags of those rows are set and
flushed, so a flag never vouches for a row that is not on disk, even after a power loss. sync() runs every
`sync_every` fills and at every training checkpoint (a synchronous flush every step cost 8-30 ms on the
development machine's disk, as much as a whole GPU step); a kill loses at most the unsynced entries, which are
encoded again when drawn. Under DDP every rank fills its own draws into the same memory-mapped files (one machine;
several machines need a shared file system that honours mmap writes, else use the eager build).

Identity with the eager cache: an entry is the encoder's (mean, std) of the same centre-cropped tensor (mirrored
as a tensor, as the eager build does), encoded in fixed-size padded batches so it does not depend on which
entries share the batch; draws take flips then eps from the caller's generator exactly as LatentCache.draw, so
with a deterministic encoder a run draws the same latents with either cache (tested).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from data.latent_cache import CACHE_FORMAT, CACHE_VERSION, DTYPES, LatentCache, cache_key
from data.transforms import TRANSFORM_VERSION, hflip
from utils.errors import UserError
from utils.io import atomic_write_json


def lazy_cache_path(cache_dir, dataset, vae, dtype="float16"):
    return os.path.join(cache_dir, cache_key(dataset, vae, dtype) + "-lazy")


def create_lazy_cache(dataset, vae, cache_dir, dtype="float16"):
    """Create the (empty) lazy cache files unless they exist; returns the path. Call on one rank, then barrier."""
    if dtype not in DTYPES:
        raise UserError(f"unknown latent cache dtype '{dtype}'; use float16 or float32")
    size, down = int(dataset.image_size), int(vae.downsample)
    if size % down:
        raise UserError(f"image size {size} is not a multiple of the VAE downsampling {down}; use e.g. 256")
    if len(dataset) == 0:
        raise UserError(f"no images in {dataset.root}; nothing to cache")
    path = lazy_cache_path(cache_dir, dataset, vae, dtype)
    if os.path.isfile(os.path.join(path, "filled.npy")):
        return path
    n, shape = len(dataset), [int(vae.latent_channels), size // down, size // down]
    os.makedirs(path, exist_ok=True)
    atomic_write_json(os.path.join(path, "meta.json"), {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "fill": "lazy", "key": os.path.basename(path),
        "vae": str(vae.identity), "scale": float(vae.scale), "latent_shape": shape, "image_size": size,
        "transform": TRANSFORM_VERSION, "dtype": dtype, "num_items": n,
        "subset": dataset.subset.describe() if hasattr(dataset, "subset") else None,
        "source_root": os.path.abspath(dataset.root)})
    np.save(os.path.join(path, "labels.npy"), np.asarray([y for _, y in dataset.items], dtype=np.int64))
    for name in ("mean", "std"):  # sparse: open_memmap seeks to the end, no row is written yet
        np.lib.format.open_memmap(os.path.join(path, f"{name}.npy"), mode="w+", dtype=DTYPES[dtype],
                                  shape=(n, 2, *shape)).flush()
    tmp = os.path.join(path, ".tmp-filled.npy")
    np.save(tmp, np.zeros((n, 2), dtype=np.uint8))
    os.replace(tmp, os.path.join(path, "filled.npy"))  # its existence says the files above are complete
    return path


class LazyLatentCache(LatentCache):
    """Draws like data/latent_cache.LatentCache; missing entries are encoded with `vae` from `dataset` first.

    encode_batch: images per VAE call, padded to that many so an entry never depends on its batch mates. Small
    (default 2): in epoch 2 about half of a step's entries are missing, and padding them up to the whole batch
    would encode as much as no cache at all.
    workers: threads decoding the missing images of a step (PIL releases the GIL while decoding).
    """

    def __init__(self, path, dataset, vae, device="cpu", encode_batch=2, workers=4, sync_every=64):
        if not os.path.isfile(os.path.join(path, "filled.npy")):
            raise UserError(f"no lazy latent cache at {path}; create it with create_lazy_cache first")
        import json
        with open(os.path.join(path, "meta.json")) as f:
            self.meta = json.load(f)
        if self.meta["num_items"] != len(dataset):
            raise UserError(f"lazy latent cache {path} holds {self.meta['num_items']} items, the dataset "
                            f"{len(dataset)}; its key should have differed: delete {path}")
        self.path, self.dataset, self.vae = path, dataset, vae
        self.scale, self.latent_shape = self.meta["scale"], tuple(self.meta["latent_shape"])
        self.dtype = DTYPES[self.meta["dtype"]]
        self.device, self.resident = torch.device(device), False  # memory-mapped: LatentCache.stats reads rows
        self.encode_batch, self.workers = max(1, int(encode_batch)), max(1, int(workers))
        self.labels = torch.from_numpy(np.load(os.path.join(path, "labels.npy")))  # (N,) int64
        self.mean = np.load(os.path.join(path, "mean.npy"), mmap_mode="r+")  # (N, 2, C, h, w)
        self.std = np.load(os.path.join(path, "std.npy"), mmap_mode="r+")
        self.filled = np.load(os.path.join(path, "filled.npy"), mmap_mode="r+")  # (N, 2) uint8
        self.encoded = 0  # entries this process encoded (benchmarks, tests)
        self.pending, self.sync_every, self.fills = set(), max(1, int(sync_every)), 0  # stored, not yet flagged
        self._pool = None  # decoding threads, made on first use

    @torch.no_grad()
    def fill(self, indices, flips):
        """Encode and store the (index, flip) entries that are not stored yet; returns how many were encoded."""
        idx = torch.as_tensor(indices).long().reshape(-1).tolist()
        fl = torch.as_tensor(flips).long().reshape(-1).tolist()
        todo = sorted({(i, f) for i, f in zip(idx, fl) if not self.filled[i, f] and (i, f) not in self.pending})
        if not todo:
            return 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers)
        images = list(self._pool.map(lambda e: self.dataset.load(e[0], flip=False), todo))  # (3, S, S) each
        x = torch.stack([hflip(im) if f else im for im, (_, f) in zip(images, todo)])  # (k, 3, S, S)
        m = self.encode_batch
        means, stds = [], []
        for a in range(0, len(x), m):
            xb = x[a:a + m]
            k = len(xb)
            if k < m:  # pad with copies of the last image: the VAE always sees (m, 3, S, S)
                xb = torch.cat([xb, xb[-1:].expand(m - k, *xb.shape[1:])])
            mean, std = self.vae.encode_stats(xb.to(self.vae_device()))  # (m, C, h, w) unscaled
            if tuple(mean.shape[1:]) != self.latent_shape or mean.shape != std.shape:
                raise ValueError(f"encoder returned {tuple(mean.shape)}/{tuple(std.shape)}, expected "
                                 f"(m, {', '.join(map(str, self.latent_shape))})")
            means.append(mean[:k].float().cpu())
            stds.append(std[:k].float().cpu())
        mean, std = torch.cat(means).numpy().astype(self.dtype), torch.cat(stds).numpy().astype(self.dtype)
        rows, cols = np.array([i for i, _ in todo]), np.array([f for _, f in todo])
        self.mean[rows, cols] = mean
        self.std[rows, cols] = std
        self.pending.update(todo)
        self.encoded += len(todo)
        self.fills += 1
        if self.fills % self.sync_every == 0:
            self.sync()
        return len(todo)

    def sync(self):
        """Flush the stored rows to disk, then set and flush their flags (never the other order)."""
        if not self.pending:
            return
        self.mean.flush()
        self.std.flush()
        rows, cols = zip(*sorted(self.pending))
        self.filled[np.array(rows), np.array(cols)] = 1
        self.filled.flush()
        self.pending.clear()

    def is_stored(self, i, f):
        return bool(self.filled[i, f]) or (i, f) in self.pending

    def vae_device(self):
        model = getattr(self.vae, "model", None)
        return next(model.parameters()).device if model is not None else self.device

    def stats(self, indices, flips):
        """As LatentCache.stats, encoding the entries not stored yet first (draw() inherits it: flips, then eps,
        from the generator, so the draws equal the eager cache's)."""
        self.fill(indices, flips)
        return super().stats(indices, flips)
