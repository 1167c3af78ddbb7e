"""Train images of a subset's classes, read from an ImageNet-style folder (root/<wnid>/<image>)."""
import hashlib
import json
import os

import torch
from PIL import Image

from data.subsets import IMG_EXTENSIONS, check_class_folders, list_images
from data.transforms import image_transform
from utils.errors import UserError
from utils.io import atomic_write_text

SCAN_FORMAT = "minimax-scan"


def load_rgb(path):
    """Decode an image file to RGB; grayscale, palette, CMYK and RGBA (alpha dropped) are converted."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() forces the full decode, so truncated files fail here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path} ({type(e).__name__}: {e}); "
                        f"delete or replace that file") from None


#### Train-dir scan, remembered ###############################################################################

def _list_with_stats(folder):
    """[[name, size, mtime_ns]] of a class folder's images, sorted by name (one scandir, stat from the entry)."""
    out = []
    for e in os.scandir(folder):
        if e.is_file() and e.name.endswith(IMG_EXTENSIONS):
            st = e.stat()
            out.append([e.name, st.st_size, st.st_mtime_ns])
    return sorted(out)


def scan_classes(root, wnids, scan_dir=None):
    """{wnid: [[name, size, mtime_ns], ...]} for root/<wnid>/.

    With `scan_dir` the listing is kept in <scan_dir>/<hash of root + classes>.json and a class folder is listed
    again only when its own mtime changed (a file added, removed or renamed): ImageNet-1K's 1.28M files cost
    1,000 stat calls on a rerun instead of 1.28M. An image rewritten in place (same name) does not change the
    folder's mtime and is not seen: delete the scan file after editing images.
    """
    if scan_dir is None:
        return {w: _list_with_stats(os.path.join(root, w)) for w in wnids}
    root = os.path.abspath(root)
    key = hashlib.sha256(json.dumps([SCAN_FORMAT, root, list(wnids)]).encode()).hexdigest()[:20]
    path = os.path.join(scan_dir, f"{key}.json")
    old = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)["classes"]
        except (OSError, ValueError, KeyError):
            old = {}  # unreadable: rescan everything, it is rewritten below
    classes, changed = {}, False
    for w in wnids:
        mtime = os.stat(os.path.join(root, w)).st_mtime_ns
        prev = old.get(w)
        if prev and prev["mtime_ns"] == mtime:
            classes[w] = prev
        else:
            classes[w] = {"mtime_ns": mtime, "files": _list_with_stats(os.path.join(root, w))}
            changed = True
    if changed or set(old) != set(classes):
        # compact JSON: ImageNet-1K's listing is ~60 MB this way
        atomic_write_text(path, json.dumps({"format": SCAN_FORMAT, "root": root, "classes": classes},
                                           separators=(",", ":")))
    return {w: classes[w]["files"] for w in wnids}


class SubsetImageFolder(torch.utils.data.Dataset):
    """(image in [-1, 1] (3, S, S), subset-local label) for every image of the subset's class folders.

    `root` may be the full ImageNet train folder or one holding only the subset's folders: classes are
    found by wnid folder name, never by position in the listing. Label j is `subset.wnids[j]`.
    """

    def __init__(self, root, subset, image_size, flip=True, scan_dir=None):
        self.root, self.subset, self.image_size, self.flip = root, subset, int(image_size), flip
        self.file_stats = None  # {relative path: (size, mtime_ns)} when a remembered scan provides them
        if scan_dir is None:
            check_class_folders(root, subset)  # fail before any listing or decoding work
            items = []
            for label, wnid in enumerate(subset.wnids):
                items += [(f"{wnid}/{name}", label) for name in list_images(os.path.join(root, wnid))]
        else:
            check_class_folders(root, subset, min_images=0)
            listing = scan_classes(root, subset.wnids, scan_dir)
            empty = [w for w in subset.wnids if not listing[w]]
            if empty:
                raise UserError(f"class folder(s) with no image in {root}: {', '.join(empty[:5])}")
            items = [(f"{w}/{name}", label) for label, w in enumerate(subset.wnids) for name, _, _ in listing[w]]
            self.file_stats = {f"{w}/{name}": (size, mt) for w in subset.wnids for name, size, mt in listing[w]}
        self.items = sorted(items)  # (relative path, label), a deterministic order independent of the OS
        self.labels = [y for _, y in self.items]

    def __len__(self):
        return len(self.items)

    def path(self, i):
        return os.path.join(self.root, self.items[i][0])

    def load(self, i, flip=False):
        """Image i after the ADM centre crop, mirrored if asked: (3, S, S) in [-1, 1]."""
        return image_transform(load_rgb(self.path(i)), self.image_size, flip)

    def __getitem__(self, i):
        # random flip from torch's global RNG, which DataLoader seeds per worker
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return self.load(i, flip), self.items[i][1]
