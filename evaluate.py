"""Evaluate a (distilled) image folder: train networks from scratch on it (IDC protocol, or RDED's soft labels).

    python evaluate.py --train results/samples/imagewoof --val /data/imagenet/val --subset imagewoof \
        --arch convnet6,resnetap10,resnet18 --ipc 10 --repeat 3
    python evaluate.py --train /data/imagenet/train --val /data/imagenet/val --subset imagewoof --select herding --ipc 10
    python evaluate.py --train results/samples/imagewoof --mmd_real /data/imagenet/train --val ... --arch none --ipc 50
    python evaluate.py --protocol rded --train distilled/imagenet1k --val /data/imagenet/val --subset imagenet1k \
        --ipc 10 --repeat 3 --method minimax            # paper Table 4: ResNet-18 student, ResNet-18 teacher
"""
from models.evaluation import run_evaluation
from utils.config import Key, parse_config
from utils.errors import UserError, run_cli

CONFIG = {
    "train": (None, "train folder <class>/<image>: a distilled set, or a real train dir (ImageNet train is fine)"),
    "val": (None, "val folder <class>/<image>, aligned to the train classes by folder name (wnid)"),
    "subset": ("custom", "class list: imagewoof, imagenette, imageidc, imagenet100, ... or custom (train dir's folders)"),
    "arch": (None, "comma list of convnet6, resnetap10, resnet18, resnet18_bn ('none': only MMD); None: resnetap10 "
                   "(idc), resnet18 (rded, where it is torchvision's BatchNorm ResNet-18 and resnet18_in the IDC one)"),
    "ipc": (None, "images per class: files 0..K-1 in numeric order (None: all); pick size for --select"),
    "select": ("none", "none (the folder as is), random|herding|kcenter (coreset of the real train dir), full"),
    "repeat": (3, "training runs per arch; run r uses seed + r"),
    "seed": (0, "base seed (model init, augmentation, CutMix, random selection)"),
    "image_size": (224, "training/test resolution (Resize + CenterCrop at load, RandomResizedCrop per sample)"),
    "epochs": (None, "None: idc by IPC (1: 3000, 10: 2000, 20-50: 1500, 70-200: 1000; 100 classes x2/3); rded 300"),
    "batch_size": (None, "None: idc 64 (128 above 100 classes); rded 100 below IPC 50, 200 from IPC 50"),
    "test_batch_size": (256, "batch size for testing and feature extraction"),
    "lr": (None, "None: idc 0.01 (0.1 above 100 classes); rded 1e-3 (AdamW)"),
    "momentum": (0.9, "SGD momentum"),
    "weight_decay": (None, "None: idc 5e-4 (1e-4 above 100 classes); rded 0.01 on ndim > 1 weights only"),
    "eval_every": (None, "test every N epochs (None: idc epochs // 100, rded 10); the last epoch is always tested"),
    "depth": (None, "convnet6 pooling depth (None: 6 as the authors, fewer below 64 px)"),
    "device": ("auto", "auto (cuda if available), cpu, cuda, cuda:1"),
    "amp": ("none", "none: fp32 as the authors (TF32 convolutions on CUDA, PyTorch's default); bf16: autocast, "
                    "~2x faster on GPU; auto: bf16 on CUDA, fp32 on CPU"),
    "data_path": ("gpu", "gpu: uint8 data on the device, batched augmentation; pil: the authors' DataLoader path"),
    "workers": (2, "decoding threads; DataLoader workers on the pil path"),
    "compile": (False, "torch.compile the classifier (CUDA, long runs)"),
    "results": (None, "results JSONL path or folder (None: results/eval/<subset or train-dir name>/results.jsonl)"),
    "mmd_real": (None, "real train dir: also report the feature MMD of --train to it (paper Table 2)"),
    "feature_arch": ("resnetap10", "network trained on the full real set for herding / k-center / MMD features"),
    "feature_epochs": (None, "epochs for that network (None: the IPC rule for the full set)"),
    "width": (None, "convnet6 channels (None: 128, the protocol's); narrower only for quick CPU demos"),
    "method": (None, "tag stored in every result record (minimax, dit, random, ...) that scripts/tables.py groups "
                     "by; None: the --select mode, else the train folder's name"),
    "protocol": Key("idc", "idc: hard labels, SGD (SPEC §5, Tables 1/3/5); rded: a frozen teacher's soft labels, "
                           "AdamW (SPEC §9, Table 4, ImageNet-1K)", type="str", choices=("idc", "rded")),
    "teacher": Key("resnet18", "rded: teacher, a torchvision model name; its IMAGENET1K_V1 weights come from "
                               "torchvision's cache unless teacher_weights is set", type="str"),
    "teacher_weights": Key(None, "rded: teacher state dict or checkpoint file (loaded weights_only)", type="str",
                           null=True, path="file"),
    "teacher_subset": Key(False, "rded: with a 1000-class teacher on a 10/100-class subset, use its logits of the "
                                 "subset's classes in subset order (not from the paper)", type="bool"),
    "temperature": Key(20.0, "rded: softmax temperature T of student and teacher in the KL loss", type="float",
                       gt=0),
    "factor": Key(2, "rded: ShufflePatches factor (strips per side); 1 = none", type="int", lo=1),
    "crop_scale": Key(None, "rded: RandomResizedCrop area range [lo, hi]; None: [1/factor, 1] (D3HR: factor 1, "
                            "[0.08, 1])", type="list", null=True),
    "best_after": Key(None, "report the best test after this epoch (None: idc 0, rded 4/5 of epochs = 240 of 300; "
                            "rded tests only after it)", type="int", lo=0, null=True),
    "test_resize": Key(None, "test Resize before CenterCrop(image_size) (None: idc image_size, rded 256 at 224)",
                       type="int", gt=0, null=True),
    "val_cache": Key("auto", "folder for the decoded val set as a memory-mapped uint8 array, reused by every run "
                             "(auto: <results>/../val_cache for rded, none for idc; none: decode each run)",
                     type="str"),
    "ckpt_every": Key(None, "save the run's state (weights, optimiser, RNGs, curve) every N epochs for an exact "
                            "resume after a kill (None: every ~2 minutes; 0: only at the end)", type="int", lo=0, null=True),
    "keep_weights": Key(False, "keep each finished run's final state (student weights) in <results>/state/",
                        type="bool"),
    "debug_kill_epoch": Key(0, "testing: SIGKILL this process right after the state of this epoch is written "
                               "(0 = off)", type="int", lo=0),
}


