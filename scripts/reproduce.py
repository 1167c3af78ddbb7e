"""Reproduce the paper for one subset: fine-tune -> sample IPC 100 -> evaluate every IPC x network x repeat, plus the
Random / Herding / K-Center / DiT (no fine-tune) / Full baselines, then the paper-layout tables and figures.

    python scripts/reproduce.py --subset imagewoof --imagenet /data/imagenet [--out results/imagewoof] [--dry-run]
        [--launcher local|slurm]
    python scripts/reproduce.py status --out results/imagewoof      # every step: done / queued / running / failed
    (scripts/<subset>.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--launcher slurm] calls this.)

Each step is skipped when its output is complete (a marker holding the step's exact command, written after it
succeeds), so rerunning continues where it stopped; the scripts themselves resume mid-step. The number of GPUs comes
from NGPU, else CUDA_VISIBLE_DEVICES, else torch: fine-tuning and sampling run under torchrun across all of them,
evaluation trainings run one per GPU in parallel. `--launcher slurm` submits the steps as batch jobs instead
(scripts/slurm.py).
"""
import argparse
import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.subsets import get_subset, list_images, num_phases, phase_size_of  # noqa: E402
from utils.config import (SECTIONS, ArgumentParser, Key, check_block, check_output, coerce, load_yaml,  # noqa: E402
                          suggest, validate)
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402
from scripts import slurm  # noqa: E402

ARCHS = ("convnet6", "resnetap10", "resnet18", "resnet50", "resnet101")  # resnet50/101: RDED students only
BASELINES = ("dit", "random", "herding", "kcenter", "full")
# what runs when a subset YAML's `reproduce:` block does not say otherwise (paper Table 1)
PLAN = {
    "ipcs": Key([10, 20, 50, 70, 100], type="list", items="int", lo=1,
                help="IPCs evaluated: the first k images of the sampled set (each <= sample_ipc)"),
    "archs": Key(list(ARCHS[:3]), type="list", items="str", choices=ARCHS, help="networks trained on every set"),
    "repeat": Key(3, lo=1, help="training runs per network and set"),
    "baselines": Key(list(BASELINES), type="list", items="str", choices=BASELINES, help="baselines also run"),
    "kcenter_archs": Key(["resnetap10"], type="list", items="str", choices=ARCHS, help="networks for K-Center"),
    "kcenter_ipcs": Key([10, 50, 100], type="list", items="int", lo=1, help="IPCs of K-Center"),
    "sample_ipc": Key(100, lo=1, help="images per class sampled once; smaller IPCs are its first images"),
    "phases": Key(None, type="list", items="int", lo=0, null=True, literals=("all",),
                  help="fine-tuning phases (ImageNet-100: 0-4; all = every block of phase_size classes); null = one "
                       "model"),
    "method": Key("minimax", type="str", required=True,
                  help="the tag of the fine-tuned variant (ablations: e.g. mean-off)"),
    "finetune": Key(None, type="str", null=True,
                    help="tag of the fine-tuning run sampled (null: method); mode guidance reuses minimax's"),
    # keys of the ImageNet-1K pipeline (configs/imagenet1k.yaml); their defaults leave the subset pipelines unchanged
    "protocol": Key("idc", "evaluation protocol: idc (SPEC §5, Tables 1/3/5) | rded (SPEC §9, Table 4: soft labels "
                           "from a teacher; baselines are random real images and DiT)", choices=("idc", "rded")),
    "phase_size": Key(None, "classes per fine-tuning phase (phases: all = every block of this many classes); null = "
                            "the subset's own (imagenet100: 20)", type="int", null=True, lo=1),
    "phase_parallel": Key(False, "fine-tune (and sample) the phases side by side, one GPU each with the global batch, "
                                 "instead of one after another under torchrun over every GPU", type="bool"),
    "teacher_weights": Key(None, "rded: teacher weights file for evaluate.py (null: torchvision's ResNet-18 "
                                 "IMAGENET1K_V1)", type="str", null=True, path="file"),
    "tables": Key("1,3,5", "tables written by scripts/tables.py (imagenet1k: 4)", type="str"),
    "select_seed": Key(0, "rded: seed of the random real images per class (IPC k = the first k of the largest IPC)",
                       type="int", lo=0),
}
DEFAULT_PLAN = {k: e.default for k, e in PLAN.items()}
TOOLS = {"train": "engines.train.schema", "sample": "engines.sample.schema",  # modules declaring CONFIG
         "evaluate": "engines.evaluate.schema"}


