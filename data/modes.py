"""Mode discovery for MGD³'s mode guidance (Chan-Santiago et al., ICML 2025, arXiv 2505.18963): for each class,
k-means with k = IPC over the flattened, scaled VAE posterior means of the class's train images, read from the
latent cache (no image is decoded or encoded again once the cache exists).

What is clustered follows MGD³'s feature pass (its get_loader + get_features_per_class): the ADM centre crop, then
torchvision's RandomHorizontalFlip, then the encoder's posterior mean x scale in float32, k-means on those float32
vectors. Here:
  flip "random" (default): item n is mirrored iff torch.rand(1) < 0.5 from its own generator, seeded with
         flip_seed(seed, relative path) (FLIP_RULE): MGD³'s Bernoulli(0.5) per image, but the same draw on every
         build, machine, worker count and data order; the seed is the sampling seed (MGD³ seeds torch with --seed
         before its feature pass, so each of its sampling seeds clusters other flips). The cache holds every image
         and its mirror, so a flip is a read, not an encoding.
  flip "none": never mirrored (this project's rule before issue 16; one modes file for every seed).
  precision "float32" (default): the means come from a float32 latent cache (exact encoder output); "float16": from
         a float16 cache (rounded to 2^-11 relative; reuses a float16 fine-tuning cache without encoding).

Files `<cache_dir>/modes/<key>.npy` and `<key>.json`, key = hash(format version, latent cache key (data, encoder,
storage dtype), IPC, k-means settings, flip rule and seed):
  .npy   float32 (K, 2, IPC, C, h, w): [:, 0] the k-means centroids, [:, 1] the real latent nearest to each one
  .json  what was clustered and how: classes, IPC, cache key, VAE, precision, flip rule and seed, mirrored count,
         the item behind each nearest latent, the .npy's sha256 (written last: a .json whose sha256 matches vouches
         for a complete .npy)
Both are functions of the cache content only (no timestamps; k-means on one thread), so two builds give identical
bytes, whatever the machine's core count (ImageWoof: ~4 s per class at IPC 100 on one CPU core). Files of another
format version (v1: unmirrored float16 means, clustered in float64) are refused by load_modes, never reused.
"""
import hashlib
import io
import json
import os
from types import SimpleNamespace

import numpy as np
import torch

from utils.errors import UserError
from utils.io import atomic_write_bytes, atomic_write_json

MODES_FORMAT = "minimax-modes"
MODES_VERSION = 2  # 1: unmirrored float16 means in float64 k-means; 2: MGD³'s random flips, float32 (issue 16)
KINDS = ("centroid", "nearest")  # what image i is guided towards: centroid i, or the real latent nearest to it
KMEANS = {"random_state": 0, "n_init": "auto"}  # MGD³'s scikit-learn settings
FLIPS = ("random", "none")  # random: MGD³'s RandomHorizontalFlip, one seeded draw per item; none: never mirrored
PRECISIONS = ("float32", "float16")  # storage dtype of the latent cache the means are read from
FLIP_RULE = ("mirror item iff torch.rand(1, generator=torch.Generator().manual_seed(s)) < 0.5, s = first 8 bytes "
             "(big-endian) of sha256('{seed}/modes-flip/{relative path}') >> 1")


