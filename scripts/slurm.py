"""SLURM as the second executor of a reproduction plan (`reproduce.py --launcher slurm`), through plain `sbatch`.

Every step that is not done becomes one batch job with `--dependency=afterok` on the jobs of the steps it needs;
single-GPU steps (the evaluations) with the same needs become one job array (`%array_throttle`). A job runs
`reproduce.py --job OUT STEP`, which runs the step's command (torchrun over `gpus_per_node`; with more than one node
`srun` starts one torchrun per node, joined by a c10d rendezvous on the first node), forwards the preemption signals
to it, writes the step's marker (command, job id, node, GPUs, sbatch options) when it succeeds, and on SLURM's
time-limit warning (`--signal=B:USR1@...`) requeues its own job once the tool has saved its state (tools exit 75).

Files under OUT: `.slurm/steps/<step>.json` (what a job runs), `.slurm/jobs/<job>.sh` (the batch scripts),
`.steps/<step>.job` (the last submission of a step), `.steps/<step>.done` (its marker), `logs/<step>.<jobid>.log`.
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from utils.config import Key, coerce, load_yaml, suggest, validate
from utils.errors import UserError
from utils.io import atomic_write_json, atomic_write_text
from utils.preempt import EXIT_PREEMPTED  # the tool saved its state on SIGTERM / SIGUSR1


SLURM = {
    "partition": Key(None, "partition (sbatch --partition); null: the cluster's default", type="str", null=True),
    "account": Key(None, "account charged (sbatch --account)", type="str", null=True),
    "qos": Key(None, "quality of service (sbatch --qos)", type="str", null=True),
    "gpus_per_node": Key(8, "GPUs of a node: the torchrun width of fine-tuning and sampling (--gpus-per-node); "
                            "evaluation jobs take one each; 0: a CPU cluster (every tool must run with device: cpu)",
                         type="int", lo=0),
    "nodes": Key(1, "nodes of each fine-tuning / sampling job (more than one: srun + torchrun c10d rendezvous)",
                 type="int", lo=1),
    "cpus_per_task": Key(8, "CPU cores per GPU process (--cpus-per-task; a torchrun job gets this x its GPUs)",
                         type="int", lo=1),
    "mem": Key(None, "memory per node (sbatch --mem, e.g. 200G); null: the partition's default", type="str",
               null=True),
    "time": Key(None, "time limit of each job (sbatch --time, e.g. 24:00:00); null: the partition's default; a "
                      "job reaching it saves its state and requeues itself", type="str", null=True),
    "constraint": Key(None, "node features (sbatch --constraint, e.g. h100)", type="str", null=True),
    "extra": Key([], "more sbatch options, one per item, written as #SBATCH lines (e.g. --exclusive)",
                 type="list", items="str"),
    "job_prefix": Key("mmx-", "prefix of every job name (the step name follows)", type="str"),
    "array_throttle": Key(0, "at most this many tasks of an evaluation array run at once (%N); 0: no limit",
                          type="int", lo=0),
    "signal": Key("USR1@180", "warning signal before the time limit, SIG@SECONDS (sbatch --signal=B:...): the job "
                              "saves its state and requeues itself", type="str"),
    "requeue": Key(True, "submit requeueable jobs (sbatch --requeue): preemption and node failures requeue them",
                   type="bool"),
    "srun": Key(False, "start torchrun through srun with a c10d rendezvous also on one node (always with nodes > 1)",
                type="bool"),
    "master_port": Key(29500, "rendezvous port on the first node of a multi-node job", type="int", lo=1, hi=65535),
}
DEFAULTS = {k: e.default for k, e in SLURM.items()}
ALIVE = {"PENDING": "queued", "CONFIGURING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued",
         "REQUEUE_FED": "queued", "SUSPENDED": "queued", "RESIZING": "queued", "RUNNING": "running",
         "COMPLETING": "running", "SIGNALING": "running", "STAGE_OUT": "running"}


def settings(config_files):
    """The `slurm:` blocks of the config files over DEFAULTS, validated against SLURM."""
    cfg = dict(DEFAULTS)
    for path in config_files:
        block = load_yaml(path).get("slurm") or {}
        if not isinstance(block, dict):
            raise UserError(f"section 'slurm' in {path} must be a mapping of key: value")
        for k, v in block.items():
            if k not in SLURM:
                raise UserError(f"unknown key '{k}' in the slurm block of {path}{suggest(k, SLURM)}")
            cfg[k] = coerce(k, v, SLURM[k])
    validate(SLURM, cfg)
    if not re.fullmatch(r"(SIG)?[A-Z0-9]+@\d+", cfg["signal"]):
        raise UserError(f"slurm.signal {cfg['signal']!r} is not SIG@SECONDS; use e.g. USR1@180")
    return cfg


def only_slurm(path):
    """A config file holding nothing but a `slurm:` block: not passed to the tools (it changes none of their
    outputs, so adding it never makes a finished step look changed)."""
    return set(load_yaml(path)) <= {"slurm"}


#### Checks before anything is submitted ###################################################################

def tool_devices(config_files):
    """The device each tool runs on as the config files set it (top level or its block; later files win)."""
    dev = {t: "auto" for t in ("train", "sample", "evaluate")}
    for path in config_files:
        data = load_yaml(path)
        for t in dev:
            for block in (data, data.get(t) or {}):
                if "device" in block:
                    dev[t] = str(block["device"])
    return dev


def step_tool(step):
    for arg in step.cmd:
        base = os.path.basename(str(arg))
        if base in ("train_minimax.py", "sample.py", "evaluate.py"):
            return {"train_minimax.py": "train", "sample.py": "sample", "evaluate.py": "evaluate"}[base]
    return None


def gpus_needed(step, cfg, devices):
    """GPUs per node the step's job asks for."""
    tool = step_tool(step)
    if tool is None or step.gpus == "none" or devices[tool] == "cpu":
        return 0
    return 1 if step.gpus == "one" else max(cfg["gpus_per_node"], 1)


