"""Train images of a subset's classes, read from an ImageNet-style folder (root/<wnid>/<image>)."""
import os

import torch
from PIL import Image

from data.subsets import check_class_folders, list_images
from data.transforms import image_transform
from utils.errors import UserError


def load_rgb(path):
    """Decode an image file to RGB; grayscale, palette, CMYK and RGBA (alpha dropped) are converted."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() forces the full decode, so truncated files fail here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path} ({type(e).__name__}: {e}); "
                        f"delete or replace that file") from None


class SubsetImageFolder(torch.utils.data.Dataset):
    """(image in [-1, 1] (3, S, S), subset-local label) for every image of the subset's class folders.

    `root` may be the full ImageNet train folder or one holding only the subset's folders: classes are
    found by wnid folder name, never by position in the listing. Label j is `subset.wnids[j]`.
    """

    def __init__(self, root, subset, image_size, flip=True):
        check_class_folders(root, subset)  # fail before any listing or decoding work
        self.root, self.subset, self.image_size, self.flip = root, subset, int(image_size), flip
        items = []
        for label, wnid in enumerate(subset.wnids):
            items += [(f"{wnid}/{name}", label) for name in list_images(os.path.join(root, wnid))]
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
