"""Every GPU figure of the README in one command, each part in its own process with a time cap:

  forward   DiT-XL/2 forward img/s and achieved TFLOP/s: fp32, TF32, bf16 (+ torch.compile bf16 on CUDA)
  train     fine-tuning through train_minimax.py: batch 8, 256 px, minimax losses with memories of 64 (full after
            ~80 steps at 10 classes), latent cache on: ms/step over the last window, peak GPU memory
  resume    the same fine-tune killed with SIGKILL after a checkpoint and resumed: every tensor identical
  sample    sample_folder img/s at batch 64 bf16 with CFG, without and with mode guidance; bf16 against fp32
            (PSNR of the decoded images); batch-size invariance (max pixel difference, same and other micro-batch)
  evaluate  IDC training img/s at 224 px for ConvNet-6, ResNetAP-10, ResNet-18 (device-resident vs PIL path),
            RDED student + teacher img/s; projected times for Table 1 and Table 4
  ddp       train_minimax.py under torchrun with 2 processes (on one GPU when only one is present)

`--device cpu --tiny` runs the same code paths with tiny models (DiT-T/2 on 3x16x16 'pixel' latents, 32 px
evaluation) on the CPU: tests/test_bench_gpu.py runs it. The dated table goes to <out_dir>/RESULTS.md and every
number to <out_dir>/gpu-<card>-<date>.json (out_dir: benchmarks/).
Run: python benchmarks/run.py gpu [--device cuda] [--tiny] [--parts forward,train,...] [--budget 480] [--out_dir D]
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.config import check_device, check_output  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402

PARTS = ("forward", "train", "resume", "sample", "evaluate", "ddp")
CAPS = {"forward": 45, "train": 100, "resume": 70, "sample": 90, "evaluate": 100, "ddp": 60}  # seconds, CUDA
TINY_CAPS = {"forward": 60, "train": 60, "resume": 90, "sample": 60, "evaluate": 90, "ddp": 90}
WOOF = ["n02086240", "n02087394", "n02088364", "n02089973"]
TARGETS = {"train_ms": 24.0, "train_gb": 20.0, "sample_ips": 20.0}


def setup_for(tiny):
    """Model and data sizes: the paper's on CUDA, tiny on CPU."""
    if tiny:
        return dict(dit="DiT-T/2", latent=8, channels=3, image=8, vae="pixel", fwd_batch=4, train_steps=6,
                    log_every=2, per_class=2, kill=2, resume_steps=4, sample_images=8, sample_batch=4, steps=2,
                    eval_size=16, eval_n=20, rded_n=20, rded_batch=10, workers=0)
    return dict(dit="DiT-XL/2", latent=32, channels=4, image=256, vae="sd", fwd_batch=32, train_steps=300,
                log_every=50, per_class=8, kill=20, resume_steps=40, sample_images=128, sample_batch=64, steps=50,
                eval_size=224, eval_n=512, rded_n=500, rded_batch=100, workers=8)


#### shared inputs: base DiT file, VAE folder, an ImageWoof-shaped train tree #################################