def check_cluster(steps, cfg, devices, ngpu, env=None, submitting=True):
    """One line and exit 2 before anything is submitted: a step that cannot fit the nodes' GPUs; when submitting
    also no sbatch, an unknown partition."""
    for tool in ("sbatch", "squeue", "sinfo", "scontrol", "scancel") if submitting else ():
        if not shutil.which(tool, path=(env or os.environ).get("PATH")):
            raise UserError(f"{tool} not found: --launcher slurm needs the SLURM client commands on PATH (run on a "
                            f"login node of the cluster, or use --launcher local)")
    if ngpu > max(cfg["gpus_per_node"], 1):
        raise UserError(f"NGPU={ngpu} asks for {ngpu} GPUs per job but slurm.gpus_per_node is "
                        f"{cfg['gpus_per_node']}; raise gpus_per_node or unset NGPU")
    for s in steps:
        if cfg["gpus_per_node"] == 0 and gpus_needed(s, dict(cfg, gpus_per_node=1), devices):
            raise UserError(f"step {s.name} runs {step_tool(s)} on device {devices[step_tool(s)]} (needs a GPU) but "
                            f"slurm.gpus_per_node is 0; set gpus_per_node or device: cpu in the {step_tool(s)} block")
    if cfg["partition"] and submitting:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, env=env)
        known = [p.strip().rstrip("*") for p in r.stdout.split()]
        if r.returncode != 0:
            raise UserError(f"sinfo failed ({_last(r)}); is the cluster reachable (SLURM_CONF)?")
        if cfg["partition"] not in known:
            raise UserError(f"slurm.partition {cfg['partition']!r} is not a partition of this cluster (sinfo lists "
                            f"{', '.join(known) or 'none'}); set one of them or null for the default")


#### Dependencies and jobs ####################################################################################

def step_output(step):
    """The path a step writes (its --run_dir / --out / --results, or the folder of --merge / --select-real)."""
    cmd = [str(a) for a in step.cmd]
    for flag in ("--merge", "--select-real", "--run_dir", "--results", "--out"):
        if flag in cmd:
            return os.path.normpath(cmd[cmd.index(flag) + 1])
    return None


def _related(a, b):
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def link_steps(steps):
    """steps[i].needs = names of the earlier steps whose output one of its inputs is, lies in, or holds (a folder
    of samples, a checkpoint in a run dir, the eval folder the tables read)."""
    outs = [step_output(s) for s in steps]
    for i, s in enumerate(steps):
        mine = outs[i]
        inputs = [os.path.normpath(str(a)) for a in s.cmd[1:] if os.path.isabs(str(a))]
        inputs = [a for a in inputs if a != mine]
        s.needs = [steps[j].name for j in range(i) if outs[j] and outs[j] != mine and
                   any(_related(a, outs[j]) for a in inputs)]
    return steps


