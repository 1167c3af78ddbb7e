"""Evaluate a (distilled) image folder with the IDC protocol: train ConvNet-6 / ResNetAP-10 / ResNet-18 from scratch.

    python evaluate.py --train results/samples/imagewoof --val /data/imagenet/val --subset imagewoof \
        --arch convnet6,resnetap10,resnet18 --ipc 10 --repeat 3
    python evaluate.py --train /data/imagenet/train --val /data/imagenet/val --subset imagewoof --select herding --ipc 10
    python evaluate.py --train results/samples/imagewoof --mmd_real /data/imagenet/train --val ... --arch none --ipc 50
"""
import os

from data.subsets import subset_names
from utils.config import Key, check_device, check_output, parse_config
from utils.errors import UserError, run_cli

# key -> Key(default, allowed values, help): parsing, --help and validation come from here (before torch loads).
# configs/evaluate.yaml spells out the same defaults (tests/test_schema.py proves it).
CONFIG = {
    "train": Key(None, type="str", path="dir", required=True,
                 help="train folder <class>/<image>: a distilled set, or a real train dir (ImageNet train is fine)"),
    "val": Key(None, type="str", path="dir", required=True,
               help="val folder <class>/<image>, aligned to the train classes by folder name (wnid)"),
    "subset": Key("custom", choices=(*subset_names(), "custom"),
                  help="class list: imagewoof, imagenette, imageidc, imagenet100, ... or custom (train dir's "
                       "folders)"),
    "arch": Key(["resnetap10"], type="list", items="str", choices=("convnet6", "resnetap10", "resnet18", "none"),
                help="comma list of convnet6, resnetap10, resnet18 ('none': only MMD)"),
    "ipc": Key(None, type="int", lo=1, null=True,
               help="images per class: files 0..K-1 in numeric order (None: all); pick size for --select"),
    "select": Key("none", choices=("none", "random", "herding", "kcenter", "full"),
                  help="none (the folder as is), random|herding|kcenter (coreset of the real train dir), full"),
    "repeat": Key(3, lo=1, help="training runs per arch; run r uses seed + r"),
    "seed": Key(0, lo=0, hi=2 ** 31 - 1, help="base seed (model init, augmentation, CutMix, random selection)"),
    # lo 8: the smallest side all three networks run at (ResNetAP-10 pools its input 3 times; 4 and 7 px fail)
    "image_size": Key(224, lo=8,
                      help="training/test resolution (Resize + CenterCrop at load, RandomResizedCrop per sample)"),
    "epochs": Key(None, type="int", lo=1, null=True,
                  help="None: by IPC (10: 2000, 20-50: 1500, 70-200: 1000; >= 100 classes x2/3)"),
    "batch_size": Key(64, lo=1, help="SGD batch size"),
    "test_batch_size": Key(256, lo=1, help="batch size for testing and feature extraction"),
    "lr": Key(None, type="float", gt=0, null=True, help="None: 0.01 (0.1 above 100 classes)"),
    "momentum": Key(0.9, lo=0, lt=1, help="SGD momentum"),
    "weight_decay": Key(None, type="float", lo=0, null=True, help="None: 5e-4 (1e-4 above 100 classes)"),
    "eval_every": Key(None, type="int", lo=1, null=True,
                      help="test every N epochs (None: epochs // 100); the last epoch is always tested"),
    "depth": Key(None, type="int", lo=1, null=True,
                 help="convnet6 pooling depth (None: 6 at >= 192 px, fewer for small images)"),
    "device": Key("auto", type="str", help="auto (cuda if available), cpu, cuda, cuda:1"),
    "amp": Key("none", choices=("none", "bf16", "auto"),
               help="none: fp32 as the authors (TF32 convolutions on CUDA, PyTorch's default); bf16: autocast, ~2x "
                    "faster on GPU; auto: bf16 on CUDA, fp32 on CPU"),
    "data_path": Key("gpu", choices=("gpu", "pil"),
                     help="gpu: uint8 data on the device, batched augmentation; pil: the authors' DataLoader path"),
    "workers": Key(2, lo=0, help="decoding threads; DataLoader workers on the pil path"),
    "compile": Key(False, "torch.compile the classifier (CUDA, long runs)"),
    "results": Key(None, type="str", path="out", null=True,
                   help="results JSONL path or folder (None: results/eval/<subset or train-dir "
                        "name>/results.jsonl)"),
    "mmd_real": Key(None, type="str", path="dir", null=True,
                    help="real train dir: also report the feature MMD of --train to it (paper Table 2)"),
    "feature_arch": Key("resnetap10", choices=("convnet6", "resnetap10", "resnet18"),
                        help="network trained on the full real set for herding / k-center / MMD features"),
    "feature_epochs": Key(None, type="int", lo=1, null=True,
                          help="epochs for that network (None: the IPC rule for the full set)"),
    "width": Key(None, type="int", lo=1, null=True,
                 help="convnet6 channels (None: 128, the protocol's); narrower only for quick CPU demos"),
    "method": Key(None, type="str", null=True,
                  help="tag stored in every result record (minimax, dit, random, ...) that scripts/tables.py "
                       "groups by; None: the --select mode, else the train folder's name"),
}


CORESETS = ("random", "herding", "kcenter")


def check_config(cfg):
    """Checks across keys, after the per-key schema and before torch or any image is loaded."""
    if cfg["select"] in CORESETS and cfg["ipc"] is None:
        raise UserError(f"select {cfg['select']} needs --ipc K (images per class to pick from the real train set)")
    if cfg["select"] == "full" and cfg["ipc"] is not None:
        raise UserError("select full trains on every image; drop --ipc (or use --select random --ipc K)")
    if cfg["mmd_real"] and cfg["select"] != "none":
        raise UserError("mmd_real measures a distilled folder (select none); run coreset baselines separately")
    if cfg["depth"] is not None and cfg["image_size"] >> cfg["depth"] < 1:
        raise UserError(f"convnet depth {cfg['depth']} pools a {cfg['image_size']}px image to nothing; use a "
                        f"smaller --depth (or leave it unset)")
    from data.eval_results import results_path  # light: no torch
    name = cfg["subset"] if cfg["subset"] != "custom" else os.path.basename(os.path.abspath(cfg["train"]))
    out = results_path(cfg["results"], name)
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out) or (os.path.exists(folder) and not os.path.isdir(folder)):
        raise UserError(f"--results {cfg['results']}: {out} would be written there, but "
                        f"{out if os.path.isdir(out) else folder} is in the way; pass a folder or a .jsonl path")
    check_output(folder, "--results folder")
    check_device(cfg["device"])
    return cfg


def main(argv=None):
    cfg = parse_config(CONFIG, argv, description=__doc__.splitlines()[0], prog="evaluate.py", section="evaluate")
    check_config(cfg)
    from evaluation import run_evaluation  # torch: only after the config is known to be valid
    summary = run_evaluation(**cfg, config=dict(cfg))
    for arch, s in summary.items():
        if arch != "mmd":
            print(f"{arch}: best {s['best_mean']:.2f} ± {s['best_std']:.2f}  last {s['last_mean']:.2f} ± "
                  f"{s['last_std']:.2f}  (n={s['n_runs']})")


if __name__ == "__main__":
    run_cli(main)