def make_inputs(work, s):
    import numpy as np
    import torch
    from PIL import Image
    from data.subsets import get_subset
    from scripts.rehearse import random_dit_state
    # every weight random (zero-init layers make trivial outputs), filled fast: no init pass over 675M values
    torch.save(random_dit_state(s["dit"], s["latent"], 0, s["channels"]), os.path.join(work, "base.pt"))
    if s["vae"] == "sd":
        from diffusers import AutoencoderKL
        from scripts.rehearse import SD_VAE_CONFIG
        AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(os.path.join(work, "vae"))
    rng = np.random.default_rng(0)
    for w in get_subset("imagewoof").wnids:
        os.makedirs(os.path.join(work, "train", w))
        for i in range(s["per_class"]):
            arr = rng.integers(0, 256, (s["image"] + 8, s["image"] + 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(work, "train", w, f"{i}.png"), compress_level=1)


def train_argv(work, s, device, run_dir, steps, extra=()):
    vae = "pixel" if s["vae"] == "pixel" else os.path.join(work, "vae")
    return ["--config", os.path.join(ROOT, "configs", "imagewoof.yaml"), "--base", os.path.join(work, "base.pt"),
            "--vae", vae, "--image_size", str(s["image"]), "--data_dir", os.path.join(work, "train"),
            "--cache_dir", os.path.join(work, "cache"), "--run_dir", run_dir, "--batch_size", "8",
            "--max_steps", str(steps), "--log_every", str(s["log_every"]), "--ckpt_every", str(steps),
            "--num_workers", "0", "--device", device, "--progress", "false", *extra]


def load_base(work, s, dev):
    """The base DiT built directly on the device (no CPU init pass) with base.pt's weights, eval mode."""
    import torch
    from models.dit import DiT_models
    with torch.device(dev):
        model = DiT_models[s["dit"]](input_size=s["latent"], in_channels=s["channels"], num_classes=1000)
    model.load_state_dict(torch.load(os.path.join(work, "base.pt"), map_location=dev, weights_only=True))
    return model.eval().requires_grad_(False)


#### parts (each runs in its own process: python benchmarks/bench_gpu.py --part NAME ...) #######################

def part_forward(work, s, device, emit):
    import contextlib
    import torch
    from benchmarks.bench_dit import dit_macs
    from benchmarks.common import timeit
    dev = torch.device(device)
    model = load_base(work, s, dev)
    n = s["fwd_batch"]
    x = torch.randn(n, s["channels"], s["latent"], s["latent"], device=dev)
    t, y = torch.randint(0, 1000, (n,), device=dev), torch.randint(0, 1000, (n,), device=dev)
    bf16 = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)  # noqa: E731
    modes = [("fp32", contextlib.nullcontext, False, False), ("tf32", contextlib.nullcontext, True, False),
             ("bf16", bf16, False, False)]
    if dev.type == "cuda":
        modes.append(("bf16 + compile", bf16, False, True))
    macs, rows = dit_macs(model.arch), []
    for name, ctx, tf32, comp in modes:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        fn = torch.compile(model) if comp else model

        def fwd():
            with torch.inference_mode(), ctx():
                fn(x, t, y)
        sec = timeit(fwd, device, warmup=3 if comp else 1, iters=10 if dev.type == "cuda" else 2)
        rows.append({"mode": name, "batch": n, "img_per_s": n / sec, "tflops": 2 * macs * n / sec / 1e12})
        print(rows[-1], flush=True)
        res = {"model": s["dit"], "rows": rows, "note": "" if dev.type == "cuda" else
               "tf32 acts only on CUDA (on CPU it equals fp32); torch.compile timed on CUDA only"}
        emit(res)  # kept if a later mode (compile) runs past the cap
    return res


def part_train(work, s, device, emit):
    import torch
    from benchmarks.bench_train import steady_steps_per_s
    from engines.train import main as train_main
    run_dir = os.path.join(work, "run-train")
    t0 = time.perf_counter()
    train_main(train_argv(work, s, device, os.path.join(work, "run-warm"), 1))  # builds the latent cache
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the peak of fine-tuning, not of the VAE encoding the cache
    train_main(train_argv(work, s, device, run_dir, s["train_steps"]))
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    sps = steady_steps_per_s(os.path.join(run_dir, "log.jsonl"))
    ck = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)
    return {"steps": s["train_steps"], "ms_per_step": 1000 / sps, "steps_per_s": sps,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None,
            "memory_fill_last": log[-1].get("mem_fill"), "loss_r_last": log[-1].get("loss_r"),
            "loss_d_last": log[-1].get("loss_d"), "wall_s": time.perf_counter() - t0,
            "trainable": sum(v.numel() for v in ck["params"].values())}


def part_resume(work, s, device, emit):
    from scripts.rehearse import compare_checkpoints
    n, k = s["resume_steps"], s["kill"]
    runs = {name: os.path.join(work, f"run-{name}") for name in ("whole", "killed")}
    cmd = [sys.executable, os.path.join(ROOT, "train_minimax.py")]
    ckpt = ["--ckpt_every", str(k)]
    subprocess.run(cmd + train_argv(work, s, device, runs["whole"], n) + ckpt, check=True, cwd=ROOT)
    killed = subprocess.run(cmd + train_argv(work, s, device, runs["killed"], n) + ckpt +
                            ["--debug_kill_step", str(k)], cwd=ROOT)
    subprocess.run(cmd + train_argv(work, s, device, runs["killed"], n) + ckpt, check=True, cwd=ROOT)
    bad = compare_checkpoints(*(os.path.join(r, "checkpoint.pt") for r in runs.values()))
    return {"steps": n, "killed_after": k, "kill_exit": killed.returncode, "identical": not bad and
            killed.returncode == -signal.SIGKILL, "differing": bad[:10]}


