"""Subsets as data: class-list files in data/classes/, ImageNet labels from the canonical wnid list."""
import os
from dataclasses import dataclass, field

from utils.errors import UserError

CLASS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classes")

# name -> (class-list file, number of leading lines to take or None for all, classes per fine-tuning phase)
SUBSETS = {
    "imagewoof": ("imagewoof.txt", None, None),
    "imagenette": ("imagenette.txt", None, None),
    "imageidc": ("imagenet100.txt", 10, None),
    "imagenet100": ("imagenet100.txt", None, 20),  # the authors fine-tune 5 phases of 20 classes
    "imagenet1k": ("imagenet1k_wnids.txt", None, None),
}
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")


def read_list(path):
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


_WNIDS = None


def imagenet_wnids():
    """The 1000 ImageNet wnids in sorted order: position = the label DiT was trained with."""
    global _WNIDS
    if _WNIDS is None:
        _WNIDS = read_list(os.path.join(CLASS_DIR, "imagenet1k_wnids.txt"))
    return _WNIDS


def imagenet_names():
    names = read_list(os.path.join(CLASS_DIR, "imagenet1k_names.txt"))
    return dict(zip(imagenet_wnids(), names))


@dataclass
class Subset:
    """An ordered class list. Label j (subset-local) is class wnids[j]; DiT sees imagenet_idx[j]."""
    name: str
    wnids: list
    imagenet_idx: list = field(default_factory=list)  # None for a class that is not an ImageNet class

    def __post_init__(self):
        if not self.imagenet_idx:
            pos = {w: i for i, w in enumerate(imagenet_wnids())}
            self.imagenet_idx = [pos.get(w) for w in self.wnids]

    @property
    def num_classes(self):
        return len(self.wnids)

    @property
    def custom_classes(self):
        """Subset-local labels of classes DiT does not know (they get their own class-table rows)."""
        return [j for j, i in enumerate(self.imagenet_idx) if i is None]

    def describe(self):
        return {"name": self.name, "wnids": list(self.wnids), "imagenet_idx": list(self.imagenet_idx)}


def subset_names():
    return sorted(SUBSETS)


def phase_size_of(name, phase_size=None):
    """Classes per fine-tuning phase: `phase_size` if given, else the subset's registered one (None = no phases)."""
    if name not in SUBSETS:
        return phase_size
    return phase_size if phase_size else SUBSETS[name][2]


def num_phases(num_classes, phase_size):
    """Phases of `phase_size` classes covering `num_classes` (the last one may be smaller)."""
    return -(-int(num_classes) // int(phase_size))


def phase_slice(wnids, phase, phase_size):
    """Classes of phase `phase`: the consecutive block [phase * k, (phase + 1) * k) of the class list, so the phases
    partition the classes exactly (disjoint, union = all, the last block holds the remainder)."""
    n = num_phases(len(wnids), phase_size)
    if not 0 <= phase < n:
        raise UserError(f"phase {phase} out of range for {len(wnids)} classes in phases of {phase_size}; "
                        f"use 0..{n - 1}")
    return wnids[phase * phase_size:(phase + 1) * phase_size]


def get_subset(name, phase=None, phase_size=None):
    """A registered subset; `phase` selects one block of classes (ImageNet-100: phases 0-4 of 20; any subset with
    `phase_size` k: phases 0..ceil(K/k)-1 of k consecutive classes)."""
    if name not in SUBSETS:
        raise UserError(f"unknown subset '{name}'; choose one of {', '.join(subset_names())} "
                        f"or 'custom' with a train dir")
    fname, head, per_phase = SUBSETS[name]
    wnids = read_list(os.path.join(CLASS_DIR, fname))
    if head is not None:
        wnids = wnids[:head]
    if phase_size is not None and int(phase_size) < 1:
        raise UserError(f"phase_size must be >= 1 (got {phase_size}); null = the subset's own phases")
    per_phase = int(phase_size) if phase_size else per_phase
    if phase is not None and phase != "all":
        if per_phase is None:
            raise UserError(f"subset '{name}' has no phases; drop the phase option or set phase_size")
        wnids = phase_slice(wnids, int(phase), per_phase)
        name = f"{name}-p{int(phase)}"
    return Subset(name, wnids)


def list_class_dirs(root):
    if not os.path.isdir(root):
        raise UserError(f"data dir not found: {root}; pass the folder that holds one sub-folder per class")
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))


def custom_subset(train_dir, class_file=None, name="custom"):
    """Any ImageFolder: classes from `class_file` (one folder name per line, in label order) or the sorted
    sub-folders. Folder names that are ImageNet wnids keep their ImageNet label."""
    if class_file:
        if not os.path.isfile(class_file):
            raise UserError(f"class-list file not found: {class_file}")
        wnids = read_list(class_file)
    else:
        wnids = list_class_dirs(train_dir)
    if not wnids:
        raise UserError(f"no class folders in {train_dir}; expected <train_dir>/<class>/<image>")
    return Subset(name, wnids)


def resolve_subset(name, train_dir=None, class_file=None, phase=None, phase_size=None):
    """A registered subset by name, or 'custom' (classes from the train dir or a class-list file)."""
    if name == "custom":
        if not train_dir and not class_file:
            raise UserError("subset 'custom' needs a train dir (or a class_file)")
        sub = custom_subset(train_dir, class_file)
        if phase is not None and phase != "all":
            if not phase_size:
                raise UserError("a phase of subset 'custom' needs phase_size (classes per phase)")
            sub = Subset(f"custom-p{int(phase)}", phase_slice(sub.wnids, int(phase), int(phase_size)))
        return sub
    return get_subset(name, phase, phase_size)


def list_images(folder):
    """Image files of one class folder, sorted by name."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.endswith(IMG_EXTENSIONS))


def check_class_folders(root, subset, min_images=1):
    """Verify that root/<wnid>/ exists with images for every class; one error naming what is missing."""
    if not os.path.isdir(root):
        raise UserError(f"data dir not found: {root}; pass the folder that holds one sub-folder per class")
    missing = [w for w in subset.wnids if not os.path.isdir(os.path.join(root, w))]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise UserError(f"{len(missing)} class folder(s) of subset '{subset.name}' missing in {root}: "
                        f"{', '.join(missing[:5])}{more}; point the data dir at ImageNet's train (or val) folder")
    if min_images <= 0:  # the caller counts the images itself (a remembered scan)
        return
    empty = [w for w in subset.wnids if len(list_images(os.path.join(root, w))) < min_images]
    if empty:
        raise UserError(f"class folder(s) with fewer than {min_images} image(s) in {root}: {', '.join(empty[:5])}")