def main(argv=None):
    cfg = parse_config(CONFIG, argv, description=__doc__.splitlines()[0], prog="evaluate.py", section="evaluate")
    for key in ("train", "val"):
        if not cfg[key]:
            raise UserError(f"--{key} is required (a folder with one sub-folder of images per class)")
    for key in ("ipc", "epochs", "eval_every", "depth", "feature_epochs", "width", "batch_size", "factor",
                "test_resize"):
        if cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 1):
            raise UserError(f"--{key} must be a positive integer, got {cfg[key]!r}")
    for key in ("best_after", "ckpt_every", "debug_kill_epoch"):
        if cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 0):
            raise UserError(f"--{key} must be an integer >= 0, got {cfg[key]!r}")
    for key in ("lr", "weight_decay", "temperature"):
        if cfg[key] is not None and not isinstance(cfg[key], (int, float)):
            raise UserError(f"--{key} must be a number, got {cfg[key]!r}")
    if cfg["temperature"] <= 0:
        raise UserError(f"--temperature must be > 0, got {cfg['temperature']}")
    scale = cfg["crop_scale"]
    if isinstance(scale, str):  # --crop_scale 0.08,1 (a YAML list [0.08, 1] arrives parsed)
        try:
            scale = cfg["crop_scale"] = [float(v) for v in scale.split(",")]
        except ValueError:
            pass
    if scale is not None and not (isinstance(scale, list) and len(scale) == 2 and
                                  all(isinstance(v, (int, float)) for v in scale) and 0 < scale[0] <= scale[1] <= 1):
        raise UserError(f"--crop_scale must be two numbers 0 < lo <= hi <= 1 (e.g. 0.08,1), got {scale!r}")
    summary = run_evaluation(**cfg, config=dict(cfg))
    for arch, s in summary.items():
        if arch != "mmd":
            print(f"{arch}: best {s['best_mean']:.2f} ± {s['best_std']:.2f}  last {s['last_mean']:.2f} ± "
                  f"{s['last_std']:.2f}  (n={s['n_runs']})")


if __name__ == "__main__":
    run_cli(main)
