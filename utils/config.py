"""One config system for every script: YAML files set defaults, `--key value` overrides any key.

A script declares its keys once, as `{key: Key(default, help, type=..., lo=..., choices=..., path=...)}`: the schema.
Parsing, coercion, `--help` (type, range, default) and every single-key check are generated from it by this module
(`parse_config` -> `validate`), before any heavy import, so a bad value is one line and nothing is written. The
legacy `(default, help)` tuple is still read (type from the default). The resolved config is a flat dict; unknown
keys (in YAML or on the command line) are errors that suggest the closest known key.
"""
import argparse
import difflib
import math
import os
import sys
import textwrap
from dataclasses import dataclass

import yaml

from utils.errors import UserError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
NULL = {"none", "null", "~"}
TYPES = ("int", "float", "bool", "str", "list", "any")
PATH_ROLES = ("file", "dir", "exists", "out_dir", "out_file", "out")


@dataclass(frozen=True)
class Key:
    """One config key, declared once: its default, help text, and what values are allowed.

    type: "int" | "float" | "bool" | "str" | "list" | "any", or alternatives such as "int|str" (None: from the
    default's type). choices: allowed values (strings compared as given). lo / hi: inclusive bounds; gt / lt:
    exclusive bounds. null: None is allowed (the default may be None). finite: floats must be finite (True unless
    said otherwise). path: "file" | "dir" | "exists" (must exist), "out_dir" / "out_file" (created; its parent must
    be creatable), "out" (a file or a folder to be created).
    Optional extras: items: element type of a "list" (choices and bounds then apply to each element); literals:
    strings taken verbatim whatever the type (e.g. "all", "none"); required: "" / None is refused; synonyms:
    other names users type for this key (suggested when they do).
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
    items: str = None
    literals: tuple = ()
    required: bool = False
    synonyms: tuple = ()


def as_key(entry):
    """A Key from a declaration: a Key, or a legacy (default, help) tuple."""
    return entry if isinstance(entry, Key) else Key(entry[0], entry[1])


def key_types(e):
    """The declared type alternatives of a Key, e.g. ("int", "str"); from the default when not declared."""
    if e.type:
        return tuple(e.type.split("|"))
    d = e.default
    for t, cls in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", (list, tuple))):
        if isinstance(d, cls):
            return (t,)
    return ("any",)


def spec_of(spec):
    return {k: as_key(v) for k, v in spec.items()}


#### Suggestions ###############################################################################################

# names users type for a key of another name; only the targets a tool declares are suggested
SYNONYMS = {
    "learning_rate": "lr", "lr_rate": "lr", "learningrate": "lr", "rate": "lr", "wd": "weight_decay",
    "decay": "weight_decay", "epoch": "epochs", "n_epochs": "epochs", "num_epochs": "epochs", "bs": "batch_size",
    "batch": "batch_size", "batchsize": "batch_size", "steps": "max_steps", "iterations": "max_steps",
    "iters": "max_steps", "sampling_steps": "num_steps", "n_steps": "num_steps", "guidance": "cfg_scale",
    "guidance_scale": "cfg_scale", "cfg": "cfg_scale", "output": "out", "output_dir": "out", "outdir": "out",
    "out_dir": "out", "results_dir": "results", "checkpoint": "ckpt", "weights": "ckpt", "resolution": "image_size",
    "img_size": "image_size", "size": "image_size", "model_name": "model", "network": "arch", "net": "arch",
    "images_per_class": "ipc", "n_ipc": "ipc", "gpu": "device", "cuda": "device", "fp16": "precision",
    "bfloat16": "bf16", "amp_dtype": "amp", "workers": "num_workers", "num_workers": "workers",
    "train_data": "data_dir", "data": "data_dir", "dataset": "subset", "classes": "class_file",
    "lambda_rep": "lambda_r", "lambda_div": "lambda_d", "memory": "memory_size", "n_m": "memory_size",
    "ema": "ema_decay", "log_dir": "run_dir", "output_path": "results", "repeats": "repeat", "runs": "repeat",
}


def suggest(key, known):
    """'; did you mean ...?' for a mistyped key: the synonym table, the keys' own synonyms, then difflib."""
    known = dict.fromkeys(known) if not isinstance(known, dict) else known
    norm = key.lower().replace("-", "_")
    for k, e in known.items():
        if isinstance(e, (Key, tuple)) and norm in as_key(e).synonyms:
            return f"; did you mean '{k}'?"
    if SYNONYMS.get(norm) in known:
        return f"; did you mean '{SYNONYMS[norm]}'?"
    close = difflib.get_close_matches(norm, list(known), n=1, cutoff=0.6)
    if not close:  # a key typed without its underscores, or a prefix of one (lamda -> lambda_r)
        squashed = {k.replace("_", ""): k for k in known}
        close = [squashed[c] for c in difflib.get_close_matches(norm.replace("_", ""), list(squashed), n=1,
                                                                 cutoff=0.6)]
    if close:
        return f"; did you mean '{close[0]}'?"
    if len(known) <= 12:
        return f"; known: {', '.join(sorted(known))}"
    return f"; --help lists the {len(known)} keys"


