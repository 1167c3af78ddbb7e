"""Atomic writes, hashing and provenance (config, git SHA, versions) for every output."""
import errno
import hashlib
import io
from importlib import metadata
import json
import os
import platform
import re
import subprocess
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# a temporary file of an atomic write: .tmp-<name>.<writer pid>.<random>; a killed writer leaves it behind
TMP_PREFIX = ".tmp-"
_TMP = re.compile(r"^\.tmp-.+?\.(?:(\d+)\.)?[a-z0-9_]{8}$")
LEGACY_TMP_AGE_S = 600  # names without a pid (written before the pid was recorded): stale after this long


def _atomic(path, write_fn, mode):
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f"{TMP_PREFIX}{os.path.basename(path)}.{os.getpid()}.")
    except OSError as e:
        e.filename = e.filename or path
        raise
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and not e.filename:
            e.filename = path  # a full disk names the file being written
        raise


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_tmp(folder):
    """Remove the temporary files of atomic writes that a killed run left in `folder` (only this project's
    .tmp-<name>.<pid>.<random> pattern, and only when that writer process is gone). Returns the names removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _TMP.match(name)
        path = os.path.join(folder, name)
        if not m or not os.path.isfile(path) or os.path.islink(path):
            continue
        pid = m.group(1)
        try:
            stale = (not _alive(int(pid))) if pid else now - os.path.getmtime(path) > LEGACY_TMP_AGE_S
            if stale and (not pid or int(pid) != os.getpid()):
                os.remove(path)
                removed.append(name)
        except OSError:
            continue
    return removed


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
    """Append one JSON line with a single write() on an O_APPEND descriptor, fsynced: processes appending to one
    file at once (parallel evaluations) never interleave their lines; readers skip a torn last line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, f"short write to {path} (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


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