@dataclass
class Step:
    name: str
    cmd: list
    gpus: str = "all"  # all: torchrun over every GPU; one: a single device (runs in parallel with others)
    env: dict = field(default_factory=dict)
    needs: list = field(default_factory=list)  # names of the earlier steps whose outputs it reads (link_steps)


#### GPUs and commands #########################################################################################

def gpu_count():
    if os.environ.get("NGPU"):
        if not os.environ["NGPU"].isdigit():
            raise UserError(f"NGPU must be a number of GPUs (0, 1, 2, ...), got {os.environ['NGPU']!r}")
        return int(os.environ["NGPU"])
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([d for d in vis.split(",") if d.strip() and d.strip() != "-1"])
    try:
        import torch
        return torch.cuda.device_count()
    except ImportError:
        return 0


def launcher(script, ngpu):
    """python SCRIPT, or torchrun over every GPU."""
    if ngpu > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ngpu}", script]
    return [sys.executable, script]


def plan_for(config_files):
    """The `reproduce:` blocks of the config files layered over DEFAULT_PLAN, validated against PLAN."""
    plan = dict(DEFAULT_PLAN)
    for path in config_files:
        block = load_yaml(path).get("reproduce") or {}
        for k, v in block.items():
            if k not in PLAN:
                raise UserError(f"unknown key '{k}' in the reproduce block of {path}{suggest(k, PLAN)}")
            plan[k] = coerce(k, v, PLAN[k])
    validate(PLAN, plan)
    if max(plan["ipcs"], default=0) > plan["sample_ipc"]:
        raise UserError(f"ipcs {plan['ipcs']} ask for more images per class than sample_ipc {plan['sample_ipc']} "
                        f"samples; raise sample_ipc or drop the larger IPCs")
    from scripts.tables import TABLES  # light: no torch
    unknown = [t for t in str(plan["tables"]).split(",") if t.strip() not in TABLES]
    if unknown:
        raise UserError(f"reproduce.tables names table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    rded_only = [a for a in plan["archs"] + plan["kcenter_archs"] if a in ("resnet50", "resnet101")]
    if rded_only and plan["protocol"] != "rded":
        raise UserError(f"reproduce.archs {rded_only[0]} is a student of the rded protocol; set protocol: rded or "
                        f"use {', '.join(ARCHS[:3])}")
    return plan


def sample_setting(config_files, key, default=None):
    """A sample.py key as the layered config files set it (top level or `sample:` block; later files win)."""
    value = default
    for path in config_files:
        data = load_yaml(path)
        for block in (data, data.get("sample") or {}):
            if key in block:
                value = block[key]
    return value


def check_tool_blocks(config_files):
    """Every train/sample/evaluate block of the config files against its tool's declaration, before step one
    (a typo in the evaluate block must not surface after hours of fine-tuning)."""
    import importlib
    for path in config_files:
        data = load_yaml(path)
        top = {k: v for k, v in data.items() if k not in SECTIONS}
        for section, module in TOOLS.items():
            spec = importlib.import_module(module).CONFIG
            block = data.get(section) or {}
            if not isinstance(block, dict):
                raise UserError(f"section '{section}' in {path} must be a mapping of key: value")
            check_block(spec, top, f"{path} (top-level keys go to every tool)")
            check_block(spec, block, f"the {section} block of {path}")


def plan_phases(subset, plan):
    """The phase indices to fine-tune (None = one model for all classes) and the extra phase arguments."""
    phases = plan["phases"]
    if not phases:
        return [None], []
    size = plan["phase_size"]
    if phases == "all":
        per = phase_size_of(subset, size)
        if not per:
            raise UserError(f"phases: all needs phase_size for subset '{subset}' (classes per phase)")
        phases = list(range(num_phases(len(get_subset(subset).wnids), per)))
    if not isinstance(phases, list):
        raise UserError(f"phases must be a list of phase indices, 'all' or null (got {phases!r})")
    return phases, ([] if size is None else ["--phase_size", str(size)])


def build_steps(subset, imagenet, out, configs, ngpu):
    """The ordered steps of a full reproduction of `subset`.

    With mode guidance (`guidance: mode` for sample.py, configs/guidance/mode.yaml) the modes are the k-means of
    each IPC, so IPC k is not the first k images of IPC 100: every evaluated IPC is sampled into its own folder
    `samples/<tag>-ipc<k>` (as MGD³ does), and the DiT baseline becomes `dit-mode`."""
    plan = plan_for(configs)
    if plan["protocol"] == "rded":
        return build_rded_steps(subset, imagenet, out, configs, ngpu, plan)
    train_dir, val_dir = os.path.join(imagenet, "train"), os.path.join(imagenet, "val")
    cfg = [a for c in configs for a in ("--config", c)]
    archs = ",".join(plan["archs"])
    results = os.path.join(out, "eval", "results.jsonl")
    steps = []
    phases, psize = plan_phases(subset, plan)
    samples = os.path.join(out, "samples")
    method = plan["method"]
    guidance = str(sample_setting(configs, "guidance", "none")).lower()
    guided = guidance != "none"
    # (folder suffix, --ipc) of each sample folder: one IPC-100 set, or one folder per IPC with guidance
    sets = [(f"-ipc{k}", k) for k in plan["ipcs"]] if guided else [("", plan["sample_ipc"])]
    extra = ["--train_dir", train_dir] if guided else []  # the modes come from the train images
    steps += finetune_and_sample(subset, train_dir, out, cfg, ngpu, plan, phases, psize, sets, extra)
    dit = f"dit-{guidance}" if guided else "dit"
    if "dit" in plan["baselines"]:
        for suffix, ipc in sets:
            steps.append(Step(f"sample-{dit}{suffix}", launcher("sample.py", ngpu) + cfg + [
                "--subset", subset, "--ckpt", "none", *extra, "--ipc", str(ipc),
                "--out", os.path.join(samples, dit + suffix)]))
    ev = [sys.executable, "evaluate.py"] + cfg + ["--subset", subset, "--val", val_dir, "--results", results,
                                                  "--repeat", str(plan["repeat"])]
    methods = [method] + [dit for m in ("dit",) if m in plan["baselines"]]
    for ipc in plan["ipcs"]:
        for m in methods:
            folder = os.path.join(samples, f"{m}-ipc{ipc}" if guided else m)
            steps.append(Step(f"eval-{m}-ipc{ipc}", ev + ["--train", folder, "--method", m,
                                                           "--arch", archs, "--ipc", str(ipc)], gpus="one"))
        for m in ("random", "herding"):
            if m in plan["baselines"]:
                steps.append(Step(f"eval-{m}-ipc{ipc}", ev + ["--train", train_dir, "--select", m, "--method", m,
                                                               "--arch", archs, "--ipc", str(ipc)], gpus="one"))
    if "kcenter" in plan["baselines"]:
        for ipc in plan["kcenter_ipcs"]:
            steps.append(Step(f"eval-kcenter-ipc{ipc}", ev + [
                "--train", train_dir, "--select", "kcenter", "--method", "kcenter",
                "--arch", ",".join(plan["kcenter_archs"]), "--ipc", str(ipc)], gpus="one"))
    if "full" in plan["baselines"]:
        steps.append(Step("eval-full", ev + ["--train", train_dir, "--select", "full", "--method", "full",
                                             "--arch", archs], gpus="one"))
    steps += [tables_step(out, plan), figures_step(out)]
    return steps


def finetune_and_sample(subset, train_dir, out, cfg, ngpu, plan, phases, psize, sets=None, extra=()):
    """Fine-tune -> sample per phase (or once), then the merge of the phase folders into samples/<method>.

    sets: (folder suffix, --ipc) of each sample folder (default one folder of sample_ipc; mode guidance: one per
    IPC); extra: more sample.py arguments. phase_parallel: every fine-tuning on its own GPU side by side (the global
    batch each), then every sampling likewise; otherwise each phase in turn under torchrun over all GPUs."""
    samples, method = os.path.join(out, "samples"), plan["method"]
    finetune = plan["finetune"] or method  # mode guidance samples minimax's fine-tuned checkpoint
    sets = sets or [("", plan["sample_ipc"])]
    parallel = plan["phase_parallel"] and phases != [None]
    gpus, run = ("one", [sys.executable]) if parallel else ("all", None)
    tunes, draws = [], []
    for p in phases:
        tag = f"{method}" if p is None else f"{method}-p{p}"
        ft = f"{finetune}" if p is None else f"{finetune}-p{p}"
        ph = [] if p is None else ["--phase", str(p), *psize]
        run_dir = os.path.join(out, f"finetune-{ft}")
        tunes.append(Step(f"finetune-{ft}", (run + ["train_minimax.py"] if run else
                                             launcher("train_minimax.py", ngpu)) + cfg + [
            "--subset", subset, *ph, "--data_dir", train_dir, "--run_dir", run_dir], gpus=gpus))
        draws.append([Step(f"sample-{tag}{suffix}", (run + ["sample.py"] if run else launcher("sample.py", ngpu)) +
                           cfg + ["--subset", subset, *ph, "--ckpt", os.path.join(run_dir, "checkpoint.pt"), *extra,
                                  "--ipc", str(ipc), "--out", os.path.join(samples, tag + suffix)], gpus=gpus)
                      for suffix, ipc in sets])
    if parallel:
        steps = tunes + [s for d in draws for s in d]
    else:
        steps = [s for t, d in zip(tunes, draws) for s in [t, *d]]
    if phases != [None]:  # one folder of every class for evaluation: links to the phase folders' class dirs
        for suffix, _ in sets:
            steps.append(Step(f"merge-{method}{suffix}", [
                sys.executable, os.path.join("scripts", "reproduce.py"), "--merge", os.path.join(
                    samples, method + suffix)] + [os.path.join(samples, f"{method}-p{p}{suffix}") for p in phases],
                gpus="none"))
    return steps


def tables_step(out, plan):
    extra = [] if plan["tables"] == DEFAULT_PLAN["tables"] else ["--tables", str(plan["tables"])]
    return Step("tables", [sys.executable, os.path.join("scripts", "tables.py"), os.path.join(out, "eval"),
                           "--out", os.path.join(out, "tables")] + extra, gpus="none")


def figures_step(out):
    """The figures of every record under OUT (evaluation results and fine-tuning logs) next to the tables."""
    return Step("figures", [sys.executable, os.path.join("scripts", "figures.py"), out, "--out",
                            os.path.join(out, "figures")], gpus="none")


def build_rded_steps(subset, imagenet, out, configs, ngpu, plan):
    """ImageNet-1K (Table 4, SPEC §9): fine-tune -> sample the largest IPC -> random real images -> evaluate every
    IPC x student x method with the RDED protocol -> tables. Smaller IPCs are the first images of the folders."""
    train_dir, val_dir = os.path.join(imagenet, "train"), os.path.join(imagenet, "val")
    cfg = [a for c in configs for a in ("--config", c)]
    samples, method = os.path.join(out, "samples"), plan["method"]
    phases, psize = plan_phases(subset, plan)
    steps = finetune_and_sample(subset, train_dir, out, cfg, ngpu, plan, phases, psize)
    methods = [method]
    if "dit" in plan["baselines"]:
        steps.append(Step("sample-dit", launcher("sample.py", ngpu) + cfg + [
            "--subset", subset, "--ckpt", "none", "--ipc", str(plan["sample_ipc"]),
            "--out", os.path.join(samples, "dit")]))
        methods.append("dit")
    if "random" in plan["baselines"]:
        steps.append(Step("select-random", [sys.executable, os.path.join("scripts", "reproduce.py"), "--select-real",
                                            os.path.join(samples, "random"), train_dir, subset,
                                            str(plan["sample_ipc"]), str(plan["select_seed"])], gpus="none"))
        methods.append("random")
    results = os.path.join(out, "eval", "results.jsonl")
    teacher = ["--teacher_weights", plan["teacher_weights"]] if plan["teacher_weights"] else []
    for ipc in plan["ipcs"]:
        for arch in plan["archs"]:
            for m in methods:
                name = f"eval-{m}-ipc{ipc}" + (f"-{arch}" if len(plan["archs"]) > 1 else "")
                steps.append(Step(name, [sys.executable, "evaluate.py", "--protocol", "rded", "--train",
                                         os.path.join(samples, m), "--val", val_dir, "--subset", subset, "--ipc",
                                         str(ipc), "--arch", arch, "--repeat", str(plan["repeat"]), "--results",
                                         results, "--method", m, *teacher, *cfg], gpus="one"))
    steps += [tables_step(out, plan), figures_step(out)]
    return steps


def select_real(dest, train_dir, subset, ipc, seed):
    """dest/<wnid>/<i><ext> -> links to `ipc` real train images per class, drawn without replacement by a generator
    seeded with sha256(seed/wnid) (so a class's choice does not depend on the others); IPC k = files 0..k-1."""
    import hashlib

    import numpy as np
    sub = get_subset(subset)
    manifest = {"format": "minimax-real-selection", "train_dir": os.path.abspath(train_dir), "ipc": ipc,
                "seed": seed, "seed_rule": "numpy default_rng(int(sha256('{seed}/{wnid}')[:16], 16))", "classes": {}}
    for w in sub.wnids:
        names = list_images(os.path.join(train_dir, w)) if os.path.isdir(os.path.join(train_dir, w)) else []
        if len(names) < ipc:
            raise UserError(f"{os.path.join(train_dir, w)} has {len(names)} image(s), fewer than ipc {ipc}; "
                            f"point --imagenet at the full ImageNet train folder")
        rng = np.random.default_rng(int(hashlib.sha256(f"{seed}/{w}".encode()).hexdigest()[:16], 16))
        chosen = [names[i] for i in rng.choice(len(names), ipc, replace=False)]
        os.makedirs(os.path.join(dest, w), exist_ok=True)
        for i, name in enumerate(chosen):
            link = os.path.join(dest, w, f"{i}{os.path.splitext(name)[1]}")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(train_dir, w, name)), link)
        manifest["classes"][w] = chosen
    atomic_write_json(os.path.join(dest, "selection.json"), manifest)