#### Coercion: command-line strings and YAML values to the declared type ####################################

def _scalar(key, value, t):
    """`value` (a string from the command line, or a YAML value) as type t; ValueError if it is not one."""
    if t == "any":
        if isinstance(value, str):
            if value.lower() in NULL:
                return None
            try:
                return yaml.safe_load(value)
            except yaml.YAMLError:
                return value
        return value
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE | FALSE:
            return value.lower() in TRUE
        raise ValueError
    if t == "int":
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError
    if t == "float":
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if t == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML `name: 3`
        raise ValueError
    if t == "list":
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            if value.strip().startswith("["):
                parsed = yaml.safe_load(value)
                if not isinstance(parsed, list):
                    raise ValueError
                return parsed
            return [yaml.safe_load(v.strip()) for v in value.split(",") if v.strip()]
        return [value]  # YAML `arch: 3` style scalar: a one-element list
    raise ValueError


def _type_name(types):
    return " or ".join({"str": "string", "any": "value", "bool": "true or false"}.get(t, t) for t in types)


def coerce(key, value, entry):
    """Convert a command-line string or a YAML value to the declared type of `entry` (a Key, or a bare default)."""
    e = entry if isinstance(entry, Key) else Key(entry, "")
    types = key_types(e)
    if isinstance(value, str):
        for lit in e.literals:
            if value.lower() == str(lit).lower():
                return lit
    if value is None or (isinstance(value, str) and value.lower() in NULL and (e.null or e.default is None)):
        return None
    exact = [t for t in types if t not in ("any", "str") and _is(value, t)]  # already typed (YAML, a dict)
    if isinstance(value, str) or not exact:
        exact = types
    if isinstance(value, bool) and "str" in types and "bool" not in types:
        # YAML 1.1 reads an unquoted off / no / on / yes as a boolean; a string key with such a choice means it
        word = {False: "off", True: "on"}[value]
        if e.choices is not None and word in e.choices:
            return word
        raise UserError(f"config key '{key}' expects a string, got {str(value).lower()} (YAML reads unquoted "
                        f"off/no/on/yes as booleans: quote the value)")
    for t in exact:
        try:
            v = _scalar(key, value, t)
        except (ValueError, TypeError, yaml.YAMLError):
            continue
        if t == "list" and e.items:
            try:
                v = [_scalar(key, x, e.items) for x in v]
            except (ValueError, TypeError, yaml.YAMLError):
                raise UserError(f"config key '{key}' expects a list of {_type_name((e.items,))}, "
                                f"got {value!r}") from None
        return v
    if types == ("bool",):
        raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    lits = "".join(f" or {lit!r}" for lit in e.literals)
    raise UserError(f"config key '{key}' expects {_type_name(types)}{lits}, got {value!r}")