def flip_seed(seed, rel):
    """The 63-bit seed of the flip draw of item `rel` (its path relative to the train dir, '/'-separated)."""
    digest = hashlib.sha256(f"{seed}/modes-flip/{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def modes_flips(rels, seed, flip="random"):
    """(N,) int64, 1 where item rels[n] is mirrored before clustering (FLIP_RULE; all 0 for flip "none"). Each draw
    depends only on (seed, path): not on the order, the other items or the machine."""
    if flip not in FLIPS:
        raise UserError(f"unknown modes flip '{flip}'; choose one of {', '.join(FLIPS)}")
    if flip == "none":
        return np.zeros(len(rels), dtype=np.int64)
    g = torch.Generator()
    return np.array([int(torch.rand(1, generator=g.manual_seed(flip_seed(seed, r))).item() < 0.5) for r in rels],
                    dtype=np.int64)


def kmeans_modes(latents, k):
    """(centroids (k, D), index of the latent nearest to each centroid (k,)) of latents (n, D); the centroids have
    the latents' dtype (float32 for MGD³'s features: scikit-learn runs k-means in float32 on float32 input)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances_argmin
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):  # k-means' float sums depend on the thread count: one thread, the same file anywhere
        km = KMeans(n_clusters=k, **KMEANS).fit(latents)
        centers = km.cluster_centers_  # (k, D), in scikit-learn's cluster order: image i <- cluster i
        return centers, pairwise_distances_argmin(centers, latents)  # (k,)


def _flip_desc(flip, seed):
    return {"rule": "none"} if flip == "none" else {"rule": FLIP_RULE, "seed": int(seed)}


def modes_key(cache_key, ipc, flip="random", seed=0):
    desc = {"format": MODES_FORMAT, "version": MODES_VERSION, "cache": cache_key, "ipc": int(ipc), "kmeans": KMEANS,
            "flip": _flip_desc(flip, seed)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]


def modes_path(cache_dir, key):
    """The .npy path of modes `key` (its .json sits beside it)."""
    return os.path.join(cache_dir, "modes", f"{key}.npy")


def _meta_path(path):
    return os.path.splitext(path)[0] + ".json"


def build_modes(cache, dataset, ipc, path, flip="random", seed=0):
    """Cluster every class of `dataset` (the dataset `cache` was built from) into `ipc` modes; write `path`.
    flip, seed: which orientation of each item is clustered (modes_flips)."""
    from sklearn import __version__ as sklearn_version
    labels = cache.labels.numpy()
    shape = tuple(cache.latent_shape)
    flips = modes_flips([rel for rel, _ in dataset.items], seed, flip)  # (N,)
    arrays, nearest, mirrored = [], [], {}
    for j, wnid in enumerate(dataset.subset.wnids):
        idx = np.flatnonzero(labels == j)  # the class's items, in the cache's (sorted path) order
        if len(idx) < ipc:
            raise UserError(f"class {wnid} has {len(idx)} train image(s) in {dataset.root}, fewer than the {ipc} "
                            f"modes asked; lower --ipc or add images")
        mean, _ = cache.stats(idx, flips[idx])  # (n, C, h, w) float32, unscaled, mirrored where flips[idx]
        z = (mean.cpu() * cache.scale).reshape(len(idx), -1).numpy()  # (n, D) float32, as MGD³'s features
        centers, near = kmeans_modes(z, ipc)  # float32 k-means (scikit-learn keeps the input's dtype)
        arrays.append(np.stack([centers, z[near]]).reshape(2, ipc, *shape))
        nearest.append([dataset.items[idx[n]][0] for n in near])
        mirrored[wnid] = int(flips[idx].sum())
    buf = io.BytesIO()
    np.save(buf, np.stack(arrays).astype(np.float32))  # (K, 2, ipc, C, h, w)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    meta = {"format": MODES_FORMAT, "version": MODES_VERSION, "wnids": list(dataset.subset.wnids), "ipc": int(ipc),
            "kinds": list(KINDS), "latent_shape": list(shape), "scale": cache.scale, "cache_key": cache.meta["key"],
            "vae": cache.meta["vae"], "image_size": cache.meta["image_size"], "clustered": f"posterior means x scale "
            f"(stored as {cache.meta['dtype']}, clustered in float32), mirrored where the flip draw says",
            "precision": cache.meta["dtype"],
            "flip": _flip_desc(flip, seed), "mirrored": mirrored, "kmeans": dict(KMEANS, n_clusters=int(ipc)),
            "sklearn": sklearn_version, "nearest_items": dict(zip(dataset.subset.wnids, nearest)),
            "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_json(_meta_path(path), meta)
    return path


def _read_verified(path):
    """(bytes of the modes file, its meta) when both exist and the bytes match the recorded sha256, else None."""
    meta = _meta_path(path)
    if not (os.path.isfile(path) and os.path.isfile(meta)):
        return None
    with open(path, "rb") as f, open(meta) as m:
        data, info = f.read(), json.load(m)
    return (data, info) if info.get("sha256") == hashlib.sha256(data).hexdigest() else None


def modes_complete(path):
    return _read_verified(path) is not None


def load_modes(path, wnids, ipc, kind="centroid"):
    """(modes (K, ipc, C, h, w) float32 for classes `wnids`, record for the manifest) from a modes file."""
    if kind not in KINDS:
        raise UserError(f"unknown modes '{kind}'; choose one of {', '.join(KINDS)}")
    verified = _read_verified(path)  # one read: checked and then parsed from the same bytes
    if verified is None:
        raise UserError(f"modes file {path} is missing or incomplete; rerun to rebuild it")
    raw, meta = verified
    if meta.get("format") != MODES_FORMAT or meta.get("version") != MODES_VERSION:
        raise UserError(f"modes file {path} is {meta.get('format')} version {meta.get('version')}, not version "
                        f"{MODES_VERSION} (MGD³'s flipped float32 means since issue 16); delete it and rerun to "
                        f"rebuild")
    missing = [w for w in wnids if w not in meta["wnids"]]
    if missing or meta["ipc"] != ipc:
        raise UserError(f"modes file {path} holds {meta['ipc']} modes of {len(meta['wnids'])} classes, not {ipc} of "
                        f"{', '.join(missing[:3]) or 'these classes'}; compute the modes for this IPC and class list")
    data = np.load(io.BytesIO(raw))  # (K', 2, ipc, C, h, w)
    rows = [meta["wnids"].index(w) for w in wnids]
    modes = torch.from_numpy(np.ascontiguousarray(data[rows, KINDS.index(kind)]))
    return modes, {"modes": kind, "ipc": ipc, "sha256": meta["sha256"], "vae": meta["vae"]}


def _older_files(cache_dir):
    """Modes files of another format version in <cache_dir>/modes (never used; reported once when building)."""
    folder, old = os.path.join(cache_dir, "modes"), []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    version = json.load(f).get("version")
            except (OSError, ValueError, AttributeError):
                continue
            if version != MODES_VERSION:
                old.append(name[:-5])
    return old


def ensure_modes(dataset, ipc, cache_dir, vae_source, *, flip="random", seed=0, precision="float32", is_main=True,
                 device="cpu", progress=True):
    """The modes file of (dataset, VAE, IPC, flip rule and seed): built on the main rank if missing (the latent cache
    of storage dtype `precision` too, with the encoder `vae_source`; a complete cache is reused), then every rank
    waits for it. Returns its path."""
    from data.latent_cache import build_latent_cache, cache_key
    from utils.dist import barrier
    if precision not in PRECISIONS:
        raise UserError(f"unknown modes precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    modes_flips([], seed, flip)  # an unknown flip rule fails before any work
    # the cache key needs only the encoder's identity, which load_vae sets to its source
    key = cache_key(dataset, SimpleNamespace(identity=vae_source), precision)
    path = modes_path(cache_dir, modes_key(key, ipc, flip, seed))
    if is_main and not modes_complete(path):
        old = _older_files(cache_dir)
        if old:
            print(f"note: {len(old)} modes file(s) of an older format in {os.path.join(cache_dir, 'modes')} are not "
                  f"used (v1 clustered unmirrored float16 means); building version {MODES_VERSION}. Delete "
                  f"{old[0]}.npy/.json{' and the others' if len(old) > 1 else ''} to free the space", flush=True)
        from models.vae import load_vae
        vae = load_vae(vae_source, device=device)
        cache = build_latent_cache(dataset, vae, cache_dir, device=device, dtype=precision, progress=progress)
        build_modes(cache, dataset, ipc, path, flip, seed)
    barrier()
    return path
