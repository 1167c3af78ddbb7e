"""The config schema of every tool: each key declared once (type, range, choices, path role), every bad value refused
from that declaration with one line and exit code 2 before anything is loaded or written; defaults written once;
output locations; leftovers of killed runs; suggestions for mistyped keys."""
import errno
import hashlib
import math
import os
import subprocess
import sys
import time

import pytest
import yaml

import engines.evaluate as evaluate
import engines.sample as sample
import engines.train as train_minimax
from engines.train.schema import CONFIG as TRAIN
from scripts import demo, reproduce
from utils.config import (PATH_ROLES, SECTIONS, Key, check_block, check_output, coerce, describe, help_text, key_types,
                          parse_config, spec_of)
from utils.errors import UserError, run_cli
from utils.io import remove_stale_tmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {"train_minimax.py": (train_minimax, TRAIN), "sample.py": (sample, sample.CONFIG),
         "evaluate.py": (evaluate, evaluate.CONFIG)}
SCRIPTS = {"reproduce plan": reproduce.PLAN, "demo.py": demo.CONFIG}


class Passed(Exception):
    """Raised instead of the heavy work when a config passed validation."""


@pytest.fixture
def place(tmp_path):
    """An existing folder D, a regular file F, and the tools' output locations under tmp_path/out."""
    (tmp_path / "D" / "a").mkdir(parents=True)
    (tmp_path / "F").write_text("a regular file")
    (tmp_path / "out").mkdir()
    return tmp_path


def valid_args(tool, p):
    """Arguments that pass every check of `tool`: the sweep changes one key at a time."""
    out, d = p / "out", str(p / "D")
    return {"train_minimax.py": ["--data_dir", d, "--run_dir", str(out / "run"), "--cache_dir", str(out / "cache"),
                                 "--device", "cpu"],
            "sample.py": ["--ckpt", "none", "--out", str(out / "samples"), "--device", "cpu"],
            "evaluate.py": ["--train", d, "--val", d, "--results", str(out / "eval"), "--device", "cpu"]}[tool]