#### Validation: generated from the declaration ###############################################################

def _fmt(x):
    return repr(x) if isinstance(x, str) else str(x)


def _range_words(e):
    """'>= 1', '< 1', 'in [0, 1)' or '' from the bounds of a Key."""
    lo = (e.lo, "[") if e.lo is not None else (e.gt, "(") if e.gt is not None else (None, None)
    hi = (e.hi, "]") if e.hi is not None else (e.lt, ")") if e.lt is not None else (None, None)
    if lo[0] is not None and hi[0] is not None:
        return f"in {lo[1]}{lo[0]}, {hi[0]}{hi[1]}"
    if lo[0] is not None:
        return f"{'>=' if lo[1] == '[' else '>'} {lo[0]}"
    if hi[0] is not None:
        return f"{'<=' if hi[1] == ']' else '<'} {hi[0]}"
    return ""


def describe(e):
    """The allowed values of a Key in a few words: 'int >= 1', 'float in [0, 1)', 'one of a | b', 'existing folder'."""
    e = as_key(e)
    types = key_types(e)
    words = [" or ".join(types) if types != ("list",) else f"list of {e.items or 'values'}"]
    if e.path and types == ("str",):
        words = []  # the path role says it
    if e.choices is not None:
        words = [("each one of " if "list" in types else "one of ") + " | ".join(map(str, e.choices))]
    if _range_words(e):
        words.append(_range_words(e))
    if e.path:
        words.append({"file": "existing file", "dir": "existing folder", "exists": "existing path",
                      "out_dir": "output folder", "out_file": "output file", "out": "output file or folder"}[e.path])
    if e.literals:
        words.append("or " + " | ".join(map(str, e.literals)))
    if e.null:
        words.append("or null")
    if e.required:
        words.append("REQUIRED")
    return ", ".join(words)


def _check_number(k, e, x, shown):
    if isinstance(x, float) and e.finite and not math.isfinite(x):
        raise UserError(f"{k} must be a finite number, got {shown}")
    bad = ((e.lo is not None and not x >= e.lo) or (e.hi is not None and not x <= e.hi)
           or (e.gt is not None and not x > e.gt) or (e.lt is not None and not x < e.lt))
    if bad:
        raise UserError(f"{k} must be {_range_words(e)}, got {shown}")


def _is(x, t):
    if t not in TYPES:
        raise ValueError(f"a config key declares type {t!r}; use {', '.join(TYPES)} (or alternatives like int|str)")
    return {"int": lambda: isinstance(x, int) and not isinstance(x, bool),
            "float": lambda: isinstance(x, (int, float)) and not isinstance(x, bool),
            "bool": lambda: isinstance(x, bool), "str": lambda: isinstance(x, str),
            "list": lambda: isinstance(x, list), "any": lambda: True}[t]()


