"""reproduce.py --launcher slurm against a real one-node SLURM cluster (tests/slurm_cluster.py), plus the checks that
need no cluster (dry runs, bad inputs). The cluster tests are marked `slurm`: they skip with the reason where the
binaries are missing, and CI runs them as their own step (.ci/run installs slurm-wlm and munge)."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from data.subsets import get_subset, imagenet_wnids
from models.dit import DiT_models
from tests.slurm_cluster import Cluster, missing
from tests.test_reproduce import OVERRIDE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_CLUSTER = "slurm: {gpus_per_node: 0, cpus_per_task: 1, job_prefix: t-}\n"
ENV = dict(os.environ, NGPU="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
needs_cluster = pytest.mark.skipif(missing() is not None, reason=str(missing()))


def make_tree(root):
    """imagenet/{train,val}/<wnid>/ for ImageWoof (as tests/test_reproduce.py), a tiny base DiT, the overrides."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for k, w in enumerate(get_subset("imagewoof").wnids):
            os.makedirs(root / "imagenet" / split / w)
            for i in range(n):
                img = (rng.random((16, 16, 3)) * 60 + k * 19).astype(np.uint8)
                Image.fromarray(img).save(root / "imagenet" / split / w / f"img{i}.JPEG", quality=95)
    torch.manual_seed(0)
    base = DiT_models["DiT-T/2"](input_size=16, in_channels=3, num_classes=1000)
    torch.save(base.state_dict(), root / "tiny_dit.pt")
    (root / "tiny.yaml").write_text(OVERRIDE.format(base=root / "tiny_dit.pt", cache=root / "cache"))
    (root / "cluster.yaml").write_text(CPU_CLUSTER)
    return root


def reproduce(tree, out, *extra, env=None):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "--subset", "imagewoof", "--imagenet",
           str(tree / "imagenet"), "--out", str(out), "--config", str(tree / "tiny.yaml"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, cwd=ROOT)


def status(out, env):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "status", "--out", str(out)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return {ln.split()[0]: ln for ln in res.stdout.splitlines()}


def wait_idle(env, timeout=600):
    """Until SLURM holds no job (every job ended or was cancelled)."""
    end = time.time() + timeout
    while time.time() < end:
        r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env)
        if r.returncode == 0 and not r.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError("jobs still queued after the timeout:\n" + r.stdout)


def run_records(out):
    """{(method, ipc, arch, seed): (best, last, curve)} of every training run."""
    recs = [json.loads(ln) for ln in open(out / "eval" / "results.jsonl")]
    return {(r["method"], r["ipc"], r["arch"], r["seed"]): (r["best"], r["last"], r["curve"], r["loss"])
            for r in recs if r["kind"] == "run"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))  # its logs (slurmctld.log, slurmd.log) stay there
    env = c.start()
    yield dict(ENV, SLURM_CONF=env["SLURM_CONF"])
    c.stop()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("slurmtree"))


#### no cluster needed ########################################################################################

