"""The state of a sample folder: manifest.json (what made the images), the resume rule (a folder is continued only
with the settings that made its pixels) and the cleaning of killed writes."""
import hashlib
import json
import os
import re

from utils.errors import UserError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "minimax-samples"
_IMAGE = re.compile(r"^\d+\.png$")


def weights_fingerprint(model):
    """sha256 of every tensor of the state dict (names, shapes, bytes): identifies weights given without a file."""
    h = hashlib.sha256()
    for name, v in model.state_dict().items():
        v = v.detach().float().cpu().contiguous()
        h.update(f"{name}{tuple(v.shape)}".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def image_path(out, wnid, index):
    return os.path.join(out, wnid, f"{index}.png")


def grid_path(out):
    """The preview grid beside the folder: <out>_grid.png."""
    return os.path.normpath(os.path.abspath(out)) + "_grid.png"


def check_out_dir(out):
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"output path {out} is a file; pass a folder (it is created if missing)")


def read_manifest(out):
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path} is unreadable; pass --overwrite to regenerate the folder or choose another out")


def _differences(old, new, prefix=""):
    """Keys whose values differ between two (nested) dicts, as 'key (old -> new)'."""
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            show = lambda v: (repr(v)[:40] + "...") if len(repr(v)) > 43 else repr(v)  # noqa: E731
            diffs.append(f"{prefix}{k} ({show(a)} -> {show(b)})")
    return diffs


def check_resume(out, pixels, classes, overwrite):
    """-> (previous manifest or None, replace). Refuses (unless overwrite) a folder whose images were made with
    other pixel-affecting settings; replace = its sample images must go (overwrite)."""
    old = read_manifest(out)
    if old is None:
        stray = [d for d in os.listdir(out) if not d.startswith(".")] if os.path.isdir(out) else []
        if stray and not overwrite:
            raise UserError(f"{out} is not empty and has no {MANIFEST} (not made by sample.py); choose another out "
                            f"or pass --overwrite to replace its sample images")
        return None, overwrite
    if overwrite:
        return old, True
    diffs = [] if old.get("format") == MANIFEST_FORMAT else [f"format ({old.get('format')!r})"]
    diffs += _differences(old.get("pixels", {}), pixels)
    prev = old.get("classes", {})
    diffs += [f"label of {w} ({prev[w]} -> {lab})" for w, lab in classes.items() if w in prev and prev[w] != lab]
    if diffs:
        raise UserError(f"{out} holds images made with other settings: {'; '.join(diffs[:4])}; choose another out "
                        f"or pass --overwrite to replace them")
    return old, False


def clean(out, wnids, remove_images):
    """Remove leftovers of killed writes (.tmp-* files), and with remove_images the sample PNGs and the grid."""
    gdir, gname = os.path.split(grid_path(out))
    for folder in [out] + [os.path.join(out, w) for w in wnids]:
        for name in (os.listdir(folder) if os.path.isdir(folder) else []):
            if name.startswith(".tmp-") or (remove_images and folder != out and _IMAGE.match(name)):
                os.remove(os.path.join(folder, name))
    for name in (os.listdir(gdir) if os.path.isdir(gdir) else []):
        if name.startswith(f".tmp-{gname}.") or (remove_images and name == gname):
            os.remove(os.path.join(gdir, name))
