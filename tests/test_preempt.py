"""SIGTERM / SIGUSR1 (utils/preempt.py): a tool saves its state, exits 75, and the rerun resumes exactly."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.test_train import assert_same_state, env, load, run  # noqa: F401  (env: the fixture)
from utils import preempt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_watch_sets_the_flag_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with preempt.watch():
        assert preempt.requested() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert preempt.requested() == signal.SIGUSR1
        with pytest.raises(preempt.Preempted, match="stopped on SIGUSR1: x; rerun the same command"):
            preempt.stop("x")
    assert signal.getsignal(signal.SIGUSR1) is before


def test_train_saves_on_sigusr1_exits_75_and_resumes_exactly(env):  # noqa: F811
    """SIGUSR1 mid-run (SIGTERM: the requeue test of tests/test_slurm.py), no periodic checkpoint (ckpt_every
    1000): a checkpoint at the current step, exit 75; the rerun ends with the state of an uninterrupted run."""
    sig, name = signal.SIGUSR1, "usr1"
    run_dir = str(env["root"] / name)
    c = env["cfg"]
    argv = [sys.executable, "train_minimax.py", "--config", "configs/tiny.yaml", "--data_dir", c["data_dir"],
            "--base", c["base"], "--subset", "custom", "--cache_dir", c["cache_dir"], "--epochs", "20",
            "--ema_decay", "0.9999", "--ckpt_every", "1000", "--run_dir", run_dir]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE,
                            text=True)
    log, end = os.path.join(run_dir, "log.jsonl"), time.time() + 120
    while not (os.path.exists(log) and len(open(log).read().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < end, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == preempt.EXIT_PREEMPTED, err[-2000:]
    assert f"preempted: stopped on {signal.Signals(sig).name}" in err and "Traceback" not in err
    k = load(os.path.join(run_dir, "checkpoint.pt"))["step"]
    assert 3 <= k < 60  # saved at the step the signal came, not at a periodic checkpoint
    out = run(env, name, epochs=20, ckpt_every=1000)
    assert out["step"] == 60
    straight = env["root"] / "straight20"
    if not straight.exists():
        run(env, "straight20", epochs=20, ckpt_every=1000)
    assert_same_state(load(os.path.join(run_dir, "checkpoint.pt")), load(straight / "checkpoint.pt"))