def test_dry_run_imagenet1k_lists_every_job_with_its_dependencies(tmp_path):
    """The ImageNet-1K plan (generated 1,000-class tree, 8 GPUs per node): every step in exactly one job, each job
    after the jobs of the steps it needs; the ten phase fine-tunes one array, the evaluations arrays per sample set."""
    for split in ("train", "val"):
        for w in imagenet_wnids():
            os.makedirs(tmp_path / "imagenet" / split / w)
    (tmp_path / "c.yaml").write_text("slurm: {gpus_per_node: 8, partition: gpu, array_throttle: 4, time: '12:00:00'}\n")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "--subset", "imagenet1k", "--imagenet",
           str(tmp_path / "imagenet"), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "c.yaml"),
           "--launcher", "slurm", "--dry-run"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, PATH="/nonexistent"), cwd=ROOT)
    assert res.returncode == 0, res.stderr
    local = subprocess.run(cmd[:-3] + ["--dry-run"], capture_output=True, text=True, env=dict(ENV, NGPU="8"), cwd=ROOT)
    names = [ln.split("] ", 1)[1].split(":", 1)[0] for ln in local.stdout.splitlines() if "] " in ln]
    assert len(names) == 10 + 10 + 1 + 1 + 1 + 6 + 2  # fine-tunes, samples, merge, sample-dit, random, evals, tables, figures
    jobs = re.findall(r"^## job mmx-(\S+): (.*)\n## after: (.*)\n## sbatch (.*)\n", res.stdout, re.M)
    listed = [s for _, steps, _, _ in jobs for s in steps.split(", ")]
    assert sorted(listed) == sorted(names)  # every step, once
    step_job = {s: j for j, steps, _, _ in jobs for s in steps.split(", ")}
    after = {j: a for j, _, a, _ in jobs}
    jobs_of = {j: steps.split(", ") for j, steps, _, _ in jobs}
    assert jobs_of["finetune-minimax-p0+9"] == [f"finetune-minimax-p{p}" for p in range(10)]
    assert after["finetune-minimax-p0+9"] == "nothing"
    for p in range(10):
        assert after[step_job[f"sample-minimax-p{p}"]] == f"finetune-minimax-p{p}"
    assert after[step_job["merge-minimax"]] == ", ".join(f"sample-minimax-p{p}" for p in range(10))
    assert after[step_job["eval-minimax-ipc10"]] == "merge-minimax"
    assert step_job["eval-minimax-ipc10"] == step_job["eval-minimax-ipc50"]  # one array per sample set
    assert after[step_job["eval-dit-ipc10"]] == "sample-dit" and after[step_job["eval-random-ipc50"]] == "select-random"
    assert set(after["tables"].split(", ")) == {n for n in names if n.startswith("eval-")}
    block = res.stdout.split("## job mmx-eval-minimax-ipc10")[1].split("## job")[0]
    assert "#SBATCH --array=0-1%4" in block and "#SBATCH --gpus-per-node=1" in block
    assert "#SBATCH --partition=gpu" in block and "#SBATCH --time=12:00:00" in block and "--requeue" in block
    ft = res.stdout.split("## job mmx-sample-dit")[1].split("## job")[0]
    assert "#SBATCH --gpus-per-node=8" in ft and "#SBATCH --cpus-per-task=64" in ft
    assert "#SBATCH --signal=B:USR1@180" in ft
    assert "## sbatch --dependency=afterok:<finetune-minimax-p3> mmx-sample-minimax-p3.sh" in res.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_runtime_command_multi_node_rendezvous():
    from scripts.slurm import runtime_command
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "train_minimax.py",
           "--x", "1"]
    spec = {"cmd": cmd, "srun": True, "nodes": 2, "master_port": 29500}
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "", "SLURM_JOB_ID": "77"}
    got = runtime_command(spec, env)
    assert got[:4] == ["srun", "--ntasks-per-node=1", "--nodes=2", "--kill-on-bad-exit=1"]
    rest = got[4:]
    assert "--standalone" not in rest and "--nnodes=2" in rest and "--rdzv_backend=c10d" in rest
    assert "--rdzv_id=77" in rest and any(a.startswith("--rdzv_endpoint=") and a.endswith(":29500") for a in rest)
    assert rest[-4:] == cmd[-4:]  # nproc and the tool's own arguments unchanged
    assert runtime_command(dict(spec, srun=False), env) == cmd


@pytest.mark.parametrize("extra, env, message", [
    ([], {"PATH": "/nonexistent"}, "sbatch not found"),
    ([], {"NGPU": "16"}, "NGPU=16 asks for 16 GPUs per job but slurm.gpus_per_node is 8"),
])
def test_bad_input_one_line_before_anything_is_submitted(tmp_path, extra, env, message):
    tree = tmp_path
    os.makedirs(tree / "imagenet" / "train")
    os.makedirs(tree / "imagenet" / "val")
    (tree / "tiny.yaml").write_text("slurm: {gpus_per_node: 8}\n")
    res = reproduce(tree, tmp_path / "out", "--launcher", "slurm", *extra, env=dict(ENV, **env))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr
    assert not (tmp_path / "out").exists()


