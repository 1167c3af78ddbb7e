"""The README's example figures (docs/figures/*.png), made by the project's own tools from the tiny reproduce plan
(tests/test_reproduce.py's setting): a generated ImageNet-layout tree of ImageWoof's 10 classes (16 px random
images, class-dependent brightness), a random DiT-T/2 fine-tuned 48 steps (N_M 8, a log record every 2 steps), IPC 1
and 2, ConvNet-6 of width 8 for 4 epochs, 3 repeats. The numbers are those of that toy, the figures show the layout, not the paper.

    python scripts/docs_figures.py [--work /tmp/docs_figures] [--out docs/figures]     (~5 CPU-minutes on 2 cores)

Steps: the tiny plan (scripts/imagewoof.sh with an override), the same with Table 5's off-off override and with a
lambda_r sweep point (configs/sweeps.md's naming), evaluate.py --confusion true on the minimax samples, sample.py
--class_grids true on the fine-tuned checkpoint, then scripts/figures.py; one figure of each kind is copied out.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OVERRIDE = """
train: {{base: {base}, vae: pixel, image_size: 16, batch_size: 5, epochs: 8, max_steps: 48, log_every: 2,
        memory_size: 8, cache_dir: {cache}, cache_dtype: float32, num_workers: 0, device: cpu, progress: false}}
sample: {{base: {base}, model: DiT-T/2, vae: pixel, image_size: 16, num_steps: 2, batch_size: 20, micro_batch: 20,
         device: cpu, progress: false, grid: 2}}
evaluate: {{image_size: 16, epochs: 4, eval_every: 1, depth: 2, width: 8, device: cpu, workers: 0, repeat: 1,
           feature_epochs: 1, batch_size: 16}}
reproduce: {{ipcs: [1, 2], archs: [convnet6], kcenter_ipcs: [1], kcenter_archs: [convnet6], sample_ipc: 2}}
"""
IPCS = "reproduce: {ipcs: [1, 2], sample_ipc: 2, archs: [convnet6]}\n"
SWEEP = "train: {lambda_r: 0.0005}\nreproduce: {method: lambda_r-0.0005, baselines: []}\n"
# figure kind -> file written by the tools (relative to the work folder)
PICKS = {"accuracy_vs_ipc.png": "out/figures/accuracy_vs_ipc-imagewoof-convnet6.png",
         "eval_curves.png": "out/figures/eval_curves-imagewoof-convnet6-ipc2.png",
         "finetune.png": "out/figures/finetune-finetune-minimax.png",
         "ablation.png": "out/figures/ablation-imagewoof-convnet6.png",
         "sweeps.png": "out/figures/sweeps-imagewoof-convnet6.png",
         "confusion.png": "confusion/confusion/minimax-none-ipc2-convnet6-seed0.png",
         "class_page.png": "pages_grids/n02086240.png"}


def make_tree(root):
    """imagenet/{train,val}/<wnid>/ for ImageWoof (3 train, 2 val images per class), a tiny 1000-class DiT."""
    import numpy as np
    import torch
    from PIL import Image

    from data.subsets import get_subset
    from models.dit import DiT_models
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for k, w in enumerate(get_subset("imagewoof").wnids):
            os.makedirs(os.path.join(root, "imagenet", split, w), exist_ok=True)
            for i in range(n):
                img = (rng.random((16, 16, 3)) * 60 + k * 19).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, "imagenet", split, w, f"img{i}.JPEG"), quality=95)
    torch.manual_seed(0)
    torch.save(DiT_models["DiT-T/2"](input_size=16, in_channels=3, num_classes=1000).state_dict(),
               os.path.join(root, "tiny_dit.pt"))


def sh(cmd, log):
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT,
                       env=dict(os.environ, NGPU="0", OMP_NUM_THREADS="1"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/docs_figures", help="scratch folder (rerun: finished steps are skipped)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "figures"), help="where the chosen PNGs go")
    args = p.parse_args(argv)
    w = os.path.abspath(args.work)
    log = os.path.join(w, "log.txt")
    if not os.path.isfile(os.path.join(w, "tiny_dit.pt")):
        make_tree(w)
    files = {"tiny.yaml": OVERRIDE.format(base=os.path.join(w, "tiny_dit.pt"), cache=os.path.join(w, "cache")),
             "ipcs.yaml": IPCS, "sweep.yaml": SWEEP}
    for name, text in files.items():
        with open(os.path.join(w, name), "w") as f:
            f.write(text)
    plan = ["bash", "scripts/imagewoof.sh", os.path.join(w, "imagenet"), os.path.join(w, "out"),
            "--config", os.path.join(w, "tiny.yaml")]
    sh(plan, log)
    sh(plan + ["--config", "configs/ablation/off-off.yaml", "--config", os.path.join(w, "ipcs.yaml")], log)
    sh(plan + ["--config", os.path.join(w, "sweep.yaml")], log)
    sh([sys.executable, "evaluate.py", "--config", os.path.join(w, "tiny.yaml"), "--train",
        os.path.join(w, "out", "samples", "minimax"), "--val", os.path.join(w, "imagenet", "val"), "--subset",
        "imagewoof", "--ipc", "2", "--arch", "convnet6", "--repeat", "1", "--method", "minimax", "--confusion",
        "true", "--results", os.path.join(w, "confusion")], log)
    sh([sys.executable, "sample.py", "--config", os.path.join(w, "tiny.yaml"), "--subset", "imagewoof", "--ckpt",
        os.path.join(w, "out", "finetune-minimax", "checkpoint.pt"), "--ipc", "9", "--class_grids", "true",
        "--grid", "0", "--out", os.path.join(w, "pages")], log)
    sh([sys.executable, "scripts/figures.py", os.path.join(w, "out"), "--out", os.path.join(w, "out", "figures")],
       log)
    os.makedirs(args.out, exist_ok=True)
    from PIL import Image
    for name, src in PICKS.items():  # a 256-colour palette: line plots look the same at a third of the bytes
        with Image.open(os.path.join(w, src)) as im:
            im.convert("RGB").quantize(256).save(os.path.join(args.out, name), optimize=True)
        print(f"{os.path.join(args.out, name)}: {os.path.getsize(os.path.join(args.out, name)) // 1024} KB")


if __name__ == "__main__":
    main()
