"""Mode discovery for MGD³'s mode guidance (Chan-Santiago et al., ICML 2025, arXiv 2505.18963): for each class,
k-means with k = IPC over the flattened, scaled VAE posterior means of the class's train images, read from the
latent cache (no image is decoded or encoded again once the cache exists).

Files `<cache_dir>/modes/<key>.npy` and `<key>.json`, key = hash(latent cache key, IPC, k-means settings):
  .npy   float32 (K, 2, IPC, C, h, w): [:, 0] the k-means centroids, [:, 1] the real latent nearest to each one
  .json  what was clustered and how: classes, IPC, cache key, VAE, the item behind each nearest latent, the
         .npy's sha256 (written last: a .json whose sha256 matches vouches for a complete .npy)
Both are functions of the cache content only (no timestamps; k-means on one thread), so two builds give identical
bytes, whatever the machine's core count (ImageWoof: ~4 s per class at IPC 100 on one CPU core).
Only the cache's NON-mirrored entries are clustered: the cache stores every image and its mirror, and MGD³
clusters the images as they are (ADM centre crop, no flip).
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
MODES_VERSION = 1
KINDS = ("centroid", "nearest")  # what image i is guided towards: centroid i, or the real latent nearest to it
KMEANS = {"random_state": 0, "n_init": "auto"}  # MGD³'s scikit-learn settings


def kmeans_modes(latents, k):
    """(centroids (k, D) float64, index of the latent nearest to each centroid (k,)) of latents (n, D)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances_argmin
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):  # k-means' float sums depend on the thread count: one thread, the same file anywhere
        km = KMeans(n_clusters=k, **KMEANS).fit(latents)
        centers = km.cluster_centers_  # (k, D), in scikit-learn's cluster order: image i <- cluster i
        return centers, pairwise_distances_argmin(centers, latents)  # (k,)


def modes_key(cache_key, ipc):
    desc = {"format": MODES_FORMAT, "version": MODES_VERSION, "cache": cache_key, "ipc": int(ipc), "kmeans": KMEANS}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]


def modes_path(cache_dir, key):
    """The .npy path of modes `key` (its .json sits beside it)."""
    return os.path.join(cache_dir, "modes", f"{key}.npy")


def _meta_path(path):
    return os.path.splitext(path)[0] + ".json"


def build_modes(cache, dataset, ipc, path):
    """Cluster every class of `dataset` (the dataset `cache` was built from) into `ipc` modes; write `path`."""
    from sklearn import __version__ as sklearn_version
    labels = cache.labels.numpy()
    shape = tuple(cache.latent_shape)
    arrays, nearest = [], []
    for j, wnid in enumerate(dataset.subset.wnids):
        idx = np.flatnonzero(labels == j)  # the class's items, in the cache's (sorted path) order
        if len(idx) < ipc:
            raise UserError(f"class {wnid} has {len(idx)} train image(s) in {dataset.root}, fewer than the {ipc} "
                            f"modes asked; lower --ipc or add images")
        mean, _ = cache.stats(idx, np.zeros(len(idx), dtype=np.int64))  # (n, C, h, w) unmirrored, unscaled
        z = mean.double().cpu().numpy().reshape(len(idx), -1) * cache.scale  # (n, D): the scaled posterior means
        centers, near = kmeans_modes(z, ipc)
        arrays.append(np.stack([centers, z[near]]).reshape(2, ipc, *shape))
        nearest.append([dataset.items[idx[n]][0] for n in near])
    buf = io.BytesIO()
    np.save(buf, np.stack(arrays).astype(np.float32))  # (K, 2, ipc, C, h, w)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    meta = {"format": MODES_FORMAT, "version": MODES_VERSION, "wnids": list(dataset.subset.wnids), "ipc": int(ipc),
            "kinds": list(KINDS), "latent_shape": list(shape), "scale": cache.scale, "cache_key": cache.meta["key"],
            "vae": cache.meta["vae"], "image_size": cache.meta["image_size"], "clustered": "posterior means of the "
            "unmirrored images x scale", "kmeans": dict(KMEANS, n_clusters=int(ipc)), "sklearn": sklearn_version,
            "nearest_items": dict(zip(dataset.subset.wnids, nearest)), "sha256": hashlib.sha256(data).hexdigest()}
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
    missing = [w for w in wnids if w not in meta["wnids"]]
    if missing or meta["ipc"] != ipc:
        raise UserError(f"modes file {path} holds {meta['ipc']} modes of {len(meta['wnids'])} classes, not {ipc} of "
                        f"{', '.join(missing[:3]) or 'these classes'}; compute the modes for this IPC and class list")
    data = np.load(io.BytesIO(raw))  # (K', 2, ipc, C, h, w)
    rows = [meta["wnids"].index(w) for w in wnids]
    modes = torch.from_numpy(np.ascontiguousarray(data[rows, KINDS.index(kind)]))
    return modes, {"modes": kind, "ipc": ipc, "sha256": meta["sha256"], "vae": meta["vae"]}


def ensure_modes(dataset, ipc, cache_dir, vae_source, *, is_main=True, device="cpu", progress=True):
    """The modes file of (dataset, VAE, IPC): built on the main rank if missing (the latent cache too, with the
    encoder `vae_source`; a complete cache is reused), then every rank waits for it. Returns its path."""
    from data.latent_cache import build_latent_cache, cache_key
    from utils.dist import barrier
    # the cache key needs only the encoder's identity, which load_vae sets to its source
    key = cache_key(dataset, SimpleNamespace(identity=vae_source))
    path = modes_path(cache_dir, modes_key(key, ipc))
    if is_main and not modes_complete(path):
        from models.vae import load_vae
        vae = load_vae(vae_source, device=device)
        cache = build_latent_cache(dataset, vae, cache_dir, device=device, progress=progress)
        build_modes(cache, dataset, ipc, path)
    barrier()
    return path