def test_cpu_cluster_refuses_gpu_steps(tmp_path):
    os.makedirs(tmp_path / "imagenet" / "train")
    os.makedirs(tmp_path / "imagenet" / "val")
    (tmp_path / "tiny.yaml").write_text("slurm: {gpus_per_node: 0}\n")
    res = reproduce(tmp_path, tmp_path / "out", "--launcher", "slurm", "--dry-run")
    assert res.returncode == 2 and res.stderr.startswith("error: step finetune-minimax runs train on device auto")


#### against a real cluster ###################################################################################

@pytest.mark.slurm
@needs_cluster
def test_unknown_partition_refused(cluster, tree, tmp_path):
    (tmp_path / "p.yaml").write_text("slurm: {gpus_per_node: 0, partition: nosuch}\n")
    res = reproduce(tree, tmp_path / "out", "--config", str(tmp_path / "p.yaml"), "--launcher", "slurm", env=cluster)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "slurm.partition 'nosuch' is not a partition of this cluster (sinfo lists debug)" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slurm
@needs_cluster
def test_plan_through_slurm_failure_rerun_and_local_equality(cluster, tree):
    """The tiny plan through SLURM with the base weights planted bad: fine-tuning and the DiT samples fail, their
    dependents never run, the baselines finish; `status` names the failed steps and their logs' last line. With the
    weights fixed, a rerun submits only what is missing and ends with the same records as the local launcher."""
    out = tree / "out-slurm"
    t0 = time.time()
    local = subprocess.Popen(  # the local launcher's run, beside the cluster's jobs (it uses one core)
        [sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "--subset", "imagewoof", "--imagenet",
         str(tree / "imagenet"), "--out", str(tree / "out-local"), "--config", str(tree / "tiny.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    while not (tree / "out-local" / ".steps" / "sample-dit.done").exists():  # its base-weight steps are done
        assert local.poll() is None, local.stdout.read()[-3000:]
        time.sleep(0.5)
    good = (tree / "tiny_dit.pt").read_bytes()
    (tree / "tiny_dit.pt").write_bytes(b"not a checkpoint")
    res = reproduce(tree, out, "--config", str(tree / "cluster.yaml"), "--launcher", "slurm", env=cluster)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("submitted ") == 8
    wait_idle(cluster)
    st = status(out, cluster)
    for name in ("finetune-minimax", "sample-dit"):
        assert " failed " in st[name], st[name]
        log = re.search(r"(/\S+\.log)", st[name]).group(1)
        last = [ln.strip() for ln in open(log) if ln.strip()][-1]
        assert st[name].endswith("| " + last) and name in os.path.basename(log)
    for name in ("sample-minimax", "eval-minimax-ipc1", "eval-dit-ipc2", "tables", "figures"):
        assert " never ran " in st[name], st[name]
        assert not [f for f in os.listdir(out / "logs") if f.startswith(name + ".")]  # it never started
    baselines = ("eval-random-ipc1", "eval-herding-ipc2", "eval-kcenter-ipc1", "eval-full")
    assert all(" done " in st[b] for b in baselines)
    first = {b: open(out / ".steps" / f"{b}.done").read() for b in baselines}
    marker = json.loads(first["eval-full"])
    assert marker["launcher"] == "slurm" and marker["node"] and "--requeue" in marker["sbatch"]
    assert os.path.isfile(marker["log"]) and marker["log"].endswith(f"eval-full.{marker['job_id']}.log")

    (tree / "tiny_dit.pt").write_bytes(good)
    res = reproduce(tree, out, "--config", str(tree / "cluster.yaml"), "--launcher", "slurm", env=cluster)
    assert res.returncode == 0, res.stderr
    submitted = re.findall(r"^submitted (\S+) as job", res.stdout, re.M)
    assert submitted == ["finetune-minimax", "sample-minimax", "sample-dit", "eval-minimax-ipc1+1",
                         "eval-dit-ipc1+1", "tables", "figures"]  # the baselines are not redone
    again = reproduce(tree, out, "--config", str(tree / "cluster.yaml"), "--launcher", "slurm", env=cluster)
    assert "submitted" not in again.stdout  # queued and running steps are not submitted twice
    wait_idle(cluster)
    slurm_seconds = time.time() - t0
    st = status(out, cluster)
    assert all(" done " in ln for ln in st.values()), "\n".join(st.values())
    assert {b: open(out / ".steps" / f"{b}.done").read() for b in baselines} == first
    assert "Table 1: ImageWoof" in open(out / "tables" / "tables_best.md").read()

    text = local.communicate(timeout=600)[0]
    assert local.returncode == 0, text[-3000:]
    print(f"\nSLURM: {slurm_seconds:.0f} s from the start of both launchers to the end of the second submission; "
          f"local launcher done after {time.time() - t0:.0f} s")
    got, want = run_records(out), run_records(tree / "out-local")
    assert got.keys() == want.keys() and len({k[:2] for k in got}) == 10  # every (method, ipc) of the plan
    assert got == want  # same accuracies, same curves


@pytest.mark.slurm
@needs_cluster
def test_scontrol_requeue_of_a_running_finetune_resumes_exactly(cluster, tree, tmp_path):
    """A fine-tune job requeued mid-run (scontrol requeue: SIGTERM, then SLURM starts it again), then warned of its
    time limit (SIGUSR1 to the batch shell: it requeues itself) saves its state on each signal and resumes from it:
    the final checkpoint equals an uninterrupted run's."""
    from scripts import reproduce as rp
    from scripts import slurm
    from engines.train.run import train
    from engines.train.schema import full_config
    from tests.test_train import assert_same_state
    import yaml
    out = tmp_path / "out"
    args = ["--config", "configs/tiny.yaml", "--data_dir", str(tree / "imagenet" / "train"), "--base",
            str(tree / "tiny_dit.pt"), "--subset", "imagewoof", "--cache_dir", str(tmp_path / "cache"),
            "--epochs", "20", "--ckpt_every", "1000", "--device", "cpu"]
    step = rp.Step("finetune", [sys.executable, "train_minimax.py", *args, "--run_dir", str(out / "ft")])
    rp.save_plan(str(out), slurm.link_steps([step]), "slurm")
    cfg = slurm.settings([str(tree / "cluster.yaml")])
    old = dict(os.environ)
    os.environ.update(cluster)
    try:
        ids = slurm.submit(str(out), [step], cfg, {"train": "cpu"}, rp.is_done, ROOT, log=lambda *a: None)
    finally:
        os.environ.clear()
        os.environ.update(old)
    job = ids["finetune"]
    log = out / "ft" / "log.jsonl"
    end = time.time() + 240

    def wait_steps(n):
        while not (log.exists() and len(log.read_text().splitlines()) >= n):
            assert time.time() < end, "the job did not train"
            time.sleep(0.1)

    def restarted(n):  # a requeued job may start again cred_expire + 1 s later (the test cluster's 10 s, not the
        while True:    # default 2 minutes); starting it sooner by hand races with the node's cleanup of its last run
            r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=cluster)
            if f"restart {n}:" in open(out / "logs" / f"finetune.{job}.log").read():
                return
            assert time.time() < end, r.stdout
            time.sleep(0.5)
    wait_steps(5)
    subprocess.run(["scontrol", "requeue", job], env=cluster, check=True)  # preemption: SIGTERM, SLURM requeues
    restarted(1)
    wait_steps(len(log.read_text().splitlines()) + 3)  # resumed and trained on
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=cluster, check=True)  # the time-limit warning
    restarted(2)  # the job requeued itself
    wait_idle(cluster)
    text = open(out / "logs" / f"finetune.{job}.log").read()
    text += subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=cluster).stdout
    assert "stopped on SIGTERM" in text and "stopped on SIGUSR1" in text, text[-3000:]
    assert f"requeueing job {job}" in text and "restart 2:" in text, text[-3000:]
    (k1, total), (k2, _) = [tuple(map(int, m)) for m in re.findall(r"resuming at step (\d+) of (\d+)", text)]
    assert 5 <= k1 < k2 < total  # saved on each signal (ckpt_every 1000: no periodic checkpoint in between)
    assert rp.is_done(str(out), step)
    straight = train(full_config(dict(yaml.safe_load(open(os.path.join(ROOT, "configs", "tiny.yaml")))["train"],
                                      data_dir=str(tree / "imagenet" / "train"), base=str(tree / "tiny_dit.pt"),
                                      subset="imagewoof", cache_dir=str(tmp_path / "cache"), epochs=20,
                                      ckpt_every=1000, device="cpu", run_dir=str(tmp_path / "straight"))))
    assert straight["step"] == total
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    assert_same_state(load(out / "ft" / "checkpoint.pt"), load(tmp_path / "straight" / "checkpoint.pt"))