def bad_values(key, e, p):
    """(value as typed on the command line, what is wrong) generated from the declaration alone."""
    types, cases = key_types(e), []
    num = next((t for t in types if t in ("int", "float")), None)
    if e.required:
        cases.append(("", "required"))
    if types == ("bool",):
        cases.append(("maybe", "not a bool"))
    if num and "str" not in types:
        cases.append(("abc", "not a number"))
        if num == "int":
            cases.append(("1.5", "not an int"))
    if e.finite and num == "float":
        cases += [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")]
    for bound, delta in (("lo", -1), ("gt", 0), ("hi", 1), ("lt", 0)):
        v = getattr(e, bound)
        if v is not None:
            bad = v + delta if num == "float" or "list" in types and e.items != "int" else int(v + delta)
            cases.append((str(bad) if "list" not in types else f"[{bad}]", f"{bound} {v}"))
    if "list" in types and e.items == "int":
        cases.append(("1,abc", "list element not an int"))
    if e.choices is not None:
        bogus = "bogus" if all(isinstance(c, str) for c in e.choices) else str(max(e.choices) + 1)
        cases.append((bogus, "not a choice"))
    if e.path in ("file", "dir", "exists"):
        cases.append((str(p / "missing"), "missing path"))
    if e.path == "dir":
        cases.append((str(p / "F"), "a file, not a folder"))
    if e.path == "file":
        cases.append((str(p / "D"), "a folder, not a file"))
    if e.path in ("out_dir", "out_file", "out"):
        cases.append((str(p / "F" / "sub"), "under a regular file"))
    if e.path == "out_dir":
        cases.append((str(p / "F"), "a file, not a folder"))
    return cases


def snapshot(root):
    """Every file and folder under root with its bytes' hash: 'nothing written or changed'."""
    out = {}
    for d, dirs, files in os.walk(root):
        out[d] = "dir"
        for f in files:
            out[os.path.join(d, f)] = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
    return out


def cli(module, argv, capsys):
    """Run a tool's main in-process as its command line does: (exit code, stderr)."""
    capsys.readouterr()
    try:
        run_cli(module.main, argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


#### Every key is declared ##################################################################################

@pytest.mark.parametrize("name, spec", list({t: s for t, (_, s) in TOOLS.items()}.items()) + list(SCRIPTS.items()))
def test_every_key_declares_type_and_its_default_is_valid(name, spec):
    for k, e in spec.items():
        assert isinstance(e, Key), f"{name}: {k} is not a Key"
        assert key_types(e) != ("any",), f"{name}: {k} declares no type"
        assert e.help, f"{name}: {k} has no help"
        assert e.path is None or e.path in PATH_ROLES, f"{name}: {k} declares path role {e.path!r}"
        if e.default is None:
            assert e.null or e.required, f"{name}: {k} defaults to null but does not allow it"
        elif not e.required:  # the default must pass its own declaration (paths aside: they depend on the machine)
            check_block({k: e}, {k: e.default}, name)


def test_choices_match_the_registries():
    from models.classifiers import CLASSIFIERS, RDED_ALIASES
    from engines.evaluate.run import SELECTS
    from engines.sample.run import PRECISIONS, SAMPLERS
    from models.dit import DiT_models
    assert TRAIN["model"].choices == sample.CONFIG["model"].choices and set(TRAIN["model"].choices) == set(DiT_models)
    assert set(evaluate.CONFIG["arch"].choices) == set(CLASSIFIERS) | set(RDED_ALIASES) | {"none"}
    assert set(evaluate.CONFIG["feature_arch"].choices) == set(CLASSIFIERS)
    assert set(CLASSIFIERS) | set(RDED_ALIASES) >= set(reproduce.ARCHS)
    assert tuple(evaluate.CONFIG["select"].choices) == tuple(SELECTS)
    assert set(sample.CONFIG["sampler"].choices) == set(SAMPLERS)
    assert set(sample.CONFIG["precision"].choices) == set(PRECISIONS)


#### The sweep ##############################################################################################

def test_every_bad_value_of_every_key_is_one_line_exit_2_nothing_written(place, capsys, monkeypatch):
    """A generated table: each declared key x each bad value its declaration implies, on the command line and in
    a YAML file. Validation runs before anything heavy (the tools' heavy step is replaced by a sentinel)."""
    for tool, (module, _) in TOOLS.items():
        real = module.check_config

        def passed(cfg, real=real):
            real(cfg)
            raise Passed(cfg)
        monkeypatch.setattr(module, "check_config", passed)
        with pytest.raises(Passed):  # the base arguments are valid: every error below is the bad value's
            module.main(valid_args(tool, place))
    before = snapshot(place)
    n = 0
    for tool, (module, spec) in TOOLS.items():
        for key, e in spec_of(spec).items():
            for value, why in bad_values(key, e, place):
                (place / "bad.yaml").write_text(yaml.safe_dump({key: value}) if value != "" else f"{key}: ''\n")
                base = valid_args(tool, place)
                at = base.index("--" + key) if "--" + key in base else len(base)
                for route in (base + ["--" + key, value],  # YAML: without the key's own command-line value
                              base[:at] + base[at + 2:] + ["--config", str(place / "bad.yaml")]):
                    code, err = cli(module, route, capsys)
                    case = f"{tool} {' '.join(route[-2:])} ({why}): {err!r}"
                    assert code == 2, case
                    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, case
                    assert key in err, case
                    n += 1
                (place / "bad.yaml").unlink()
    assert snapshot(place) == before
    assert n > 250  # the table covers every key of the three tools


def test_scripts_refuse_bad_values(place, capsys):
    """scripts/reproduce.py's plan and every tool block of its config files, and scripts/demo.py's options."""
    imagenet = place / "imagenet"
    for d in ("train", "val"):
        (imagenet / d).mkdir(parents=True)
    before = snapshot(place)
    base = ["--subset", "imagewoof", "--imagenet", str(imagenet), "--out", str(place / "out" / "r"), "--dry-run"]
    for key, e in spec_of(reproduce.PLAN).items():
        for value, why in bad_values(key, e, place):
            (place / "bad.yaml").write_text(f"reproduce:\n  {key}: {value if value else chr(39) * 2}\n")
            code, err = cli(reproduce, base + ["--config", str(place / "bad.yaml")], capsys)
            assert code == 2 and err.count("\n") == 1 and key in err, (key, value, err)
    for block, text in (("train", "lr: nan"), ("sample", "cfg_scale: .inf"), ("evaluate", "lr: -1"),
                        ("evaluate", "lerning_rate: 1"), ("sample", "div: off")):
        (place / "bad.yaml").write_text(f"{block}:\n  {text}\n")
        code, err = cli(reproduce, base + ["--config", str(place / "bad.yaml")], capsys)
        assert code == 2 and err.count("\n") == 1 and text.split(":")[0] in err, (block, text, err)
    (place / "bad.yaml").write_text("reproduce:\n  ipcs: [10, 200]\n")
    assert "sample_ipc" in cli(reproduce, base + ["--config", str(place / "bad.yaml")], capsys)[1]
    assert cli(reproduce, base[:-3] + ["--out", str(place / "F" / "r")], capsys)[1].count("\n") == 1
    assert cli(reproduce, ["--subsett", "x"], capsys) == (2, "error: unrecognized arguments: --subsett x; see "
                                                             "reproduce.py --help\n")
    (place / "bad.yaml").unlink()
    for argv, word in ((["--ipcs", "1"], "ipcs"), (["--ipcs", "500"], "ipcs"), (["--ipcs", "x"], "ipcs"),
                       (["--holdout", "train"], "holdout"), (["--threads", "0"], "threads"),
                       (["--out", str(place / "F" / "d")], "--out"), (["--ipc", "3"], "did you mean 'ipcs'")):
        code, err = cli(demo, argv, capsys)
        assert code == 2 and err.count("\n") == 1 and word in err, (argv, err)
    assert snapshot(place) == before


def test_every_config_file_validates():
    """Every block of every YAML under configs/ against its tool (this caught `div: off`, which YAML reads as a
    boolean, in the Table 5 ablation files)."""
    specs = {"train": TRAIN, "sample": sample.CONFIG, "evaluate": evaluate.CONFIG}
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, "configs")) for f in fs
             if f.endswith(".yaml")]
    assert len(files) >= 10
    for path in files:
        data = yaml.safe_load(open(path)) or {}
        top = {k: v for k, v in data.items() if k not in SECTIONS}
        own = {"train_default.yaml": "train", "sample.yaml": "sample", "evaluate.yaml": "evaluate"}
        for section, spec in specs.items():
            if own.get(os.path.basename(path), section) != section:
                continue  # a tool's own default file is read by that tool only
            check_block(spec, top, path)  # top-level keys go to every tool
            check_block(spec, data.get(section) or {}, path)