def _sample(model, vae, diffusion, out, images, batch, micro, precision, device, guide=None):
    from engines.sample.run import sample_folder
    per_class = -(-images // len(WOOF))
    stats = sample_folder(model, vae, diffusion, WOOF, [155, 159, 162, 167], per_class, out, batch_size=batch,
                          micro_batch=micro, precision=precision, device=device, progress=False, grid=0,
                          identity={"weights": "random"}, **(guide or {}))
    return stats["written"] / stats["seconds"]


def _pixels(folder):
    import numpy as np
    from PIL import Image
    return np.stack([np.asarray(Image.open(os.path.join(folder, w, f)), dtype=np.float64)
                     for w in WOOF for f in sorted(os.listdir(os.path.join(folder, w)))])


def part_sample(work, s, device, emit):
    import numpy as np
    import torch
    from models.diffusion import Diffusion
    from models.vae import PixelVAE, load_vae
    dev = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    vae = PixelVAE() if s["vae"] == "pixel" else load_vae(os.path.join(work, "vae"), device=dev)
    model = load_base(work, s, dev)
    diffusion = Diffusion.linear(1000).respaced(s["steps"])
    n, b = s["sample_images"], s["sample_batch"]
    per_class = -(-n // len(WOOF))
    modes = 0.5 * torch.randn((len(WOOF), per_class, s["channels"], s["latent"], s["latent"]),
                              generator=torch.Generator().manual_seed(0))
    guide = {"modes": modes, "mode_scale": 0.1, "mode_stop": s["steps"] // 2, "modes_info": {"sha256": "random"}}
    folder = lambda name: os.path.join(work, "samples", name)  # noqa: E731
    _sample(model, vae, Diffusion.linear(1000).respaced(2), folder("warm"), len(WOOF), len(WOOF), len(WOOF),
            "bf16", dev)  # warm-up: allocator, kernels
    res = {"images": n, "batch": b, "steps": s["steps"]}
    res["bf16_img_per_s"] = _sample(model, vae, diffusion, folder("bf16"), n, b, b, "bf16", dev)
    emit(res)
    res["bf16_mode_img_per_s"] = _sample(model, vae, diffusion, folder("mode"), n, b, b, "bf16", dev, guide)
    emit(res)
    # correctness on this device: bf16 against fp32, and batch-size invariance (fp32)
    k = max(len(WOOF), b // 4)
    fp32 = _sample(model, vae, diffusion, folder("fp32"), k, b, b, "fp32", dev)
    _sample(model, vae, diffusion, folder("bf16-check"), k, b, b, "bf16", dev)
    a, c = _pixels(folder("fp32")), _pixels(folder("bf16-check"))
    mse = float(((a - c) ** 2).mean())
    res["psnr_bf16_vs_fp32_db"] = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
    _sample(model, vae, diffusion, folder("fp32-small-batch"), k, len(WOOF), b, "fp32", dev)
    _sample(model, vae, diffusion, folder("fp32-other-micro"), k, len(WOOF), len(WOOF), "fp32", dev)
    res["batch_invariance_same_micro_max_px"] = float(np.abs(_pixels(folder("fp32-small-batch")) - a).max())
    res["batch_invariance_other_micro_max_px"] = float(np.abs(_pixels(folder("fp32-other-micro")) - a).max())
    res["fp32_img_per_s"] = fp32
    return res


def projections(idc, rded_ips):
    """Projected GPU-hours of Table 1 (ImageWoof: IPC 10/20/50/70/100 x 3 nets x 3 repeats, IDC epochs rule) and
    Table 4 (ImageNet-1K: 3 methods x 3 repeats x IPC 10 and 50, 300 epochs), from measured training img/s."""
    from engines.evaluate.idc import epochs_for
    t1 = 0.0
    for arch, ips in idc.items():
        for ipc in (10, 20, 50, 70, 100):
            t1 += 3 * ipc * 10 * epochs_for(ipc, 10) / ips
    t4 = sum(3 * 3 * ipc * 1000 * 300 / rded_ips for ipc in (10, 50))
    return {"table1_hours": t1 / 3600, "table4_hours": t4 / 3600}


def part_evaluate(work, s, device, emit):
    import torch
    from benchmarks import bench_evaluate, bench_evaluate_rded
    dev = torch.device(device)
    rows, idc = [], {}
    for arch in ("convnet6", "resnetap10", "resnet18"):
        for name, data_ips, train_ips in bench_evaluate.bench(dev, s["eval_size"], s["eval_n"] // 4 if
                                                              arch != "convnet6" else s["eval_n"], arch, 1,
                                                              s["workers"], "none"):
            rows.append({"protocol": "idc", "arch": arch, "path": name, "data_img_per_s": data_ips,
                         "train_img_per_s": train_ips})
            if name.startswith("gpu"):
                idc[arch] = train_ips
    rd = bench_evaluate_rded.bench(dev, s["eval_size"], s["rded_n"], 10, s["rded_batch"], 1, s["workers"], "none", 1)
    for name, (data_ips, teacher_ips, train_ips) in rd.items():
        rows.append({"protocol": "rded", "arch": "resnet18_bn + resnet18 teacher", "path": name,
                     "data_img_per_s": data_ips, "train_img_per_s": train_ips, "teacher_img_per_s": teacher_ips})
    rded_ips = rd["device-resident"][2]
    return {"rows": rows, **projections(idc, rded_ips)}


def part_ddp(work, s, device, emit):
    import torch
    n = 2 if device == "cpu" or torch.cuda.device_count() < 2 else min(torch.cuda.device_count(), 8)
    run_dir = os.path.join(work, "run-ddp")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           os.path.join(ROOT, "train_minimax.py"), *train_argv(work, s, device, run_dir, 2)],
                          cwd=ROOT, capture_output=True, text=True)
    ok = proc.returncode == 0 and os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
    res = {"processes": n, "gpus": torch.cuda.device_count() if device == "cuda" else 0, "ok": ok,
           "seconds": time.perf_counter() - t0}
    if not ok:
        res["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:][0][:300] if (proc.stderr or
                                                                                        proc.stdout) else "?"
    else:
        import torch as _t
        res["world_size"] = _t.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu",
                                    weights_only=True)["world_size"]
    return res


#### driver ####################################################################################################

def card_name(device):
    import torch
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu-{os.cpu_count()}core"


def run_part(name, work, device, tiny, cap):
    """The part in a child process (own session) killed at `cap` seconds -> (result dict or None, status)."""
    out = os.path.join(work, f"part-{name}.json")
    argv = [sys.executable, os.path.abspath(__file__), "--part", name, "--work", work, "--device", device,
            "--result", out] + (["--tiny"] if tiny else [])
    t0 = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if device == "cpu" else {}))
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=cap)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}): {_last_line(log)}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part's own process group: it and its torchrun workers
        proc.communicate()
        status = f"stopped at its {cap} s cap" + (" (what finished before is kept)" if os.path.isfile(out) else "")
    sec = time.perf_counter() - t0
    res = None
    if os.path.isfile(out):
        with open(out) as f:
            res = json.load(f)
    print(f"[gpu bench] {name}: {status} ({sec:.0f} s)", flush=True)
    return res, status, sec