def group_jobs(todo):
    """Jobs in plan order: one per step, except single-GPU steps with the same needs: one array."""
    jobs, arrays = [], {}
    for s in todo:
        if s.gpus == "one":
            key = tuple(s.needs)
            if key in arrays:
                arrays[key]["steps"].append(s)
                continue
            arrays[key] = {"steps": [s]}
            jobs.append(arrays[key])
        else:
            jobs.append({"steps": [s]})
    for j in jobs:
        first = j["steps"][0].name
        j["name"] = first if len(j["steps"]) == 1 else f"{first}+{len(j['steps']) - 1}"
    return jobs


def sbatch_options(job, cfg, devices, out):
    """The #SBATCH options of a job (without its dependency)."""
    steps = job["steps"]
    s = steps[0]
    gpus = gpus_needed(s, cfg, devices)
    nodes = cfg["nodes"] if s.gpus == "all" else 1
    logs = os.path.join(out, "logs")
    opts = [f"--job-name={cfg['job_prefix']}{job['name']}"]
    if len(steps) == 1:
        opts.append(f"--output={logs}/{s.name}.%j.log")
    else:  # every task writes logs/<its step>.<array id>_<task>.log itself; this catches what comes before
        opts.append(f"--output={logs}/.array-{s.name}.%A_%a.log")
        opts.append(f"--array=0-{len(steps) - 1}" + (f"%{cfg['array_throttle']}" if cfg["array_throttle"] else ""))
    opts += ["--open-mode=append", f"--nodes={nodes}", "--ntasks-per-node=1",
             f"--cpus-per-task={cfg['cpus_per_task'] * max(gpus, 1)}", "--kill-on-invalid-dep=yes",
             f"--signal=B:{cfg['signal']}"]
    if cfg["requeue"]:
        opts.append("--requeue")
    if gpus:
        opts.append(f"--gpus-per-node={gpus}")
    for k in ("partition", "account", "qos", "mem", "time", "constraint"):
        if cfg[k]:
            opts.append(f"--{k}={cfg[k]}")
    return opts + list(cfg["extra"])


def job_script(job, opts, out, root):
    steps = job["steps"]
    lines = ["#!/bin/bash", *[f"#SBATCH {o}" for o in opts], f"# steps: {' '.join(s.name for s in steps)}",
             f"cd {shlex.quote(root)}"]
    run = [sys.executable, "-u", os.path.join(root, "scripts", "reproduce.py"), "--job", out]
    if len(steps) == 1:
        lines.append(f"exec {shlex.join(run + [steps[0].name])}")
    else:
        lines += [f"steps=({' '.join(shlex.quote(s.name) for s in steps)})",
                  'step=${steps[$SLURM_ARRAY_TASK_ID]}',
                  f'exec {shlex.join(run)} "$step" >>{shlex.quote(os.path.join(out, "logs"))}'
                  '/"$step.${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.log" 2>&1']
    return "\n".join(lines) + "\n"


#### State of the steps #######################################################################################

def job_record(out, name):
    path = os.path.join(out, ".steps", name + ".job")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def log_path(out, name, job_id):
    return os.path.join(out, "logs", f"{name}.{job_id}.log")


def last_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return None


def _last(res):
    """The last line a failed client command wrote, or its exit code."""
    lines = res.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {res.returncode}"


def queue(env=None):
    """{job id: (state, reason)} of every job SLURM still knows as queued or running (array tasks one by one)."""
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise UserError(f"squeue failed ({_last(r)}); is the cluster reachable (SLURM_CONF)?")
    jobs = {}
    for ln in r.stdout.splitlines():
        if ln.count("|") == 2:
            i, st, why = ln.split("|")
            jobs[i.strip()] = (st.strip(), why.strip())
    return jobs


