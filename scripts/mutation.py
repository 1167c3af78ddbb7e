"""Mutation check: do the tests catch the deliberate bugs of scripts/mutations.yaml?

Each bug is a text substitution (its `find` must occur exactly once in its file) applied to a temporary copy of
the repository (the files git tracks or would track); only that bug's `tests` run there. A bug is caught when
they fail. The unmutated copy runs every listed test selection first, so a failure is the bug's, not the suite's.
Run on demand (minutes), not part of the default suite:
    python scripts/mutation.py                  # every bug; exit 0 only if all are caught, 1 if not
    python scripts/mutation.py --only RDED      # the bugs whose name contains RDED
    python scripts/mutation.py --list           # check that every substitution applies, run nothing
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utils.errors import UserError, run_cli  # noqa: E402

LIST = os.path.join(ROOT, "scripts", "mutations.yaml")
KEYS = {"name", "file", "find", "replace", "tests"}


def load(path=LIST, root=ROOT):
    """The bug list, each checked: its keys, its file, its pattern found exactly once in `root`."""
    with open(path) as f:
        bugs = yaml.safe_load(f)
    names = [b.get("name") for b in bugs]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: two bugs share a name; give each its own")
    for b in bugs:
        missing = KEYS - set(b)
        if missing:
            raise UserError(f"{path}: '{b.get('name', '?')}' lacks {', '.join(sorted(missing))}")
        src = os.path.join(root, b["file"])
        if not os.path.isfile(src):
            raise UserError(f"{path}: '{b['name']}': no file {b['file']}")
        n = open(src).read().count(b["find"])
        if n != 1:
            raise UserError(f"{path}: '{b['name']}': its find text occurs {n} times in {b['file']} (must be "
                            f"exactly once); the code changed: update find/replace to re-state the same bug")
        if b["find"] == b["replace"]:
            raise UserError(f"{path}: '{b['name']}': replace equals find")
    return bugs


def copy_repo(dest):
    """The files git tracks or would track (untracked, not ignored) into `dest`."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = os.path.join(ROOT, name)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name))


def baseline_selections(bugs):
    """The bugs' test selections merged per file (one `-k "a or b"` each; the whole file when a bug asks for it),
    so the unmutated check costs one pytest start per file; other argument lists run as given."""
    merged, other = {}, []
    for b in bugs:
        t = list(b["tests"])
        if len(t) == 1:
            merged[t[0]] = None  # the whole file
        elif len(t) == 3 and t[1] == "-k":
            if merged.get(t[0], []) is not None:
                merged.setdefault(t[0], []).append(t[2])
        elif t not in other:
            other.append(t)
    return [[f] if ks is None else [f, "-k", " or ".join(dict.fromkeys(ks))] for f, ks in merged.items()] + other


def pytest(copy, args, timeout):
    """(return code, seconds, last output line) of pytest on `args` in the copy; no bytecode written, so a file
    restored within the same second as its mutation is never read from a stale cache."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.time() - t0, f"timed out after {timeout} s"
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
    return res.returncode, time.time() - t0, lines[-1] if lines else res.stderr.strip()[-200:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="run only the bugs whose name contains this text")
    ap.add_argument("--list", action="store_true", help="check the list (every pattern found once) and stop")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per pytest call")
    args = ap.parse_args(argv)
    bugs = [b for b in load() if args.only.lower() in b["name"].lower()]
    if args.list:
        for i, b in enumerate(bugs, 1):
            print(f"{i:2d}. {b['name']}  ({b['file']}; {' '.join(b['tests'])})")
        print(f"{len(bugs)} bugs, every pattern found exactly once")
        return
    if not bugs:
        raise UserError(f"no bug name contains {args.only!r}; see --list")
    with tempfile.TemporaryDirectory(prefix="mutation-") as copy:
        copy_repo(copy)
        for sel in baseline_selections(bugs):  # the unmutated copy must pass every selection
            rc, secs, last = pytest(copy, sel, args.timeout)
            if rc != 0:
                raise UserError(f"unmutated, '{' '.join(sel)}' does not pass ({last}); fix the suite first")
            print(f"unmutated   {secs:5.1f}s  {' '.join(sel)}  [{last}]", flush=True)
        rows, t_all = [], time.time()
        for i, b in enumerate(bugs, 1):
            path = os.path.join(copy, b["file"])
            original = open(path).read()
            with open(path, "w") as f:
                f.write(original.replace(b["find"], b["replace"], 1))
            try:
                rc, secs, last = pytest(copy, list(b["tests"]), args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            # 1: tests failed (caught); 0: all passed (missed); 2-5: interrupted / usage / nothing collected
            verdict = {0: "NOT CAUGHT", 1: "caught"}.get(rc, "caught (timeout)" if rc is None else f"ERROR rc={rc}")
            rows.append((b["name"], b["file"], " ".join(b["tests"]), verdict, secs))
            print(f"{i:2d}/{len(bugs)} {verdict:<11} {secs:5.1f}s  {b['name']}  [{last}]", flush=True)
    print(f"\n| # | deliberate bug | file | tests run | result | s |\n|---|---|---|---|---|---|")
    for i, (name, file, tests, verdict, secs) in enumerate(rows, 1):
        print(f"| {i} | {name} | {file} | `{tests}` | {verdict} | {secs:.0f} |")
    caught = sum(v.startswith("caught") for *_, v, _ in rows)
    print(f"\n{caught}/{len(rows)} caught in {time.time() - t_all:.0f} s")
    if caught < len(rows):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