def check_output(path, what):
    """An output location must be creatable: every existing ancestor a folder, the first one writable, the disk
    not full. Writes nothing. `what` names it in the message (e.g. '--out')."""
    p = os.path.abspath(path)
    a = p
    while not os.path.lexists(a):
        a = os.path.dirname(a)
    if a != p and not os.path.isdir(a):
        raise UserError(f"{what} {path} lies under {a}, which is a file, not a folder; choose another path")
    d = a if os.path.isdir(a) else os.path.dirname(a)
    if not os.access(d, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable ({d} refuses writes); choose a writable location")
    try:
        st = os.statvfs(d)
        full = st.f_bavail == 0
    except (OSError, AttributeError):
        full = False
    if full:
        raise UserError(f"{what} {path} is on a full disk (no space left in {d}); free space or choose another disk")


def _check_path(k, e, v):
    what = f"--{k}"
    if e.path not in PATH_ROLES:
        raise ValueError(f"config key {k} declares path role {e.path!r}; use one of {', '.join(PATH_ROLES)}")
    if e.path == "file":
        if not os.path.isfile(v):
            raise UserError(f"{k} {v}: {'is a folder, not a file' if os.path.isdir(v) else 'file not found'}; "
                            f"pass an existing file to {what}")
    elif e.path == "dir":
        if not os.path.isdir(v):
            raise UserError(f"{k} {v}: {'is a file, not a folder' if os.path.exists(v) else 'folder not found'}; "
                            f"pass an existing folder to {what}")
    elif e.path == "exists":
        if not os.path.exists(v):
            raise UserError(f"{k} {v} not found; pass an existing path to {what}")
    elif e.path == "out_dir":
        if os.path.exists(v) and not os.path.isdir(v):
            raise UserError(f"{what} {v} is a file; pass a folder (it is created if missing)")
        check_output(v, what)
    elif e.path == "out_file":
        if os.path.isdir(v):
            raise UserError(f"{what} {v} is a folder; pass a file path")
        check_output(v, what)
    elif e.path == "out":
        check_output(v, what)


def check_value(k, e, v):
    """One key's value against its declaration; a UserError naming the key, the value and what is allowed."""
    e = as_key(e)
    shown = _fmt(v)
    if e.required and v in (None, ""):
        raise UserError(f"--{k} is required: {e.help.removeprefix('REQUIRED: ')}")
    if v is None:
        if e.null or e.default is None:
            return
        raise UserError(f"{k} must not be null; expected {describe(e)}")
    if isinstance(v, str) and v in e.literals:
        return
    types = key_types(e)
    if not any(_is(v, t) for t in types):
        raise UserError(f"{k} expects {_type_name(types)}, got {shown}")
    values = v if isinstance(v, list) and "list" in types else [v]
    for x in values:
        if e.items and isinstance(v, list) and not _is(x, e.items):
            raise UserError(f"{k} expects a list of {_type_name((e.items,))}, got {shown}")
        if e.choices is not None and x not in e.choices:
            close = difflib.get_close_matches(str(x), [str(c) for c in e.choices], n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{k} must be one of {', '.join(map(str, e.choices))}, got {_fmt(x)}{hint}")
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            _check_number(k, e, x, shown if len(values) == 1 else f"{_fmt(x)} in {shown}")
    if e.path and isinstance(v, str) and v:
        _check_path(k, e, v)


def validate(spec, cfg):
    """Check every key of `cfg` against its declaration in `spec` (types, finiteness, ranges, choices, paths).
    Returns cfg. Cheap: no heavy import, nothing written."""
    for k, e in spec.items():
        if k in cfg:
            check_value(k, as_key(e), cfg[k])
    return cfg


def _driver_cuda_devices():
    """The number of CUDA devices the driver reports (honours CUDA_VISIBLE_DEVICES); 0 without a driver."""
    import ctypes
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def check_device(device, what="--device"):
    """auto | cpu | cuda | cuda:N, and CUDA present when asked for: one line now, not a driver traceback later.
    Imports torch only for a CUDA device (after the schema checks, before any model)."""
    device = str(device)
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"{what} must be auto, cpu, cuda or cuda:N, got {device!r}")
    if kind == "cuda":
        if _driver_cuda_devices() == 0:  # no driver or no device: known in milliseconds, without torch
            raise UserError(f"{what} {device} requested but CUDA is not available on this machine (no CUDA driver "
                            f"or device); use --device cpu or auto")
        import torch  # a driver sees devices: this torch build must be able to use them too
        if not torch.cuda.is_available():
            raise UserError(f"{what} {device} requested but CUDA is not available on this machine; "
                            f"use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"{what} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def resolve(spec, overrides=None):
    """Defaults <- `overrides` (a dict, e.g. from a script), coerced and validated like the command line."""
    spec = spec_of(spec)
    cfg = {k: e.default for k, e in spec.items()}
    for k, v in (overrides or {}).items():
        if k not in spec:
            raise UserError(f"unknown config key '{k}'{suggest(k, spec)}")
        cfg[k] = coerce(k, v, spec[k])
    return validate(spec, cfg)


#### Files and the command line ###############################################################################

SECTIONS = ("train", "sample", "evaluate", "reproduce", "slurm")  # one subset YAML drives the three scripts and the
# pipeline (slurm: the cluster settings of `reproduce.py --launcher slurm`)


def load_yaml(path):
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}; pass an existing YAML file to --config")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} cannot be read ({e}); pass a YAML file") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of key: value")
    return data


