"""Evaluate a (distilled) image folder: train networks from scratch on it (IDC protocol, or RDED's soft labels).

    python evaluate.py --train results/samples/imagewoof --val /data/imagenet/val --subset imagewoof \
        --arch convnet6,resnetap10,resnet18 --ipc 10 --repeat 3
    python evaluate.py --train /data/imagenet/train --val /data/imagenet/val --subset imagewoof --select herding --ipc 10
    python evaluate.py --train results/samples/imagewoof --mmd_real /data/imagenet/train --val ... --arch none --ipc 50
    python evaluate.py --protocol rded --train distilled/imagenet1k --val /data/imagenet/val --subset imagenet1k \
        --ipc 10 --repeat 3 --method minimax            # paper Table 4: ResNet-18 student, ResNet-18 teacher
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engines.evaluate import main  # noqa: E402
from utils.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
