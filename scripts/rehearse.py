"""Full-size rehearsal on CPU: the paper's real configurations (configs/imagewoof.yaml, configs/sample.yaml: DiT-XL/2
at 256 px, SD-VAE latents 4x32x32, memories of 64 x 4096) through all three tools with random weights and real file
formats, a handful of steps each. Every stage is a separate process (its wall time and peak RSS are measured from
os.wait4), every tool is the real command line.

  1. make      OUT/weights: DiT-XL-2-256x256.pt (original layout: a plain state dict, the original key names and
               shapes), sd-vae-ft-ema/ (diffusers AutoencoderKL from the published config, save_pretrained),
               resnet18-teacher.pt (torchvision ResNet-18, 1,000 classes); OUT/imagewoof/{train,val}: the 10
               ImageWoof wnids, JPEGs of varied sizes, some non-square, grayscale and CMYK.
  2. finetune  train_minimax.py --config configs/imagewoof.yaml (batch 2, STEPS steps, eager latent cache at 256 px
               with the SD-VAE encoder) uninterrupted, and again killed (SIGKILL) after the checkpoint of step 1 and
               resumed: every tensor of the two final checkpoints must be identical.
  3. sample    sample.py --config configs/sample.yaml (DiT-XL/2 + SD-VAE decoder, CFG 4 on 3 channels, learned
               sigma) IPC 2 of 2 classes (--phase 0 --phase_size 2), with and without --guidance mode.
  4. evaluate  evaluate.py IDC with convnet6, resnetap10, resnet18 at 224 px, and --protocol rded (ResNet-18 student,
               the teacher file of step 1), 1 epoch each.
  5. OUT/report.json and OUT/REPORT.md.

    bash scripts/rehearse.sh OUT [--threads 2] [--steps 2] [--sample_steps 2]
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.config import check_output  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_write_json, atomic_write_text  # noqa: E402

DIT_FILE = "DiT-XL-2-256x256.pt"
# stabilityai/sd-vae-ft-ema's config.json (published values); sd-vae-ft-mse has the same architecture
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                     up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                     layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256)
TRAIN_PER_CLASS = (2, 2, 1, 1, 1, 1, 1, 1, 1, 1)  # the 2 sampled classes need >= IPC images for the modes
# README's projection of a checkpoint: the Difffit parameters, their EMA and AdamW's two moments (1,739,552 x 4 values
# x 4 bytes) plus both memories (2 x classes x 64 x 4096 x 4 bytes at float32)
DIFFFIT_PARAMS = 1_739_552
SAMPLE_CLASSES = 2
IPC = 2
# what the rehearsal changes in the real configs, and why (everything else is configs/*.yaml as it is)
CHANGES = {
    "train": "batch_size 2, max_steps 1 + STEPS (memories pre-filled after step 1), ckpt_every 1, log_every 1, num_workers 0, device cpu, progress off: "
             "short on 2 cores; paths to the generated data and weights",
    "sample": "ipc 2 of 2 classes (phase 0, phase_size 2), num_steps SAMPLE_STEPS, batch_size and micro_batch 4 "
              "(a micro-batch of 32 would pad 4 images to 32 model inputs), mode_stop 0 (the default, half of "
              "num_steps, would leave no guided step at SAMPLE_STEPS steps), device cpu, grid off",
    "evaluate": "epochs 1, repeat 1, subset custom over the 2 sampled classes, device cpu; rded: teacher_weights "
                "the random ResNet-18 file, teacher_subset true (a 1,000-class teacher on 2 classes)",
    "cuda_only": "none of the configs' settings needs CUDA: bf16, tf32 and compile are off in the defaults and "
                 "tf32 acts only on CUDA",
}


#### stage 1: weights and data ##################################################################################

def random_dit_state(name="DiT-XL/2", input_size=32, seed=0, in_channels=4):
    """A DiT's state dict with random weights in the original DiT-XL-2-256x256.pt layout (the original key names and
    shapes), built on the meta device and filled with seeded uniform noise (no slow init; every weight non-zero,
    so no zero-init layer makes the output trivial); pos_embed is the fixed sin-cos table, as in the original."""
    import torch
    from models.dit import DiT_models, sincos_pos_embed_2d
    with torch.device("meta"):
        model = DiT_models[name](input_size=input_size, in_channels=in_channels, num_classes=1000)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in model.state_dict().items():
        if key == "pos_embed":
            state[key] = torch.from_numpy(sincos_pos_embed_2d(t.shape[-1], int(t.shape[1] ** 0.5))).float()[None]
            continue
        fan_in = t[0].numel() if t.ndim > 1 else 1
        bound = (3 / fan_in) ** 0.5 if t.ndim > 1 else 0.02  # unit-variance activations; small biases
        if "embedding_table" in key:
            bound = 0.05
        state[key] = torch.empty(t.shape).uniform_(-bound, bound, generator=g)
    return state


def make_dit(path, seed=0):
    import torch
    state = random_dit_state("DiT-XL/2", 32, seed)
    torch.save(state, path)
    return sum(v.numel() for v in state.values())


def make_vae(folder, seed=0):
    import torch
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(folder)


def make_teacher(path, seed=0):
    import torch
    import torchvision
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)


def make_images(root, wnids, per_class, seed):
    """JPEGs of varied sizes per class; every third one non-square, every fourth grayscale, every fifth CMYK."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    k = 0
    for w, n in zip(wnids, per_class):
        os.makedirs(os.path.join(root, w), exist_ok=True)
        for i in range(n):
            h = int(rng.integers(200, 420))
            wd = h if k % 3 else int(h * rng.uniform(1.3, 1.8))
            arr = rng.integers(0, 256, (h // 8, wd // 8, 3), dtype=np.uint8)  # smooth-ish: upscaled noise
            img = Image.fromarray(arr).resize((wd, h), Image.BILINEAR)
            img = img.convert("L") if k % 4 == 1 else img.convert("CMYK") if k % 5 == 2 else img
            img.save(os.path.join(root, w, f"{w}_{i}.JPEG"), quality=90)
            k += 1


def make_all(out):
    import torch
    torch.manual_seed(0)
    from data.subsets import get_subset
    wdir = os.path.join(out, "weights")
    os.makedirs(wdir, exist_ok=True)
    n = make_dit(os.path.join(wdir, DIT_FILE))
    make_vae(os.path.join(wdir, "sd-vae-ft-ema"))
    make_teacher(os.path.join(wdir, "resnet18-teacher.pt"))
    wnids = get_subset("imagewoof").wnids
    make_images(os.path.join(out, "imagewoof", "train"), wnids, TRAIN_PER_CLASS, seed=1)
    make_images(os.path.join(out, "imagewoof", "val"), wnids, (1,) * len(wnids), seed=2)
    # evaluation: the val images of the sampled classes (evaluate.py's custom subset wants the same classes)
    for w in wnids[:SAMPLE_CLASSES]:
        os.makedirs(os.path.join(out, "eval_val"), exist_ok=True)
        shutil.copytree(os.path.join(out, "imagewoof", "val", w), os.path.join(out, "eval_val", w))
    print(json.dumps({"dit_parameters": n}))


#### stages 2-4: the tools, one process each #####################################################################

def prefill(ckpt_path, cache_root, seed=0):
    """Fill every class's real and predicted memory (64 x 4096) of a training checkpoint, so the minimax terms act at
    full size from the next step: real = draws mean + std * eps (x 0.18215) of the class's cached latents (its
    images and their mirrors, as training draws them), pred = those plus N(0, 0.5^2) (stand-ins for earlier
    predictions); the ring is full (count 64, write pointer 0)."""
    import numpy as np
    import torch
    from utils.io import atomic_torch_save
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    wnids = ckpt["criterion"][0]["num_classes"]
    for d in sorted(os.listdir(cache_root)):  # the fine-tuning cache: the subset's classes, this run's train dir
        meta_path = os.path.join(cache_root, d, "meta.json")
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            if len(meta["subset"]["wnids"]) == wnids and meta["source_root"] == ckpt["config"]["data_dir"]:
                folder, scale = os.path.join(cache_root, d), meta["scale"]
                break
    else:
        raise UserError(f"no latent cache of {ckpt['config']['data_dir']} in {cache_root}")
    mean, std = (torch.from_numpy(np.load(os.path.join(folder, f"{k}.npy")).astype(np.float32)) for k in ("mean", "std"))
    labels = torch.from_numpy(np.load(os.path.join(folder, "labels.npy")))
    g = torch.Generator().manual_seed(seed)
    for crit in ckpt["criterion"]:
        k, n = crit["capacity"], crit["num_classes"]
        for c in range(n):
            m, s = mean[labels == c].flatten(0, 1), std[labels == c].flatten(0, 1)  # (2 x images, 4, 32, 32)
            pick = torch.randint(0, len(m), (k,), generator=g)
            real = (m[pick] + s[pick] * torch.randn(m[pick].shape, generator=g)) * scale
            crit["real"][c] = real.flatten(1).to(crit["real"].dtype)
            crit["pred"][c] = (real + 0.5 * torch.randn(real.shape, generator=g)).flatten(1).to(crit["pred"].dtype)
        crit["count"][:] = k
        crit["ptr"][:] = 0
    atomic_torch_save(ckpt, ckpt_path)
    print(json.dumps({"prefilled": ckpt_path, "classes": n, "entries": k}))


def run_stage(name, argv, log, threads):
    """Run argv as a child process; -> {"stage", "cmd", "seconds", "peak_rss_mb", "rc"} (RSS from os.wait4)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = " ".join(shlex.quote(a) for a in argv)
    print(f"[rehearse] {name}: {cmd}", flush=True)
    with open(log, "a") as f:
        f.write(f"\n$ {cmd}\n")
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    rec = {"stage": name, "cmd": cmd, "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024), "rc": proc.returncode}
    print(f"[rehearse] {name}: {rec['seconds']} s, peak RSS {rec['peak_rss_mb']} MB, exit {rec['rc']}", flush=True)
    return rec


def compare_checkpoints(a, b):
    """Names of the tensors that differ between two training checkpoints (every tensor, nested)."""
    import torch
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    bad = []

    def walk(x, y, where):
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)):
                bad.append(where)
        elif isinstance(x, dict):
            if not isinstance(y, dict) or set(x) != set(y):
                bad.append(where)
                return
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            if not isinstance(y, (list, tuple)) or len(x) != len(y):
                bad.append(where)
                return
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")

    skip = {"config", "run_info", "info", "time", "created"}
    for k in ca:
        if k not in skip:
            walk(ca[k], cb.get(k), k)
    return bad


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def png_sizes(folder):
    from PIL import Image
    sizes, n = set(), 0
    for d in sorted(os.listdir(folder)):
        p = os.path.join(folder, d)
        if os.path.isdir(p):
            for f in os.listdir(p):
                if f.endswith(".png"):
                    with Image.open(os.path.join(p, f)) as im:
                        sizes.add(im.size)
                    n += 1
    return n, sorted(sizes)


def rehearse(out, threads, steps, sample_steps, resume=False):
    out = os.path.abspath(out)
    if os.path.commonpath([out, ROOT]) == ROOT:
        raise UserError(f"OUT {out} is inside the repository; choose a folder outside it (e.g. /tmp/rehearsal)")
    check_output(out, "OUT")
    done = {}
    if resume and os.path.isfile(os.path.join(out, "stages.jsonl")):
        with open(os.path.join(out, "stages.jsonl")) as f:
            done = {r["stage"]: r for r in map(json.loads, f) if r["rc"] == (-9 if r["stage"] == "finetune-kill"
                                                                               else 0)}
    elif os.path.isdir(out) and os.listdir(out):
        raise UserError(f"OUT {out} is not empty; pass a new or empty folder (or --continue a rehearsal there)")
    if not done and shutil.disk_usage(os.path.dirname(out) if not os.path.isdir(out) else out).free < 8 << 30:
        raise UserError(f"OUT {out} has less than 8 GB free (the rehearsal writes ~4 GB); choose another disk")
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "rehearse.log")
    py = sys.executable
    w = os.path.join(out, "weights")
    dit, vae, teacher = os.path.join(w, DIT_FILE), os.path.join(w, "sd-vae-ft-ema"), os.path.join(w, "resnet18-teacher.pt")
    train_dir, cache = os.path.join(out, "imagewoof", "train"), os.path.join(out, "cache")
    stages, t_all = [], time.perf_counter()

    def stage(name, argv):
        if name in done:  # --continue: finished in an earlier invocation (its record is kept)
            print(f"[rehearse] {name}: done earlier ({done[name]['seconds']} s)", flush=True)
            stages.append(done[name])
            return done[name]
        rec = run_stage(name, argv, log, threads)
        stages.append(rec)
        with open(os.path.join(out, "stages.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    def must(rec):
        if rec["rc"] != 0:
            raise UserError(f"rehearsal stage {rec['stage']} failed (exit {rec['rc']}); see {log}")

    must(stage("make", [py, os.path.abspath(__file__), "--make", out]))

    #### fine-tuning: step 1, memories pre-filled to 64, then steps 2..STEPS+1 uninterrupted (A) and killed after
    #### step 2 + resumed (B); every tensor of A's and B's final checkpoints must be identical
    train = [py, "train_minimax.py", "--config", "configs/imagewoof.yaml", "--base", dit, "--vae", vae,
             "--data_dir", train_dir, "--cache_dir", cache, "--batch_size", "2", "--ckpt_every", "1",
             "--log_every", "1", "--num_workers", "0", "--device", "cpu", "--progress", "false"]
    run_a, run_b = os.path.join(out, "finetune"), os.path.join(out, "finetune-killed")
    last = str(steps + 1)
    must(stage("finetune-step1", train + ["--run_dir", run_a, "--max_steps", "1"]))
    must(stage("prefill", [py, os.path.abspath(__file__), "--prefill", cache, os.path.join(run_a, "checkpoint.pt")]))
    if not os.path.isdir(run_b):
        shutil.copytree(run_a, run_b)
    must(stage("finetune", train + ["--run_dir", run_a, "--max_steps", last]))
    killed = stage("finetune-kill", train + ["--run_dir", run_b, "--max_steps", last, "--debug_kill_step", "2"])
    if killed["rc"] != -9:
        raise UserError(f"the fine-tune meant to be killed after step 2 exited with {killed['rc']}; see {log}")
    must(stage("finetune-resume", train + ["--run_dir", run_b, "--max_steps", last]))
    differing = compare_checkpoints(os.path.join(run_a, "checkpoint.pt"), os.path.join(run_b, "checkpoint.pt"))

    #### sampling at 256 px, IPC 2 of 2 classes, without and with mode guidance
    sample = [py, "sample.py", "--config", "configs/sample.yaml", "--ckpt", os.path.join(run_a, "checkpoint.pt"),
              "--base", dit, "--vae", vae, "--ipc", str(IPC), "--phase", "0", "--phase_size", str(SAMPLE_CLASSES),
              "--num_steps", str(sample_steps), "--batch_size", "4", "--micro_batch", "4", "--device", "cpu",
              "--grid", "0", "--progress", "false"]
    s_plain, s_mode = os.path.join(out, "samples", "minimax"), os.path.join(out, "samples", "minimax-mode")
    must(stage("sample", sample + ["--out", s_plain]))
    must(stage("sample-mode", sample + ["--out", s_mode, "--guidance", "mode", "--mode_stop", "0",
                                        "--train_dir", train_dir, "--cache_dir", cache, "--modes_vae", vae]))

    #### evaluation at 224 px: IDC with the three networks, RDED with a ResNet-18 teacher
    results = os.path.join(out, "eval", "results.jsonl")
    ev = [py, "evaluate.py", "--train", s_plain, "--val", os.path.join(out, "eval_val"), "--ipc", str(IPC),
          "--epochs", "1", "--repeat", "1", "--device", "cpu", "--results", results, "--method", "minimax"]
    must(stage("evaluate-idc", ev + ["--arch", "convnet6,resnetap10,resnet18"]))
    must(stage("evaluate-rded", ev + ["--protocol", "rded", "--arch", "resnet18", "--teacher", "resnet18",
                                      "--teacher_weights", teacher, "--teacher_subset", "true"]))
    wall = time.perf_counter() - t_all + sum(r["seconds"] for r in done.values())
    return summarise(out, stages, wall, differing, steps, sample_steps, threads)


#### report ######################################################################################################

def summarise(out, stages, wall, differing, steps, sample_steps, threads):
    import diffusers
    import torch
    run_a, results = os.path.join(out, "finetune"), os.path.join(out, "eval", "results.jsonl")
    s_plain, s_mode = os.path.join(out, "samples", "minimax"), os.path.join(out, "samples", "minimax-mode")
    ckpt = torch.load(os.path.join(run_a, "checkpoint.pt"), map_location="cpu", weights_only=True)
    base = torch.load(os.path.join(out, "weights", DIT_FILE), map_location="cpu", weights_only=True, mmap=True)
    dit_params = sum(v.numel() for v in base.values())
    log = read_jsonl(os.path.join(run_a, "log.jsonl"))
    ckpt_bytes = os.path.getsize(os.path.join(run_a, "checkpoint.pt"))
    caches = {}  # cache folder -> (bytes, items): the fine-tuning cache, and the one sample-mode builds
    for d in sorted(os.listdir(os.path.join(out, "cache"))):
        meta = os.path.join(out, "cache", d, "meta.json")
        if os.path.isfile(meta):
            with open(meta) as f:
                items = json.load(f)["num_items"]
            size = sum(os.path.getsize(os.path.join(out, "cache", d, f)) for f in os.listdir(os.path.join(out,
                                                                                                       "cache", d)))
            caches[d] = {"bytes": size, "images": items, "bytes_per_image": round(size / items)}
    records = read_jsonl(results)
    manifests = {}
    for name, d in (("plain", s_plain), ("mode", s_mode)):
        with open(os.path.join(d, "manifest.json")) as f:
            m = json.load(f)
        n, sizes = png_sizes(d)
        manifests[name] = {"pngs": n, "png_sizes": sizes, "manifest_complete": m.get("complete"),
                           "manifest_seeds": sum(len(v) for v in m.get("seeds", {}).values()),
                           "guidance": (m.get("pixels") or {}).get("guidance")}
    report = {
        "wall_seconds": round(wall, 1), "threads": threads, "load_average_end": round(os.getloadavg()[0], 2),
        "stages": stages,
        "dit_parameters": dit_params, "trainable_parameters": sum(v.numel() for v in ckpt["params"].values()),
        "finetune_steps": steps, "resume_identical": not differing, "resume_differing_tensors": differing[:20],
        "log_last": log[-1] if log else None,
        "checkpoint_bytes": ckpt_bytes,
        "readme_projection_bytes": DIFFFIT_PARAMS * 4 * 4 + 2 * sum(c["real"].numel() * 4 for c in ckpt["criterion"]),
        "latent_caches": caches,
        "memory_count_per_class": ckpt["criterion"][0]["count"].tolist(),
        "minimax_terms": [{k: rec.get(k) for k in ("step", "loss_r", "loss_d", "mem_fill", "cos_real_min",
                                                   "cos_pred_max")} for rec in log],
        "samples": manifests, "sample_steps": sample_steps,
        "evaluation_records": [{"protocol": r.get("eval_protocol"), "arch": r.get("arch"), "kind": r.get("kind"),
                                "best": r.get("best"), "keys": sorted(r)} for r in records],
        "changed_settings": {k: v.replace("SAMPLE_STEPS", str(sample_steps)).replace("STEPS", str(steps))
                             for k, v in CHANGES.items()},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": sys.version.split()[0]},
    }
    atomic_write_json(os.path.join(out, "report.json"), report)
    atomic_write_text(os.path.join(out, "REPORT.md"), markdown(report))
    return report


def markdown(r):
    lines = ["# Full-size rehearsal (DiT-XL/2, SD-VAE, 256 px, random weights)", "",
             f"Wall time {r['wall_seconds']} s on {r['threads']} threads (load average at the end "
             f"{r['load_average_end']}); torch {r['versions']['torch']}, diffusers {r['versions']['diffusers']}.",
             "", "| stage | seconds | peak RSS MB | exit |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['seconds']} | {s['peak_rss_mb']} | {s['rc']} |" for s in r["stages"]]
    lines += ["", f"- DiT-XL/2 parameters: {r['dit_parameters']:,}; trainable (Difffit): "
              f"{r['trainable_parameters']:,}" if r["trainable_parameters"] else "",
              f"- fine-tune: 1 step at batch 2, memories pre-filled (64 per class), {r['finetune_steps']} more steps; "
              f"kill -9 after step 2 and resume: "
              f"{'identical tensors' if r['resume_identical'] else 'DIFFERENT: ' + ', '.join(r['resume_differing_tensors'])}",
              f"- checkpoint {r['checkpoint_bytes']:,} bytes; README's projection {r['readme_projection_bytes']:,} "
              f"(Difffit parameters, EMA, AdamW moments, both memories at float32)",
              "- latent caches: " + "; ".join(f"{v['images']} images, {v['bytes']:,} bytes, {v['bytes_per_image']:,} "
                                              f"per image (an image and its mirror)" for v in r["latent_caches"].values()),
              "- minimax terms per step (memories pre-filled after step 1): " + "; ".join(
                  f"step {m['step']}: L_r {m['loss_r']:.2e}, L_d {m['loss_d']:.2e}, fill {m['mem_fill']}"
                  for m in r["minimax_terms"]),
              "- samples: " + "; ".join(f"{k}: {v['pngs']} PNGs {v['png_sizes']}, manifest complete "
                                       f"{v['manifest_complete']} ({v['manifest_seeds']} seeds)"
                                       for k, v in r["samples"].items()),
              "- evaluation records (run records, 1 epoch, top-1 of random weights: no meaning): " + "; ".join(
                  f"{e['protocol']} {e['arch']} best {e['best']}" for e in r["evaluation_records"] if e["kind"] == "run"),
              "- keys of a run record: " + ", ".join(next((e["keys"] for e in r["evaluation_records"]
                                                          if e["kind"] == "run"), [])),
              "", "Settings changed from the real configs, and why:", ""]
    lines += [f"- {k}: {v}" for k, v in r["changed_settings"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="output folder (new or empty, outside the repository)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per stage process")
    p.add_argument("--steps", type=int, default=2, help="fine-tuning steps after the memories are pre-filled (the kill comes after the first)")
    p.add_argument("--sample_steps", type=int, default=2, help="sampling steps")
    p.add_argument("--make", action="store_true", help=argparse.SUPPRESS)  # stage 1, run as its own process
    p.add_argument("--prefill", metavar="CACHE", help=argparse.SUPPRESS)  # out = checkpoint, its own process
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="continue a rehearsal in OUT: stages recorded as finished in OUT/stages.jsonl are skipped")
    p.add_argument("--report_only", action="store_true", help="rewrite OUT/report.json and REPORT.md from OUT's files")
    a = p.parse_args(argv)
    if a.prefill:
        return prefill(a.out, a.prefill)
    if a.report_only:  # rewrite the report of a finished rehearsal from its files
        with open(os.path.join(a.out, "stages.jsonl")) as f:
            stages = [json.loads(line) for line in f]
        differing = compare_checkpoints(*(os.path.join(a.out, d, "checkpoint.pt")
                                          for d in ("finetune", "finetune-killed")))
        return print(markdown(summarise(a.out, stages, sum(x["seconds"] for x in stages), differing, a.steps,
                                        a.sample_steps, a.threads)))
    if a.make:
        import torch
        torch.set_num_threads(a.threads)
        return make_all(a.out)
    if a.steps < 1 or a.sample_steps < 2 or a.threads < 1:
        raise UserError("--steps and --sample_steps must be >= 2 and --threads >= 1")
    r = rehearse(a.out, a.threads, a.steps, a.sample_steps, resume=a.resume)
    print(markdown(r))
    ok = r["resume_identical"] and all(v["png_sizes"] == [(256, 256)] for v in r["samples"].values())
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
