"""train_minimax.py under torchrun: 2 CPU processes (gloo), one checkpoint with every rank's state, exact resume."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WOOF = ["n02086240", "n02087394", "n02088364"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "train_minimax.py"] + args
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from models.dit import DiT_models
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    for c in WOOF:
        os.makedirs(root / "data" / c)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "data" / c / f"{i}.png")
    torch.manual_seed(0)
    base = DiT_models["DiT-T/2"](input_size=16, in_channels=3, num_classes=1000)
    torch.save(base.state_dict(), root / "base.pt")
    common = ["--config", "configs/tiny.yaml", "--data_dir", str(root / "data"), "--base", str(root / "base.pt"),
              "--subset", "custom", "--cache_dir", str(root / "cache"), "--batch_size", "4", "--epochs", "2",
              "--memory_sync", "global", "--ckpt_every", "3", "--keep_every", "3"]
    torchrun(common + ["--run_dir", str(root / "straight")])  # 12 images / global batch 4 (2 ranks x 2) = 3 steps per epoch
    return root, common


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ddp_writes_one_checkpoint_with_every_rank(setup):
    root, _ = setup
    files = sorted(os.listdir(root / "straight"))
    assert files == ["checkpoint-0000003.pt", "checkpoint-0000006.pt", "checkpoint.pt", "config.yaml", "log.jsonl"]
    ck = load(root / "straight" / "checkpoint.pt")
    assert ck["world_size"] == 2 and ck["step"] == 6 and len(ck["rng"]) == len(ck["criterion"]) == 2
    # per-rank RNG streams differ (each rank draws its own noise) ...
    assert not torch.equal(ck["rng"][0]["generators"]["noise"], ck["rng"][1]["generators"]["noise"])
    # ... but with memory_sync global both ranks hold the same memories: every rank's batch, in rank order
    for k in ("real", "pred", "ptr", "count"):
        assert torch.equal(ck["criterion"][0][k], ck["criterion"][1][k])
    assert ck["criterion"][0]["count"].tolist() == [8, 8, 8]  # 6 steps x 4 images: every memory of 8 full


def test_ddp_resume_restores_each_rank(setup):
    root, common = setup
    step3 = str(root / "straight" / "checkpoint-0000003.pt")
    torchrun(common + ["--run_dir", str(root / "resumed"), "--resume", step3])
    a, b = load(root / "straight" / "checkpoint.pt"), load(root / "resumed" / "checkpoint.pt")
    for key in ("params", "ema"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    for r in range(2):
        for k in ("real", "pred", "ptr", "count"):
            assert torch.equal(a["criterion"][r][k], b["criterion"][r][k])
        assert torch.equal(a["rng"][r]["torch"], b["rng"][r]["torch"])


def test_global_batch_must_split_over_ranks(setup):
    root, common = setup
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "train_minimax.py"] + common + ["--batch_size", "3", "--run_dir",
                                                                          str(root / "odd")]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "batch_size 3 (the global batch) does not split over 2 processes" in proc.stderr
    assert not os.path.exists(root / "odd" / "checkpoint.pt")


def test_ddp_lazy_cache_equals_eager(setup):
    """Both ranks fill one lazy cache (their own draws) and the run equals the eager-cache run bit for bit."""
    root, common = setup
    torchrun(common + ["--run_dir", str(root / "lazy"), "--cache_fill", "lazy",
                       "--cache_dir", str(root / "lazy-cache")])
    a, b = load(root / "straight" / "checkpoint.pt"), load(root / "lazy" / "checkpoint.pt")
    for key in ("params", "ema"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    for r in range(2):
        assert all(torch.equal(a["criterion"][r][k], b["criterion"][r][k]) for k in ("real", "pred", "ptr", "count"))
    (lazy,) = [d for d in os.listdir(root / "lazy-cache") if d.endswith("-lazy")]
    filled = np.load(root / "lazy-cache" / lazy / "filled.npy")
    assert filled.shape == (12, 2) and 12 <= filled.sum() <= 24  # 2 epochs: every image drawn twice, one side or both
