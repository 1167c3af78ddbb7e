"""Atomic writes, hashing and provenance (config, git SHA, versions) for every output."""
import hashlib
import io
from importlib import metadata
import json
import os
import platform
import subprocess
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _atomic(path, write_fn, mode):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    _atomic(path, lambda f: f.write(data), "wb")


def atomic_write_text(path, text):
    _atomic(path, lambda f: f.write(text), "w")


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj, path):
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_image(img, path, **kw):
    """Save a PIL image atomically (format from the extension)."""
    buf = io.BytesIO()
    fmt = os.path.splitext(path)[1].lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    img.save(buf, format=fmt, **kw)
    atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path, record):
    """Append one JSON line; a single write() of a whole line, flushed and fsynced."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_sha():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5)
        sha = out.stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_info():
    """Provenance recorded beside every output: code version, library versions, machine."""
    import torch
    info = {"git_sha": git_sha(), "python": platform.python_version(), "torch": str(torch.__version__),
            "host": platform.node(), "platform": platform.platform(), "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for dist in ("numpy", "torchvision", "diffusers", "timm"):  # from metadata: importing them costs seconds
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    return info