def _last_line(text):
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def table(results, statuses, device):
    rows = []

    def add(part, what, value, target=""):
        rows.append({"part": part, "measure": what, "value": value, "target": target})
    for part in PARTS:
        if results.get(part):
            try:
                ROWS[part](results[part], add)
            except KeyError as e:  # a part stopped at its cap: what it wrote before is shown
                add(part, "partial result", f"missing {e}")
        if part in statuses and statuses[part] != "ok":
            add(part, "status", statuses[part])
    return rows


def rows_forward(f, add):
    for r in f["rows"]:
        add("forward", f"{f['model']} {r['mode']}, batch {r['batch']}", f"{r['img_per_s']:.1f} img/s, "
            f"{r['tflops']:.2f} TFLOP/s")


def rows_train(t, add):
    add("train", f"step, batch 8, minimax (memory fill {fmt(t['memory_fill_last'])}), latent cache",
        f"{t['ms_per_step']:.1f} ms/step", f"<= {TARGETS['train_ms']:.0f} ms")
    add("train", "peak GPU memory", f"{fmt(t['peak_gpu_gb'])} GB", f"<= {TARGETS['train_gb']:.0f} GB")
    add("train", "trainable parameters", f"{t['trainable']:,}")


def rows_resume(r, add):
    add("resume", f"SIGKILL after step {r['killed_after']} of {r['steps']}, resumed",
        "identical tensors" if r["identical"] else f"DIFFERENT {r['differing']}")


def rows_sample(sm, add):
    add("sample", f"bf16, CFG, batch {sm['batch']}, {sm['steps']} steps", f"{sm['bf16_img_per_s']:.2f} img/s",
        f">= {TARGETS['sample_ips']:.0f} img/s (H100)")
    add("sample", "same, --guidance mode", f"{sm['bf16_mode_img_per_s']:.2f} img/s")
    add("sample", "bf16 vs fp32 decoded images", f"PSNR {sm['psnr_bf16_vs_fp32_db']:.1f} dB")
    add("sample", "batch-size invariance: same micro-batch / other micro-batch",
        f"max abs diff {sm['batch_invariance_same_micro_max_px']:.0f} / "
        f"{sm['batch_invariance_other_micro_max_px']:.0f} (0-255)")


