"""Sample an IPC image folder <out>/<wnid>/<i>.png from a (fine-tuned) DiT, as the Minimax authors do (SPEC §4),
batched, with per-image seeds, resumable, and sharded across GPUs under torchrun.

  python sample.py --config configs/sample.yaml --ckpt results/woof/checkpoint.pt --out results/samples/woof
  python sample.py --config configs/sample.yaml --ckpt none --out results/samples/woof-dit      # the "DiT" baseline
  torchrun --nproc_per_node=8 sample.py --config configs/sample.yaml --ckpt ... --out ...       # same images, faster
  python sample.py --config configs/sample.yaml --ckpt ... --guidance mode --train_dir /data/imagenet/train --ipc 10 \
      --out results/samples/woof-mode-ipc10       # MGD³ mode guidance: modes (k-means, k = ipc) from the latent cache

Rerunning the same command skips the images that exist; a larger --ipc adds images (IPC-10 = the first 10 of
IPC-100; not with --guidance mode, whose modes depend on the IPC: each IPC gets its own folder). manifest.json in
<out> records the config, weights identity, seeds and versions; <out>_grid.png previews.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engines.sample import main  # noqa: E402
from utils.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
