"""One config system for every script: YAML files set defaults, `--key value` overrides any key.

A script declares its keys as `{key: Key(default, help, ...)}` (type, range, choices, path role: the schema).
The legacy `(default, help)` tuple is still read while the tools migrate. The resolved config is a flat dict;
unknown keys (in YAML or on the command line) are errors that suggest the closest known key.
"""
import argparse
import difflib
import os
import sys
from dataclasses import dataclass

import yaml

from utils.errors import UserError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def suggest(key, known):
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"


def coerce(key, value, default):
    """Convert a command-line string (or YAML value) to the type of the key's default."""
    if not isinstance(value, str) or isinstance(default, str):
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low in TRUE:
                return True
            if low in FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (list, tuple)):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else [
                yaml.safe_load(v) for v in value.split(",") if v.strip()]
            return list(parsed)
    except (ValueError, yaml.YAMLError):
        if isinstance(default, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}") from None
        raise UserError(f"config key '{key}' expects {type(default).__name__}, got {value!r}") from None
    # default None (or another type): let YAML pick the type; 'none'/'null' -> None
    if value.lower() in ("none", "null", "~"):
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


@dataclass(frozen=True)
class Key:
    """One config key, declared once: its default, help text, and what values are allowed.

    type: "int" | "float" | "bool" | "str" | "list" | "any" (None: from the default's type).
    choices: allowed values (strings compared as given). lo / hi: inclusive bounds; gt / lt: exclusive bounds.
    null: None is allowed (the default may be None). finite: floats must be finite (True unless said otherwise).
    path: "file" | "dir" | "exists" (must exist), "out_dir" / "out_file" (created; its parent must be creatable).
    """
    default: object
    help: str
    type: str = None
    choices: tuple = None
    lo: float = None
    hi: float = None
    gt: float = None
    lt: float = None
    null: bool = False
    finite: bool = True
    path: str = None


def as_key(entry):
    """A Key from a declaration: a Key, or a legacy (default, help) tuple."""
    return entry if isinstance(entry, Key) else Key(entry[0], entry[1])


SECTIONS = ("train", "sample", "evaluate", "reproduce")  # one subset YAML drives the three scripts and the pipeline


def read_yaml(path, known, section=None):
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}; pass an existing YAML file to --config")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of key: value")
    # top-level keys apply to every script; a `train:` / `sample:` / `evaluate:` block only to that script
    merged = {k: v for k, v in data.items() if k not in SECTIONS}
    for name in SECTIONS:
        block = data.get(name) or {}
        if not isinstance(block, dict):
            raise UserError(f"section '{name}' in {path} must be a mapping of key: value")
        if name == section:
            merged.update(block)
    data = merged
    for k in data:
        if k not in known:
            raise UserError(f"unknown config key '{k}' in {path}{suggest(k, known)}")
    return data


def parse_config(spec, argv=None, description="", prog=None, section=None):
    """Resolve a flat config: spec defaults <- each `--config FILE` in order <- `--key value` overrides.

    `spec` maps key -> (default, help). In a YAML file, top-level keys apply to every script and the block named
    `section` ("train", "sample" or "evaluate") to this one. Returns a dict with exactly the keys of `spec`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    spec = {k: as_key(v) for k, v in spec.items()}
    lines = [description, "", "config keys (set in a YAML file via --config, or as --key value):"]
    for k, e in spec.items():
        lines.append(f"  --{k} {e.default!r:<14} {e.help}")
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {prog or os.path.basename(sys.argv[0])} [--config FILE ...] [--key value ...]")
        print("\n".join(lines))
        sys.exit(0)

    cfg = {k: e.default for k, e in spec.items()}
    files, overrides, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise UserError(f"unexpected argument '{tok}'; options are written --key value")
        key, eq, val = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
                val, i = argv[i + 1], i + 1
            elif key in spec and isinstance(spec[key].default, bool):
                val = "true"  # a bare boolean flag
            else:
                raise UserError(f"option --{key} needs a value")
        if key == "config":
            files.append(val)
        elif key not in spec:
            raise UserError(f"unknown config key '{key}'{suggest(key, spec)}")
        else:
            overrides.append((key, val))
        i += 1
    for path in files:
        for k, v in read_yaml(path, spec, section).items():
            cfg[k] = coerce(k, v, spec[k].default)
    for k, v in overrides:
        cfg[k] = coerce(k, v, spec[k].default)
    return cfg


def save_config(cfg, path):
    """Write the resolved config as YAML (atomically)."""
    from utils.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))