def read_yaml(path, known, section=None):
    data = load_yaml(path)
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


def _show_default(v):
    """A default as it is typed on the command line (null, true, 1,2, '')."""
    if isinstance(v, list):
        return ",".join(map(str, v))
    return {None: "null", True: "true", False: "false", "": "''"}.get(v, v) if isinstance(v, (str, bool)) or v is None \
        else str(v)


def help_text(spec, description="", prog="script"):
    """--help: every key with its type, range and default, then what it does (all from the declaration)."""
    lines = [f"usage: {prog} [--config FILE ...] [--key value ...]", "", description, "",
             "config keys (set in a YAML file via --config, or as --key value):"]
    for k, e in spec_of(spec).items():
        lines.append(f"  --{k}  {describe(e)}  [default: {_show_default(e.default)}]")
        lines += textwrap.wrap(e.help, 100, initial_indent=" " * 6, subsequent_indent=" " * 6,
                               break_on_hyphens=False)
    return "\n".join(lines)


def parse_config(spec, argv=None, description="", prog=None, section=None):
    """Resolve a flat config: spec defaults <- each `--config FILE` in order <- `--key value` overrides, then
    `validate` it against the declaration.

    `spec` maps key -> Key (or a legacy (default, help) tuple). In a YAML file, top-level keys apply to every script
    and the block named `section` ("train", "sample" or "evaluate") to this one. Returns a dict with exactly the
    keys of `spec`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    spec = spec_of(spec)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(spec, description, prog or os.path.basename(sys.argv[0])))
        sys.exit(0)

    cfg = {k: e.default for k, e in spec.items()}
    files, overrides, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise UserError(f"unexpected argument '{tok}'; options are written --key value")
        key, eq, val = tok[2:].partition("=")
        key = key.replace("-", "_")
        if key != "config" and key not in spec:
            raise UserError(f"unknown config key '{key}'{suggest(key, spec)}")
        if not eq:
            if i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
                val, i = argv[i + 1], i + 1
            elif key in spec and key_types(spec[key]) == ("bool",):
                val = "true"  # a bare boolean flag
            else:
                raise UserError(f"option --{key} needs a value")
        if key == "config":
            files.append(val)
        else:
            overrides.append((key, val))
        i += 1
    for path in files:
        for k, v in read_yaml(path, spec, section).items():
            cfg[k] = coerce(k, v, spec[k])
    for k, v in overrides:
        cfg[k] = coerce(k, v, spec[k])
    return validate(spec, cfg)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the helper scripts, with this project's one-line errors (exit code 2 through run_cli)."""

    def error(self, message):
        raise UserError(f"{message}; see {self.prog} --help")


def check_block(spec, block, where):
    """Values of one YAML block (e.g. a subset file's `train:`) against a tool's declaration, without touching the
    file system: what a pipeline checks before it launches the tool hours later."""
    spec = spec_of(spec)
    for k, v in block.items():
        if k not in spec:
            raise UserError(f"unknown config key '{k}' in {where}{suggest(k, spec)}")
        e = spec[k]
        check_value(k, Key(e.default, e.help, **{f: getattr(e, f) for f in (
            "type", "choices", "lo", "hi", "gt", "lt", "null", "finite", "items", "literals")}), coerce(k, v, e))


def save_config(cfg, path):
    """Write the resolved config as YAML (atomically)."""
    from utils.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))