def step_states(out, steps, is_done, env=None, squeue=None):
    """{step name: dict(state, job_id, log, last)}; state: done | queued | running | failed | never ran (a step it
    needs failed) | not submitted."""
    live = squeue if squeue is not None else queue(env)
    states = {}
    for s in steps:
        rec = job_record(out, s.name)
        job_id = rec and rec["job_id"]
        st = {"job_id": job_id, "log": log_path(out, s.name, job_id) if job_id else None, "last": None}
        if is_done(out, s):
            st["state"] = "done"
        elif rec is None:
            st["state"] = "not submitted"
        elif job_id in live and live[job_id][1] != "DependencyNeverSatisfied":
            st["state"] = ALIVE.get(live[job_id][0], "running")
        elif job_id in live or not os.path.exists(st["log"]):
            st["state"] = "never ran"  # cancelled for a failed dependency (or about to be)
        else:
            st["state"] = "failed"
        if st["log"] and st["state"] in ("failed", "running", "queued"):
            st["last"] = last_line(st["log"])
        states[s.name] = st
    return states


#### Submission ###############################################################################################

def submit(out, steps, cfg, devices, is_done, root, dry_run=False, env=None, log=print):
    """Submit every step that is not done, queued or running, with its dependencies. Returns {step: job id}."""
    states = step_states(out, steps, is_done, env=env) if not dry_run else {
        s.name: {"state": "done" if is_done(out, s) else "not submitted", "job_id": None} for s in steps}
    todo = [s for s in steps if states[s.name]["state"] not in ("done", "queued", "running")]
    stale = [states[s.name]["job_id"] for s in todo if states[s.name]["state"] == "never ran"]
    if stale and not dry_run:  # still pending on a failed step: replaced below
        subprocess.run(["scancel", *stale], env=env, capture_output=True)
    ids = {s.name: states[s.name]["job_id"] for s in steps if states[s.name]["state"] in ("queued", "running")}
    jobs = group_jobs(todo)
    if dry_run:
        log(f"# {len(steps)} steps, {len(todo)} to submit as {len(jobs)} job(s); "
            f"{sum(st['state'] == 'done' for st in states.values())} done")
    for job in jobs:
        opts = sbatch_options(job, cfg, devices, out)
        needs = list(dict.fromkeys(n for s in job["steps"] for n in s.needs if n in ids or n in
                                   {t.name for t in todo}))
        after = [ids.get(n, f"<{n}>") for n in needs]
        dep = [f"--dependency=afterok:{':'.join(after)}"] if after else []
        script = job_script(job, opts, out, root)
        if dry_run:
            log(f"\n## job {cfg['job_prefix']}{job['name']}: {', '.join(s.name for s in job['steps'])}")
            log(f"## after: {', '.join(needs) or 'nothing'}")
            log(f"## sbatch {' '.join(dep)} {cfg['job_prefix']}{job['name']}.sh")
            log(script.rstrip())
            continue
        for s in job["steps"]:  # what the job runs, read by `reproduce.py --job`
            atomic_write_json(os.path.join(out, ".slurm", "steps", s.name + ".json"), {
                "name": s.name, "cmd": [str(a) for a in s.cmd], "python": sys.executable, "env": s.env, "gpus": s.gpus,
                "nodes": cfg["nodes"] if s.gpus == "all" else 1, "srun": cfg["srun"] or (
                    s.gpus == "all" and cfg["nodes"] > 1), "master_port": cfg["master_port"], "sbatch": opts + dep})
        path = os.path.join(out, ".slurm", "jobs", f"{job['name']}.sh")
        atomic_write_text(path, script)
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
        r = subprocess.run(["sbatch", "--parsable", *dep, path], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise UserError(f"sbatch refused job {job['name']}: {_last(r)}"
                            f"; fix the slurm block and rerun (jobs already submitted are kept)")
        jid = r.stdout.strip().split(";")[0]
        for k, s in enumerate(job["steps"]):
            ids[s.name] = jid if len(job["steps"]) == 1 else f"{jid}_{k}"
            atomic_write_json(os.path.join(out, ".steps", s.name + ".job"), {
                "job_id": ids[s.name], "script": path, "sbatch": opts + dep, "after": needs,
                "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
        log(f"submitted {job['name']} as job {jid}" + (f" (after {', '.join(needs)})" if needs else ""))
    return ids


def print_status(out, steps, is_done, env=None, log=print):
    states = step_states(out, steps, is_done, env=env)
    width = max(len(s.name) for s in steps)
    for s in steps:
        st = states[s.name]
        line = f"{s.name:<{width}}  {st['state']:<13}"
        if st["job_id"]:
            line += f"  job {st['job_id']}"
        if st["state"] in ("failed", "running", "queued") and st["log"] and os.path.exists(st["log"]):
            line += f"  {st['log']}"
            if st["last"]:
                line += f"  | {st['last']}"
        log(line)
    return states


#### Inside a job #############################################################################################

def runtime_command(spec, env):
    """The step's command as this job runs it: with srun (more than one node, or `srun: true`) one torchrun per
    node joined by a c10d rendezvous on the job's first node instead of --standalone."""
    cmd = list(spec["cmd"])
    if not spec.get("srun") or "torch.distributed.run" not in cmd:
        return cmd
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or str(spec["nodes"])
    hosts = subprocess.run(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")],
                           capture_output=True, text=True, env=env).stdout.split()
    head = hosts[0] if hosts else socket.gethostname()
    k = cmd.index("--standalone") if "--standalone" in cmd else cmd.index("torch.distributed.run") + 1
    rdzv = [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={head}:{spec['master_port']}",
            f"--rdzv_id={env.get('SLURM_JOB_ID', '0')}"]
    cmd = cmd[:k] + rdzv + cmd[k + (1 if cmd[k] == "--standalone" else 0):]
    return ["srun", "--ntasks-per-node=1", f"--nodes={nodes}", "--kill-on-bad-exit=1"] + cmd


def run_job(out, name, text_of, marker_path, root):
    """`reproduce.py --job OUT STEP` inside a batch job: run the step as submitted (.slurm/steps/STEP.json), forward
    SIGTERM / SIGUSR1 to it, write the marker (text_of(cmd): the command as markers record it) on success, requeue
    on the time-limit warning. Returns the exit code."""
    with open(os.path.join(out, ".slurm", "steps", name + ".json")) as f:
        spec = json.load(f)
    command_text = text_of([sys.executable if a == spec.get("python") else a for a in spec["cmd"]])
    env = dict(os.environ, **spec["env"])
    job_id = env.get("SLURM_JOB_ID", "?")
    if env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    gpus = env.get("CUDA_VISIBLE_DEVICES") or env.get("SLURM_JOB_GPUS") or ""
    cmd = runtime_command(spec, env)
    print(f"[{time.strftime('%H:%M:%S')}] step {name}, job {job_id} on {socket.gethostname()}, GPUs "
          f"{gpus or 'none'}, restart {env.get('SLURM_RESTART_COUNT', '0')}: {shlex.join(cmd)}", flush=True)
    child = subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True)
    got = []

    def forward(signum, frame):
        got.append(signum)
        # torchrun and srun end their workers on SIGTERM (and die on SIGUSR1): they get SIGTERM, a plain tool the
        # signal itself; every tool saves its state and exits 75
        sig = signal.SIGTERM if cmd[0] == "srun" or "torch.distributed.run" in cmd else signum
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, forward)
    rc = child.wait()
    if rc == 0:
        atomic_write_json(marker_path, {
            "command": command_text, "launcher": "slurm", "job_id": job_id, "node": socket.gethostname(),
            "nodes": env.get("SLURM_JOB_NODELIST"), "gpus": gpus, "sbatch": spec["sbatch"],
            "log": log_path(out, name, job_id), "restarts": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        print(f"[{time.strftime('%H:%M:%S')}] done {name}", flush=True)
        return 0
    if got and signal.SIGUSR1 in got and signal.SIGTERM not in got:  # the time limit is near: requeue this job
        print(f"[{time.strftime('%H:%M:%S')}] {name} stopped (exit {rc}) before the time limit; requeueing job "
              f"{job_id}", flush=True)
        subprocess.run(["scontrol", "requeue", job_id], env=env)
        return EXIT_PREEMPTED
    if got:
        print(f"[{time.strftime('%H:%M:%S')}] {name} stopped by {signal.Signals(got[0]).name} (exit {rc}); SLURM "
              f"requeues it if it was preempted or requeued", flush=True)
        return EXIT_PREEMPTED
    print(f"step {name} failed (exit {rc})", flush=True)
    return rc