#### Defaults written once ##################################################################################

def _value(k, v, e):
    return coerce(k, v, e)


@pytest.mark.parametrize("path, section", [("train_default.yaml", "train"), ("sample.yaml", "sample"),
                                           ("evaluate.yaml", "evaluate")])
def test_tool_default_files_equal_the_declared_defaults(path, section):
    spec = spec_of({"train": TRAIN, "sample": sample.CONFIG, "evaluate": evaluate.CONFIG}[section])
    data = yaml.safe_load(open(os.path.join(ROOT, "configs", path)))
    block = dict({k: v for k, v in data.items() if k not in SECTIONS}, **(data.get(section) or {}))
    assert len(block) >= 0.8 * len(spec)  # they spell the defaults out, to read and copy
    for k, v in block.items():
        assert _value(k, v, spec[k]) == spec[k].default, f"configs/{path}: {k}: {v!r} != {spec[k].default!r}"


def test_other_config_files_hold_only_differences():
    """Subset, demo and tiny YAMLs override; restating a default would silently pin it if the code changed."""
    specs = {"train": spec_of(TRAIN), "sample": spec_of(sample.CONFIG), "evaluate": spec_of(evaluate.CONFIG)}
    import glob
    defaults = {"train_default", "sample", "evaluate"}  # these spell out every default (proved equal above)
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
    names = [os.path.relpath(p, os.path.join(ROOT, "configs"))[:-5] for p in paths]
    assert {"imagewoof", "imagenet1k", "demo", "tiny", "guidance/mode"} <= set(names)
    for name in names:
        if name in defaults or name.startswith("ablation/"):  # a Table 5 row names both of its settings on purpose
            continue
        data = yaml.safe_load(open(os.path.join(ROOT, "configs", f"{name}.yaml")))
        for k, v in data.items():
            if k not in SECTIONS:  # a top-level key applies to every tool: a restatement if it equals all defaults
                has = [s for s in specs.values() if k in s]
                assert not all(_value(k, v, s[k]) == s[k].default for s in has), f"{name}.yaml: {k} restated"
        for section, spec in specs.items():
            for k, v in (data.get(section) or {}).items():
                assert _value(k, v, spec[k]) != spec[k].default, f"{name}.yaml {section}.{k}: the default restated"


