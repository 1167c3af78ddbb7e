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


def _signal_after(monkeypatch, calls, sig=signal.SIGTERM):
    """preempt.requested() answers None `calls` times, then `sig`: a signal arriving at a known point."""
    seen = []

    def requested():
        seen.append(1)
        return sig if len(seen) > calls else None
    monkeypatch.setattr(preempt, "requested", requested)


def test_sample_stops_after_the_batch_and_the_rerun_completes_the_same_folder(tmp_path, monkeypatch):
    from engines.sample.run import sample_folder
    from models.diffusion import Diffusion
    from models.vae import load_vae
    from tests.helpers import make_tiny_dit, save_tiny_diffusers_vae
    from tests.test_sample import LABELS, WOOF, _pngs
    model = make_tiny_dit(input_size=8, in_channels=4, num_classes=1000, depth=2, hidden_size=32, num_heads=4)
    save_tiny_diffusers_vae(tmp_path / "vae")
    vae = load_vae(str(tmp_path / "vae"))

    def run(out):
        return sample_folder(model, vae, Diffusion.linear(1000).respaced(3), WOOF, LABELS, 6, str(tmp_path / out),
                             seed=0, batch_size=4, progress=False, identity={"weights": "tiny"}, grid=0)
    run("ref")
    with monkeypatch.context() as m:
        _signal_after(m, 1)  # after the second batch of 4
        with pytest.raises(preempt.Preempted, match="every finished image is written"):
            run("stopped")
    assert len([f for f in _pngs(tmp_path / "stopped")]) == 8
    run("stopped")
    assert _pngs(tmp_path / "stopped") == _pngs(tmp_path / "ref")


def test_evaluate_saves_the_epoch_and_the_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    import torchvision

    import engines.evaluate as evaluate
    from tests.test_evaluate_rded import _args, _records, make_folder
    train, val = make_folder(tmp_path / "train", 3, 0), make_folder(tmp_path / "val", 2, 1)
    torch.manual_seed(0)
    teacher = str(tmp_path / "teacher.pt")
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), teacher)
    extra = {"arch": "convnet6", "width": 8, "depth": 2, "ckpt_every": 0, "keep_weights": "true"}
    evaluate.main(_args(train, val, teacher, tmp_path / "full", **extra))
    with monkeypatch.context() as m:
        _signal_after(m, 1, signal.SIGUSR1)  # at the end of epoch 2 (ckpt_every 0: no periodic state)
        with pytest.raises(preempt.Preempted, match="at epoch 2 of 4"):
            evaluate.main(_args(train, val, teacher, tmp_path / "stopped", **extra))
    assert not os.path.exists(tmp_path / "stopped" / "results.jsonl")
    capsys.readouterr()
    evaluate.main(_args(train, val, teacher, tmp_path / "stopped", **extra))
    assert "resumed at epoch 2/4" in capsys.readouterr().out
    a, b = _records(tmp_path / "full" / "results.jsonl"), _records(tmp_path / "stopped" / "results.jsonl")
    assert len(a) == len(b) == 1 and b[0]["resumed_from"] == 2
    assert a[0]["curve"] == b[0]["curve"] and a[0]["loss"] == b[0]["loss"] and a[0]["best"] == b[0]["best"]
    sa = torch.load(tmp_path / "full" / "state" / f"{a[0]['key']}.pt", weights_only=True)
    sb = torch.load(tmp_path / "stopped" / "state" / f"{b[0]['key']}.pt", weights_only=True)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
