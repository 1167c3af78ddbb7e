"""Evaluation data: class-aligned file lists, IPC selection, validation, fingerprints and one-time decoding."""
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from data.folder import load_rgb
from data.subsets import list_class_dirs, list_images
from utils.errors import UserError


#### File lists ##############################################################################################

def numeric_order(names):
    """File names in numeric order of their stems when every stem is an integer (0, 1, 2, ..., 10), else by name."""
    stems = [os.path.splitext(n)[0] for n in names]
    if names and all(s.isdigit() for s in stems):
        return [n for _, n in sorted(zip((int(s) for s in stems), names))]
    return sorted(names)


def class_files(root, wnids, role):
    """{wnid: [paths in numeric order]} for the given classes; one error naming missing or empty folders."""
    if not os.path.isdir(root):
        raise UserError(f"{role} dir not found: {root}; pass a folder with one sub-folder per class")
    missing = [w for w in wnids if not os.path.isdir(os.path.join(root, w))]
    if missing:
        have = set(list_class_dirs(root))
        extra = sorted(have - set(wnids))
        hint = f" (it has other folders: {', '.join(extra[:5])})" if extra else ""
        raise UserError(f"{len(missing)} class folder(s) missing in {role} dir {root}: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}{hint}; train and {role} classes must match by name")
    files = {w: [os.path.join(root, w, n) for n in numeric_order(list_images(os.path.join(root, w)))]
             for w in wnids}
    empty = [w for w in wnids if not files[w]]
    if empty:
        raise UserError(f"empty class folder(s) in {role} dir {root}: {', '.join(empty[:5])}; "
                        f"every class needs at least one image")
    return files


def check_same_classes(train_root, val_root, wnids):
    """Custom subsets: the train dir's classes must exist in the val dir (matched by folder name, never order)."""
    val = set(list_class_dirs(val_root))
    absent = [w for w in wnids if w not in val]
    if absent:
        raise UserError(f"train classes not in val dir {val_root}: {', '.join(absent[:5])}"
                        f"{' ...' if len(absent) > 5 else ''}; val folders must be named like the train folders")


def guided_ipc(root):
    """The IPC a mode-guided sample folder was made for (its manifest's guidance record), else None."""
    path = os.path.join(root, "manifest.json")
    if not os.path.isfile(path):
        return None
    import json
    with open(path) as f:
        guidance = (json.load(f).get("pixels") or {}).get("guidance")
    return guidance.get("ipc") if guidance else None


def take_first(files, ipc, root):
    """Images 0..ipc-1 of each class (numeric order); error if a class has fewer, or if the folder is mode-guided
    for another IPC (its modes are the k-means of that IPC: its first k images are not an IPC-k set)."""
    if ipc is None:
        return files
    made = guided_ipc(root)
    if made is not None and made != ipc:
        raise UserError(f"{root} was sampled with mode guidance for IPC {made}: its first {ipc} images are not an "
                        f"IPC-{ipc} set (the modes depend on the IPC); sample IPC {ipc} into its own folder")
    short = {w: len(f) for w, f in files.items() if len(f) < ipc}
    if short:
        w, n = next(iter(short.items()))
        raise UserError(f"ipc {ipc} is larger than the images available in {root}: {len(short)} class(es) have "
                        f"fewer (e.g. {w}: {n}); lower --ipc to <= {min(short.values())}")
    return {w: f[:ipc] for w, f in files.items()}


def flatten(files, wnids):
    """(paths, labels) with label j = position of the class in `wnids` (the subset order)."""
    paths, labels = [], []
    for j, w in enumerate(wnids):
        paths += files[w]
        labels += [j] * len(files[w])
    return paths, labels


def fingerprint(paths):
    """sha256 over (class/file name, size) of every file: identifies a dataset without reading pixels."""
    h = hashlib.sha256()
    for p in paths:
        rel = os.path.join(os.path.basename(os.path.dirname(p)), os.path.basename(p))
        h.update(f"{rel}\t{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]


#### Decoding ################################################################################################

def resize_center_crop(img, size):
    """Resize the short side to `size` (bilinear, antialiased) then centre-crop size x size: the load transform."""
    w, h = img.size
    if min(w, h) != size:
        # torchvision's Resize rounds the long side down (int()), keep the same rule
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        img = img.resize((nw, nh), Image.BILINEAR)
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def decode_one(path, size):
    img = resize_center_crop(load_rgb(path), size)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, S, S) uint8


def decode_all(paths, size, workers=2):
    """All images as one uint8 tensor (N, 3, size, size) after Resize+CenterCrop (decoded once, in threads)."""
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)

    def work(i):
        out[i] = decode_one(paths[i], size)

    with ThreadPoolExecutor(max(1, workers)) as ex:
        list(ex.map(work, range(len(paths))))
    return out


def check_readable(paths, workers=2):
    """Open and fully decode every file once (PIL path: catch corrupt images before training starts)."""
    def work(p):
        load_rgb(p)

    with ThreadPoolExecutor(max(1, workers)) as ex:
        list(ex.map(work, paths))
