"""Evaluate a (distilled) image folder with the IDC protocol: train ConvNet-6 / ResNetAP-10 / ResNet-18 from scratch.

    python evaluate.py --train results/samples/imagewoof --val /data/imagenet/val --subset imagewoof \
        --arch convnet6,resnetap10,resnet18 --ipc 10 --repeat 3
    python evaluate.py --train /data/imagenet/train --val /data/imagenet/val --subset imagewoof --select herding --ipc 10
    python evaluate.py --train results/samples/imagewoof --mmd_real /data/imagenet/train --val ... --arch none --ipc 50
"""
from models.evaluation import run_evaluation
from utils.config import Key, parse_config
from utils.errors import UserError, run_cli

CONFIG = {
    "train": (None, "train folder <class>/<image>: a distilled set, or a real train dir (ImageNet train is fine)"),
    "val": (None, "val folder <class>/<image>, aligned to the train classes by folder name (wnid)"),
    "subset": ("custom", "class list: imagewoof, imagenette, imageidc, imagenet100, ... or custom (train dir's folders)"),
    "arch": ("resnetap10", "comma list of convnet6, resnetap10, resnet18 ('none': only MMD)"),
    "ipc": (None, "images per class: files 0..K-1 in numeric order (None: all); pick size for --select"),
    "select": ("none", "none (the folder as is), random|herding|kcenter (coreset of the real train dir), full"),
    "repeat": (3, "training runs per arch; run r uses seed + r"),
    "seed": (0, "base seed (model init, augmentation, CutMix, random selection)"),
    "image_size": (224, "training/test resolution (Resize + CenterCrop at load, RandomResizedCrop per sample)"),
    "epochs": (None, "None: by IPC (10: 2000, 20-50: 1500, 70-200: 1000; >= 100 classes x2/3)"),
    "batch_size": (64, "SGD batch size"),
    "test_batch_size": (256, "batch size for testing and feature extraction"),
    "lr": (None, "None: 0.01 (0.1 above 100 classes)"),
    "momentum": (0.9, "SGD momentum"),
    "weight_decay": (None, "None: 5e-4 (1e-4 above 100 classes)"),
    "eval_every": (None, "test every N epochs (None: epochs // 100); the last epoch is always tested"),
    "depth": (None, "convnet6 pooling depth (None: 6 at >= 192 px, fewer for small images)"),
    "device": ("auto", "auto (cuda if available), cpu, cuda, cuda:1"),
    "amp": ("none", "none: fp32 as the authors (TF32 convolutions on CUDA, PyTorch's default); bf16: autocast, "
                    "~2x faster on GPU; auto: bf16 on CUDA, fp32 on CPU"),
    "data_path": ("gpu", "gpu: uint8 data on the device, batched augmentation; pil: the authors' DataLoader path"),
    "workers": (2, "decoding threads; DataLoader workers on the pil path"),
    "compile": (False, "torch.compile the classifier (CUDA, long runs)"),
    "results": (None, "results JSONL path or folder (None: results/eval/<subset or train-dir name>/results.jsonl)"),
    "mmd_real": (None, "real train dir: also report the feature MMD (paper Table 2), representativeness and "
                       "diversity of the set trained on (folder or --select coreset) against it"),
    "feature_arch": ("resnetap10", "network trained on the full real set for herding / k-center / MMD features"),
    "feature_epochs": (None, "epochs for that network (None: the IPC rule for the full set)"),
    "feature_seed": Key(0, "seed of that network (one network per real set, whatever --seed the runs use)",
                        type="int", lo=0),
    "width": (None, "convnet6 channels (None: 128, the protocol's); narrower only for quick CPU demos"),
    "method": (None, "tag stored in every result record (minimax, dit, random, ...) that scripts/tables.py groups "
                     "by; None: the --select mode, else the train folder's name"),
}


def main(argv=None):
    cfg = parse_config(CONFIG, argv, description=__doc__.splitlines()[0], prog="evaluate.py", section="evaluate")
    for key in ("train", "val"):
        if not cfg[key]:
            raise UserError(f"--{key} is required (a folder with one sub-folder of images per class)")
    for key in ("ipc", "epochs", "eval_every", "depth", "feature_epochs", "width"):
        if cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 1):
            raise UserError(f"--{key} must be a positive integer, got {cfg[key]!r}")
    for key in ("lr", "weight_decay"):
        if cfg[key] is not None and not isinstance(cfg[key], (int, float)):
            raise UserError(f"--{key} must be a number, got {cfg[key]!r}")
    summary = run_evaluation(**cfg, config=dict(cfg))
    for arch, s in summary.items():
        if arch != "mmd":
            print(f"{arch}: best {s['best_mean']:.2f} ± {s['best_std']:.2f}  last {s['last_mean']:.2f} ± "
                  f"{s['last_std']:.2f}  (n={s['n_runs']})")


if __name__ == "__main__":
    run_cli(main)
