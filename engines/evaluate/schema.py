"""The keys of evaluate.py (SPEC §5, §9): the one declaration that parsing, --help and validation use, and the
checks across keys made before torch or any image loads."""
import os

from data.subsets import subset_names
from utils.config import Key, check_device, check_output
from utils.errors import UserError
from utils.tracker import HELP as TRACKER_HELP, TRACKERS, check_tracker

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
    "arch": Key(None, type="list", items="str", null=True, literals=("none",),  # 'none' is a value, not null
                choices=("convnet6", "resnetap10", "resnet18", "resnet18_bn", "resnet50_bn", "resnet101_bn",
                         "resnet18_in", "resnet50", "resnet101", "none"),
                help="comma list of convnet6, resnetap10, resnet18 (IDC: instance norm), resnet18_bn / resnet50_bn / "
                     "resnet101_bn (torchvision, BatchNorm) ('none': only MMD); None: resnetap10 (idc), resnet18 "
                     "(rded, where resnet18 / resnet50 / resnet101 are torchvision's BatchNorm networks and "
                     "resnet18_in the IDC one)"),
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
                  help="None: idc by IPC (1: 3000, 10: 2000, 20-50: 1500, 70-200: 1000; 100 classes x2/3); rded 300"),
    "batch_size": Key(None, type="int", lo=1, null=True,
                      help="None: idc 64 (128 above 100 classes); rded 100 below IPC 50, 200 from IPC 50"),
    "test_batch_size": Key(256, lo=1, help="batch size for testing and feature extraction"),
    "lr": Key(None, type="float", gt=0, null=True, help="None: idc 0.01 (0.1 above 100 classes); rded 1e-3 (AdamW)"),
    "momentum": Key(0.9, lo=0, lt=1, help="SGD momentum"),
    "weight_decay": Key(None, type="float", lo=0, null=True,
                        help="None: idc 5e-4 (1e-4 above 100 classes); rded 0.01 on ndim > 1 weights only"),
    "eval_every": Key(None, type="int", lo=1, null=True,
                      help="test every N epochs (None: idc epochs // 100, rded 10); the last epoch is always "
                           "tested"),
    "depth": Key(None, type="int", lo=1, null=True,
                 help="convnet6 pooling depth (None: 6 as the authors, fewer below 64 px)"),
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
                    help="real train dir: also report the feature MMD (paper Table 2), representativeness and "
                         "diversity of the set trained on (folder or --select coreset) against it"),
    "feature_arch": Key("resnetap10", choices=("convnet6", "resnetap10", "resnet18", "resnet18_bn", "resnet50_bn",
                                               "resnet101_bn"),
                        help="network trained on the full real set for herding / k-center / MMD features"),
    "feature_epochs": Key(None, type="int", lo=1, null=True,
                          help="epochs for that network (None: the IPC rule for the full set)"),
    "feature_seed": Key(0, "seed of that network (one network per real set, whatever --seed the runs use)",
                        type="int", lo=0),
    "width": Key(None, type="int", lo=1, null=True,
                 help="convnet6 channels (None: 128, the protocol's); narrower only for quick CPU demos"),
    "method": Key(None, type="str", null=True,
                  help="tag stored in every result record (minimax, dit, random, ...) that scripts/tables.py "
                       "groups by; None: the --select mode, else the train folder's name"),
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
                            "[0.08, 1])", type="list", items="float", gt=0, hi=1, null=True),
    "bn_updates": Key("twice", "rded: BatchNorm running-statistics updates per step. twice: as RDED's loop, whose "
                               "extra train-mode forward under no_grad (its train accuracy) moves them a second "
                               "time (done here by a hook, one BatchNorm pass per layer); once: the plain loop",
                      type="str", choices=("twice", "once")),
    "best_after": Key(None, "report the best test after this epoch (None: idc 0, rded 4/5 of epochs = 240 of 300; "
                            "rded tests only after it)", type="int", lo=0, null=True),
    "test_resize": Key(None, "test Resize before CenterCrop(image_size) (None: idc image_size, rded image_size // 7 * "
                             "8, 256 at 224)",
                       type="int", gt=0, null=True),
    "val_cache": Key("auto", "folder for the decoded val set as a memory-mapped uint8 array, reused by every run "
                             "(auto: <results>/../val_cache for rded, none for idc; none: decode each run)",
                     type="str"),
    "ckpt_every": Key(None, "save the run's state (weights, optimiser, RNGs, curve) every N epochs for an exact "
                            "resume after a kill (None: every ~2 minutes; 0: only at the end)", type="int", lo=0, null=True),
    "keep_weights": Key(False, "keep each finished run's final state (student weights) in <results>/state/",
                        type="bool"),
    "confusion": Key(False, "write the confusion matrix of each trained run's last epoch (test set) as a figure "
                            "<results folder>/confusion/<tag>-seed<s>.png and into the run's record (C x C counts)",
                     type="bool"),
    "tracker": Key("none", TRACKER_HELP + " (folder <results folder>/tracker: every run's curve, the curve and "
                                          "confusion figures)", choices=TRACKERS),
    "debug_kill_epoch": Key(0, "testing: SIGKILL this process right after the state of this epoch is written "
                               "(0 = off)", type="int", lo=0),
}


CORESETS = ("random", "herding", "kcenter")


def check_config(cfg):
    """Checks across keys, after the per-key schema and before torch or any image is loaded."""
    if cfg["select"] in CORESETS and cfg["ipc"] is None:
        raise UserError(f"select {cfg['select']} needs --ipc K (images per class to pick from the real train set)")
    if cfg["select"] == "full" and cfg["ipc"] is not None:
        raise UserError("select full trains on every image; drop --ipc (or use --select random --ipc K)")
    if cfg["mmd_real"] and cfg["select"] in ("herding", "kcenter") and \
            os.path.abspath(cfg["mmd_real"]) != os.path.abspath(cfg["train"]):
        # the selection would read features of mmd_real's images as if they were the train dir's
        raise UserError(f"select {cfg['select']} with mmd_real needs mmd_real = train (got {cfg['mmd_real']} and "
                        f"{cfg['train']}); measure the coreset in a second run with --select none on its folder")
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
    scale = cfg["crop_scale"]
    if scale is not None and not (len(scale) == 2 and scale[0] <= scale[1]):
        raise UserError(f"--crop_scale must be two numbers 0 < lo <= hi <= 1 (e.g. 0.08,1), got {scale!r}")
    check_output(folder, "--results folder")
    if cfg["val_cache"] not in ("auto", "none"):
        check_output(cfg["val_cache"], "--val_cache")
    if cfg["test_resize"] is not None and cfg["test_resize"] < cfg["image_size"]:
        raise UserError(f"--test_resize {cfg['test_resize']} is below --image_size {cfg['image_size']}: the centre "
                        f"crop would be padded; use at least {cfg['image_size']}")
    if cfg["best_after"] is not None and cfg["epochs"] is not None and cfg["best_after"] >= cfg["epochs"]:
        raise UserError(f"--best_after {cfg['best_after']} leaves no test after it in {cfg['epochs']} epochs; use a "
                        f"smaller value")
    if cfg["protocol"] == "idc":
        rded_only = [a for a in (cfg["arch"] or []) if a in ("resnet50", "resnet101", "resnet18_in")]
        if rded_only:
            raise UserError(f"--arch {rded_only[0]} names a network of the rded protocol; under idc use "
                            f"{rded_only[0].replace('_in', '')}_bn or pass --protocol rded")
    check_device(cfg["device"])
    check_tracker(cfg["tracker"])
    return cfg
