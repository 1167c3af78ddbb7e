"""Minimax fine-tuning of a pretrained DiT (Gu et al., CVPR 2024), or base training of a tiny DiT for demos.

  python train_minimax.py --config configs/train_default.yaml --data_dir /data/imagenet/train --run_dir results/woof
  torchrun --nproc_per_node=4 train_minimax.py --config configs/train_default.yaml --data_dir ...   # DDP
  python train_minimax.py --config configs/tiny.yaml --data_dir ... --run_dir ...                  # CPU smoke test

Every key of engines/train/schema.py can be set in YAML (--config, repeatable) or as --key value. The run dir gets
config.yaml, log.jsonl and checkpoint.pt (adapter weights + EMA + optimiser + memories + RNG; rerunning the same
command resumes it exactly). Sample with the EMA weights: load_dit("<run_dir>/checkpoint.pt").
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engines.train import main  # noqa: E402
from utils.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