#### Running ###################################################################################################

def marker(out, step):
    return os.path.join(out, ".steps", step.name + ".done")


def command_text(step):
    """The step's command without the interpreter path (a new virtual environment must not rerun steps)."""
    return shlex.join(["python"] + step.cmd[1:] if step.cmd[0] == sys.executable else step.cmd)


def is_done(out, step):
    """Done = its marker exists and records this very command (a changed config reruns the step). A marker is JSON
    (command, launcher, job id, node, GPUs, ...); one of plain command text (before the SLURM launcher) counts too."""
    path = marker(out, step)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        text = f.read()
    if text == command_text(step):
        return True
    try:
        return json.loads(text).get("command") == command_text(step)
    except (ValueError, AttributeError):
        return False


def run_step(out, step, device=None, log=print):
    env = dict(os.environ, **step.env)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    log(f"[{time.strftime('%H:%M:%S')}] start {step.name}")
    rc = subprocess.run(step.cmd, cwd=ROOT, env=env).returncode
    if rc != 0:
        raise UserError(f"step {step.name} failed (exit {rc}); fix the cause and rerun: finished steps are skipped")
    atomic_write_json(marker(out, step), {"command": command_text(step), "launcher": "local",
                                          "node": socket.gethostname(), "gpus": env.get("CUDA_VISIBLE_DEVICES", ""),
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    log(f"[{time.strftime('%H:%M:%S')}] done  {step.name}")


def run_all(out, steps, ngpu):
    """Sequential steps in order; consecutive single-device steps run in parallel, one per GPU."""
    todo = [s for s in steps if not is_done(out, s)]
    i = 0
    while i < len(todo):
        if todo[i].gpus != "one" or ngpu <= 1:
            run_step(out, todo[i])
            i += 1
            continue
        j = i
        while j < len(todo) and todo[j].gpus == "one":
            j += 1
        devices = queue.Queue()  # a step takes a free GPU and gives it back when it ends
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        for d in (visible or [str(k) for k in range(ngpu)])[:ngpu]:
            devices.put(d)

        def work(step):
            dev = devices.get()
            try:
                run_step(out, step, device=dev)
            finally:
                devices.put(dev)
        with ThreadPoolExecutor(ngpu) as pool:
            for f in [pool.submit(work, s) for s in todo[i:j]]:
                f.result()
        i = j


def resolve_config(path):
    """A config path as given (relative to the current dir) or relative to the repository."""
    for cand in (path, os.path.join(ROOT, path)):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    raise UserError(f"config file not found: {path}")


def merge(dest, sources):
    """dest/<class> -> symlinks to each source's class folders (ImageNet-100's phases into one folder)."""
    os.makedirs(dest, exist_ok=True)
    for src in sources:
        for d in sorted(os.listdir(src)):
            if os.path.isdir(os.path.join(src, d)) and not os.path.lexists(os.path.join(dest, d)):
                os.symlink(os.path.abspath(os.path.join(src, d)), os.path.join(dest, d))


def plan_file(out):
    return os.path.join(out, ".steps", "plan.json")


def save_plan(out, steps, launcher):
    """The plan as run (read back by `status`)."""
    atomic_write_json(plan_file(out), {"launcher": launcher, "steps": [
        {"name": s.name, "cmd": [str(a) for a in s.cmd], "gpus": s.gpus, "env": s.env, "needs": s.needs}
        for s in steps]})


def load_plan(out):
    try:
        with open(plan_file(out)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        raise UserError(f"no plan recorded in {out}; run scripts/reproduce.py (or scripts/<subset>.sh) with "
                        f"--out {out} first") from None
    steps = [Step(d["name"], d["cmd"], d["gpus"], d["env"], d["needs"]) for d in data["steps"]]
    for st in steps:  # the interpreter the plan was written with stands for this one (command_text drops it)
        if st.cmd and os.path.basename(st.cmd[0]).startswith("python"):
            st.cmd[0] = sys.executable
    return data["launcher"], steps


def status(argv):
    p = ArgumentParser(prog="reproduce.py status", description="every step of a plan: done / queued / running / "
                       "failed (job id, log, its last line) / never ran / not submitted")
    p.add_argument("--out", required=True, help="the output root of the plan")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    launcher, steps = load_plan(out)
    if launcher == "slurm":
        slurm.print_status(out, steps, is_done)
    else:
        for s in steps:
            print(f"{s.name}  {'done' if is_done(out, s) else 'not done'}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        return status(argv[1:])
    p = ArgumentParser(prog="reproduce.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", help="imagewoof, imagenette, imageidc, imagenet100 or imagenet1k")
    p.add_argument("--imagenet", help="ImageNet root holding train/<wnid>/ and val/<wnid>/")
    p.add_argument("--out", default=None, help="output root (default results/<subset>)")
    p.add_argument("--config", action="append", default=[],
                   help="extra YAML layered over configs/<subset>.yaml (train/sample/evaluate/reproduce/slurm blocks)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run the steps here (GPUs of this node); slurm: submit every step that is not done "
                        "as a batch job with its dependencies (the slurm: block of the configs)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (done/todo and each command; with "
                   "--launcher slurm each job script and its dependencies) and exit")
    p.add_argument("--merge", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--select-real", nargs=5, help=argparse.SUPPRESS)  # DEST TRAIN_DIR SUBSET IPC SEED
    p.add_argument("--job", nargs=2, help=argparse.SUPPRESS)  # OUT STEP: inside a SLURM job
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge[0], args.merge[1:])
    if args.select_real:
        dest, train_dir, subset, ipc, seed = args.select_real
        return select_real(dest, train_dir, subset, int(ipc), int(seed))
    if args.job:
        out, name = os.path.abspath(args.job[0]), args.job[1]
        sys.exit(slurm.run_job(out, name, lambda cmd: command_text(Step(name, cmd)), marker(out, Step(name, [])),
                               ROOT))
    if not args.subset or not args.imagenet:
        raise UserError("pass --subset NAME and --imagenet DIR (the folder holding train/ and val/)")
    get_subset(args.subset)  # unknown names fail here
    configs = [resolve_config(c) for c in [os.path.join("configs", f"{args.subset}.yaml")] + args.config]
    for d in ("train", "val"):
        if not os.path.isdir(os.path.join(args.imagenet, d)):
            raise UserError(f"{os.path.join(args.imagenet, d)} not found; --imagenet must hold train/<wnid>/ and "
                            f"val/<wnid>/ (ImageNet's own images, see README)")
    out = os.path.abspath(args.out or os.path.join("results", args.subset))
    check_output(out, "--out")
    check_tool_blocks(configs)
    cluster = slurm.settings(configs)  # validated under either launcher: a typo fails the same way everywhere
    tool_configs = [c for c in configs if not slurm.only_slurm(c)]  # a cluster-only file changes no command
    if args.launcher == "slurm":
        ngpu = int(os.environ["NGPU"]) if os.environ.get("NGPU", "").isdigit() else cluster["gpus_per_node"]
    else:
        ngpu = gpu_count()
    steps = slurm.link_steps(build_steps(args.subset, os.path.abspath(args.imagenet), out, tool_configs, ngpu))
    if args.launcher == "slurm":
        devices = slurm.tool_devices(tool_configs)
        slurm.check_cluster(steps, cluster, devices, ngpu, submitting=not args.dry_run)
        if not args.dry_run:
            save_plan(out, steps, "slurm")
        print(f"# {args.subset} on SLURM: {len(steps)} steps, outputs in {out}")
        slurm.submit(out, steps, cluster, devices, is_done, ROOT, dry_run=args.dry_run)
        if not args.dry_run:
            print(f"watch it with: python scripts/reproduce.py status --out {out}")
        return
    if args.dry_run:
        print(f"# {args.subset}: {len(steps)} steps, {ngpu} GPU(s), outputs in {out}")
        for k, s in enumerate(steps, 1):
            state = "done" if is_done(out, s) else "todo"
            print(f"{k:3d}. [{state}] {s.name}: {command_text(s)}")
        return
    save_plan(out, steps, "local")
    run_all(out, steps, ngpu)
    print(f"all steps done; tables in {os.path.join(out, 'tables')}")


if __name__ == "__main__":
    run_cli(main)