def test_help_lists_every_key_with_type_range_and_default(capsys):
    for tool, (module, spec) in TOOLS.items():
        with pytest.raises(SystemExit) as ex:
            module.main(["--help"])
        out = capsys.readouterr().out
        assert ex.value.code == 0
        for k, e in spec_of(spec).items():
            line = next(ln for ln in out.splitlines() if ln.startswith(f"  --{k}  "))
            assert describe(e) in line and "[default: " in line, line
    text = help_text(TRAIN)
    assert "  --lr  float, > 0  [default: 0.001]" in text and "--ema_decay  float, in [0, 1)  [default: 0.9999]" in text


#### Specific cases of the issue ############################################################################

def test_issue_cases_in_process(place, capsys):
    d, f = str(place / "D"), place / "F"
    ev = ["--train", d, "--val", d, "--device", "cpu", "--results", str(place / "out" / "e")]
    before = snapshot(place)
    for argv, msg in ((["--lr", "-1"], "lr must be > 0"), (["--batch_size", "0"], "batch_size must be >= 1"),
                      (["--weight_decay", "-1"], "weight_decay must be >= 0"), (["--image_size", "0"], "image_size"),
                      (["--test_batch_size", "0"], "test_batch_size must be >= 1"),
                      (["--results", str(f / "e")], f"lies under {f}, which is a file"),
                      (["--results", str(f)], "is in the way"),
                      (["--select", "herding"], "needs --ipc"), (["--depth", "9", "--image_size", "64"], "depth 9")):
        code, err = cli(evaluate, ev + argv, capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, (argv, err)
    smp = ["--ckpt", "none", "--device", "cpu", "--out", str(place / "out" / "s")]
    for argv, msg in ((["--cfg_scale", "nan"], "cfg_scale must be a finite number, got nan"),
                      (["--out", str(f / "s")], f"lies under {f}"), (["--out", str(f)], "is a file"),
                      (["--cfg_channels", "x"], "expects int or 'all'"), (["--num_steps", "1"], "num_steps")):
        code, err = cli(sample, smp + argv, capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, (argv, err)
    for key, want in (("learning_rate", "lr"), ("lr_rate", "lr"), ("epoch", "epochs"), ("lamda_r", "lambda_r"),
                      ("batchsize", "batch_size"), ("weightdecay", "weight_decay")):
        code, err = cli(train_minimax, ["--" + key, "1"], capsys)
        assert err == f"error: unknown config key '{key}'; did you mean '{want}'?\n"
    assert cli(evaluate, ["--learning_rate", "1"], capsys)[1].endswith("did you mean 'lr'?\n")
    assert cli(sample, ["--output", "x"], capsys)[1].endswith("did you mean 'out'?\n")
    assert snapshot(place) == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(place, capsys):
    for tool, (module, _) in TOOLS.items():
        args = [a if a != "cpu" else "cuda" for a in valid_args(tool, place)]
        code, err = cli(module, args, capsys)
        assert code == 2 and "CUDA is not available" in err and err.count("\n") == 1, (tool, err)
    assert cli(evaluate, valid_args("evaluate.py", place)[:-1] + ["cuda:x"], capsys)[1].count("cuda:N") == 1


def test_subprocess_exit_code_and_time(place):
    """Real command lines: exit code 2, one line, no traceback, reported in < 2 s (no torch import before)."""
    d, f = str(place / "D"), place / "F"
    cases = [("evaluate.py", ["--train", d, "--val", d, "--lr", "-1"]),
             ("evaluate.py", ["--train", d, "--val", d, "--results", str(f / "e")]),
             ("sample.py", ["--ckpt", "none", "--out", str(place / "out" / "s"), "--cfg_scale", "nan"]),
             ("sample.py", ["--ckpt", "none", "--out", str(f / "s")]),
             ("train_minimax.py", ["--learning_rate", "0.1"]),
             ("train_minimax.py", ["--data_dir", d, "--run_dir", str(place / "out" / "r"), "--ema_decay", "1"])]
    if not __import__("torch").cuda.is_available():  # CUDA asked for, none here: known without importing torch
        cases += [("train_minimax.py", ["--data_dir", d, "--run_dir", str(place / "out" / "r"), "--device", "cuda"]),
                  ("sample.py", ["--ckpt", "none", "--out", str(place / "out" / "s"), "--device", "cuda"]),
                  ("evaluate.py", ["--train", d, "--val", d, "--device", "cuda"])]
    before = snapshot(place)
    for script, argv in cases:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
        took = time.perf_counter() - t0
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert took < 2.0, f"{script} {argv}: {took:.2f} s"
    assert snapshot(place) == before


#### Output locations and leftovers #########################################################################

def test_full_disk_and_write_failures_are_one_line(place, monkeypatch, capsys):
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_bavail = 0

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    with pytest.raises(UserError, match="full disk"):
        check_output(str(place / "out" / "x"), "--out")
    code, err = cli(sample, ["--ckpt", "none", "--out", str(place / "out" / "s")], capsys)
    assert code == 2 and "full disk" in err and err.count("\n") == 1
    monkeypatch.setattr(os, "statvfs", real)
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # what a read-only folder answers (root ignores modes)
    code, err = cli(evaluate, valid_args("evaluate.py", place), capsys)
    assert code == 2 and "--results" in err and "not writable" in err and err.count("\n") == 1, err
    monkeypatch.undo()

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(place / "out" / "checkpoint.pt"))
    with pytest.raises(SystemExit) as ex:
        run_cli(full)
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.count("\n") == 1 and "checkpoint.pt" in err and "free space" in err


def test_stale_temporary_files_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {f".tmp-checkpoint.pt.{dead.pid}.ab_cd123": "removed",     # a killed writer (its pid is gone)
             ".tmp-checkpoint.pt.k2j4_x9q": "removed",                  # written before pids were recorded, old
             ".tmp-log.txt.zz12ab34": "kept",                           # the same, but recent: may be live
             f".tmp-3.png.{os.getppid()}.abcdefgh": "kept",             # a live process is writing it
             "checkpoint.pt": "kept", ".tmp-notes": "kept", "x.tmp": "kept"}
    for n in names:
        (tmp_path / n).write_text("x")
    old = time.time() - 3600
    os.utime(tmp_path / ".tmp-checkpoint.pt.k2j4_x9q", (old, old))
    assert sorted(remove_stale_tmp(str(tmp_path))) == sorted(n for n, w in names.items() if w == "removed")
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, w in names.items() if w == "kept")
    assert remove_stale_tmp(str(tmp_path / "missing")) == []


def test_number_checks_are_exact():
    spec = {"x": Key(0.5, "x", gt=0, lt=1), "n": Key(None, "n", type="int", lo=1, null=True),
            "c": Key(3, "c", type="int", lo=1, literals=("all",)), "l": Key([1], "l", type="list", items="int", lo=0)}
    cfg = parse_config(spec, ["--x", "1e-9", "--n", "null", "--c", "ALL", "--l", "[0, 2]"])
    assert cfg == {"x": 1e-9, "n": None, "c": "all", "l": [0, 2]}
    for argv, msg in ((["--x", "0"], "x must be in (0, 1), got 0.0"), (["--x", "1"], "in (0, 1)"),
                      (["--n", "0"], "n must be >= 1"), (["--c", "0"], "c must be >= 1"),
                      (["--l", "0,-1"], "l must be >= 0, got -1 in [0, -1]"), (["--x", "-nan"], "finite")):
        with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            parse_config(spec, argv)
    assert math.isinf(parse_config({"y": Key(1.0, "y", finite=False)}, ["--y", "inf"])["y"])