def test_slurm_defaults_file_and_bad_values(tmp_path, capsys):
    """configs/slurm.yaml spells out every declared default; every key refuses its bad values in one line."""
    import yaml
    from scripts import reproduce as rp
    from scripts import slurm
    from tests.test_schema import bad_values
    from utils.config import coerce
    from utils.errors import run_cli
    block = yaml.safe_load(open(os.path.join(ROOT, "configs", "slurm.yaml")))["slurm"]
    assert block.keys() == slurm.SLURM.keys()
    assert {k: coerce(k, v, slurm.SLURM[k]) for k, v in block.items()} == slurm.DEFAULTS
    assert slurm.only_slurm(os.path.join(ROOT, "configs", "slurm.yaml"))
    for d in ("train", "val"):
        os.makedirs(tmp_path / "imagenet" / d)
    base = ["--subset", "imagewoof", "--imagenet", str(tmp_path / "imagenet"), "--out", str(tmp_path / "out"),
            "--launcher", "slurm", "--dry-run", "--config", str(tmp_path / "bad.yaml")]
    cases = [(k, v) for k, e in slurm.SLURM.items() for v, _ in bad_values(k, e, tmp_path)]
    cases += [("signal", "USR1-180"), ("gpu_per_node", "8")]
    for key, value in cases:
        (tmp_path / "bad.yaml").write_text(f"slurm:\n  {key}: {value if value else chr(39) * 2}\n")
        with pytest.raises(SystemExit) as e:
            run_cli(rp.main, base)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and key.replace("gpu_", "gpus_") in err, (key, value, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slurm
@needs_cluster
def test_srun_torchrun_rendezvous_on_one_node(cluster, tree, tmp_path):
    """The multi-node launch path (srun + one torchrun per node + c10d rendezvous on the first node), as far as one
    node allows (`srun: true`): two gloo workers meet, all-reduce, and see the job id as the rendezvous id."""
    from scripts import reproduce as rp
    from scripts import slurm
    from tests.slurm_cluster import _free_port
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys, torch, torch.distributed as dist\n"
                      "dist.init_process_group('gloo')\n"
                      "t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t)\n"
                      "if dist.get_rank() == 0:\n"
                      "    open(sys.argv[1], 'w').write(f\"{dist.get_world_size()} {t.item()} "
                      "{os.environ['TORCHELASTIC_RUN_ID']}\")\n"
                      "dist.barrier()\n"
                      "dist.destroy_process_group()\n")
    out = tmp_path / "out"
    step = rp.Step("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path / "result.txt")])
    rp.save_plan(str(out), [step], "slurm")
    cfg = dict(slurm.settings([str(tree / "cluster.yaml")]), srun=True, master_port=_free_port())
    old = dict(os.environ)
    os.environ.update(cluster)
    try:
        job = slurm.submit(str(out), [step], cfg, {}, rp.is_done, ROOT, log=lambda *a: None)["ddp"]
    finally:
        os.environ.clear()
        os.environ.update(old)
    wait_idle(cluster, timeout=300)
    text = open(out / "logs" / f"ddp.{job}.log").read()
    assert "srun --ntasks-per-node=1 --nodes=1 --kill-on-bad-exit=1" in text and "--rdzv_backend=c10d" in text
    assert (tmp_path / "result.txt").read_text() == f"2 3.0 {job}", text[-3000:]
    assert rp.is_done(str(out), step)