def rows_evaluate(e, add):
    for r in e["rows"]:
        extra = f", teacher alone {r['teacher_img_per_s']:.0f} img/s" if "teacher_img_per_s" in r else ""
        add("evaluate", f"{r['protocol']} {r['arch']} ({r['path']})", f"train {r['train_img_per_s']:.1f} "
            f"img/s, data {r['data_img_per_s']:.0f} img/s{extra}")
    add("evaluate", "projected Table 1 (ImageWoof, 5 IPCs x 3 nets x 3 repeats)", f"{e['table1_hours']:.2f} GPU-hours")
    add("evaluate", "projected Table 4 (ImageNet-1K, IPC 10 + 50, 3 methods x 3 repeats)",
        f"{e['table4_hours']:.1f} GPU-hours")


def rows_ddp(d, add):
    add("ddp", f"torchrun {d['processes']} processes on {d['gpus']} GPU(s)",
        "ok" if d["ok"] else f"failed: {d.get('error')}")


ROWS = {"forward": rows_forward, "train": rows_train, "resume": rows_resume, "sample": rows_sample,
        "evaluate": rows_evaluate, "ddp": rows_ddp}


def drive(device, tiny, parts, budget, out_dir):
    from benchmarks.common import markdown_table
    s = setup_for(tiny)
    caps = TINY_CAPS if tiny else CAPS
    stamp = datetime.datetime.now()
    work = tempfile.mkdtemp(prefix="bench_gpu_")
    results, statuses, seconds = {}, {}, {}
    t_all = time.perf_counter()
    try:
        print(f"[gpu bench] inputs in {work}", flush=True)
        make_inputs(work, s)
        for name in parts:
            left = budget - (time.perf_counter() - t_all)
            if left < min(caps[name], 20):
                statuses[name] = f"skipped: {left:.0f} s left of the {budget} s budget"
                print(f"[gpu bench] {name}: {statuses[name]}", flush=True)
                continue
            results[name], statuses[name], seconds[name] = run_part(name, work, device, tiny, min(caps[name], left))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    card = card_name(device)
    rows = table(results, statuses, device)
    doc = {"card": card, "device": device, "tiny": tiny, "date": stamp.isoformat(timespec="seconds"),
           "wall_s": time.perf_counter() - t_all, "budget_s": budget, "results": results, "status": statuses,
           "part_seconds": seconds, "setup": s}
    from utils.io import run_info
    doc["versions"] = run_info()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-").lower()
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"gpu-{slug}-{stamp:%Y-%m-%d}.json")
    atomic_write_json(json_path, doc)
    text = markdown_table(rows, ["part", "measure", "value", "target"])
    with open(os.path.join(out_dir, "RESULTS.md"), "a") as f:
        f.write(f"\n### gpu — {card}{' (tiny models)' if tiny else ''} — {stamp:%Y-%m-%d %H:%M} — "
                f"{doc['wall_s']:.0f} s\n\nEvery number in {os.path.basename(json_path)}.\n\n{text}")
    print(text)
    print(f"[gpu bench] {doc['wall_s']:.0f} s; table appended to {os.path.join(out_dir, 'RESULTS.md')}, "
          f"numbers in {json_path}")
    return doc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models (CPU tests of the same code paths)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole run; a part that no longer "
                   "fits is skipped (and says so)")
    p.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks"), help="where RESULTS.md and the json go")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device not in ("cuda", "cpu"):
        raise UserError(f"--device must be cuda or cpu, got {a.device!r}")
    check_device(a.device)
    if a.part:  # one part, in its own process
        import torch
        if a.device == "cpu":
            torch.set_num_threads(1)  # tiny models on a shared CPU: more threads only spin
        res = globals()[f"part_{a.part}"](a.work, setup_for(a.tiny), a.device,
                                          lambda partial: atomic_write_json(a.result, partial))
        atomic_write_json(a.result, res)
        return
    parts = [x for x in a.parts.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        raise UserError(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    if a.device == "cpu" and not a.tiny:
        raise UserError("--device cpu runs only with --tiny (DiT-XL/2 at 256 px on a CPU takes hours)")
    check_output(a.out_dir, "--out_dir")
    drive(a.device, a.tiny, parts, a.budget, a.out_dir)


if __name__ == "__main__":
    from utils.errors import run_cli
    run_cli(main)
