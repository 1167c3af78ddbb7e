"""`python benchmarks/run.py gpu --device cpu --tiny`: every part of the GPU benchmark runs on tiny models, its
correctness checks hold, and the table and json are written; bad input is one line, exit 2."""
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "gpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow  # ~1 minute on an idle 2-core machine (13 processes, each importing torch); CI runs it
def test_gpu_benchmark_tiny_on_cpu_runs_every_part(tmp_path):
    r = _run("--device", "cpu", "--tiny", "--out_dir", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (path,) = glob.glob(str(tmp_path / "gpu-cpu-*.json"))
    doc = json.load(open(path))
    assert doc["status"] == {p: "ok" for p in ("forward", "train", "resume", "sample", "evaluate", "ddp")}, doc["status"]
    res = doc["results"]
    assert [row["mode"] for row in res["forward"]["rows"]] == ["fp32", "tf32", "bf16"]
    assert all(row["img_per_s"] > 0 for row in res["forward"]["rows"])
    assert res["train"]["trainable"] > 0 and res["train"]["ms_per_step"] > 0 and res["train"]["memory_fill_last"] > 0
    assert res["resume"]["identical"] and res["resume"]["kill_exit"] == -9
    assert res["sample"]["batch_invariance_same_micro_max_px"] == 0  # fixed micro-batch: byte-identical PNGs
    assert res["sample"]["psnr_bf16_vs_fp32_db"] > 20
    archs = {(row["protocol"], row["arch"], row["path"]) for row in res["evaluate"]["rows"]}
    assert {a for _, a, _ in archs} == {"convnet6", "resnetap10", "resnet18", "resnet18_bn + resnet18 teacher"}
    assert len(archs) == 8 and res["evaluate"]["table1_hours"] > 0 and res["evaluate"]["table4_hours"] > 0
    assert res["ddp"]["ok"] and res["ddp"]["world_size"] == 2
    table = open(tmp_path / "RESULTS.md").read()
    assert "### gpu — cpu-" in table and "(tiny models)" in table and "| status |" not in table
    assert table.count("\n| ") >= 15


def test_gpu_benchmark_bad_input_is_one_line_exit_2(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    for args, words in ((["--device", "cpu", "--tiny", "--out_dir", str(f / "sub")], "is a file"),
                        (["--device", "cpu"], "--tiny"), (["--device", "cpu", "--tiny", "--parts", "fwd"], "fwd")):
        r = _run(*args, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    import torch
    if not torch.cuda.is_available():
        r = _run("--device", "cuda", timeout=60)
        assert r.returncode == 2 and "CUDA is not available" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert f.read_text() == "keep"
