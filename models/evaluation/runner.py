"""The evaluation runner: train classifiers from scratch on an image folder, report top-1 on val (SPEC §5).

`run_evaluation(...)` is the library entry point (evaluate.py is its CLI): classes and file lists, one-time decoding,
coreset selection, repeats, results on disk and read-back of finished runs. Data are decoded once; on the default
'gpu' path they stay on the device as uint8 and every augmentation runs there in batch.
"""
import os
import time

import numpy as np
import torch

from data.eval_data import check_readable, class_files, decode_all, fingerprint, flatten, take_first
from data.eval_results import finished_runs, record, results_path, run_key, save_curves
from data.eval_measures import KEYS as MEASURES, set_measures
from data.eval_select import herding, kcenter, random_select
from data.subsets import list_class_dirs, resolve_subset
from models.classifiers import CLASSIFIERS
from models.evaluation.common import (DeviceTest, DeviceTrain, PilTest, PilTrain, make_model, resolve_amp,
                                      resolve_device)
from models.evaluation.idc import epochs_for, extract_features, feature_net, optim_defaults, train_classifier
from utils.config import save_config
from utils.errors import UserError
from utils.io import run_info

SELECTS = ("none", "random", "herding", "kcenter", "full")


#### Orchestration ###########################################################################################

def _select_files(select, files, ipc, seed, feats_by_class):
    """Per class, the chosen file list for a coreset baseline."""
    out = {}
    for j, (w, f) in enumerate(files.items()):
        if select == "random":
            idx = random_select(len(f), ipc, torch.Generator().manual_seed(seed * 100003 + j))
        else:
            idx = (herding if select == "herding" else kcenter)(feats_by_class[w], ipc)
        out[w] = [f[i] for i in idx]
    return out


def _stats(runs):
    best, last = np.array([r["best"] for r in runs]), np.array([r["last"] for r in runs])
    return {"best_mean": float(best.mean()), "best_std": float(best.std()), "last_mean": float(last.mean()),
            "last_std": float(last.std()), "n_runs": len(runs)}


def run_evaluation(train, val, arch="resnetap10", subset="custom", ipc=None, select="none", repeat=3, seed=0,
                   image_size=224, epochs=None, batch_size=64, test_batch_size=256, lr=None, momentum=0.9,
                   weight_decay=None, eval_every=None, depth=None, device="auto", amp="none", data_path="gpu",
                   workers=2, compile=False, results=None, mmd_real=None, feature_arch="resnetap10",
                   feature_epochs=None, feature_seed=0, width=None, method=None, log=print, config=None):
    """Evaluate `train` (a class-per-folder image dir) on `val` for each arch in `arch` (list or comma string).

    Returns {arch: {"best_mean", "best_std", "last_mean", "last_std", "n_runs", "runs": [run records]}} plus
    "mmd": {...} when `mmd_real` is given: MMD, representativeness and diversity of the set actually trained on
    (the folder, or the coreset `select` picks) in the features of one network trained on `mmd_real`
    (data/eval_measures.py). Finished runs and measures found in the results JSONL are reused, not redone.
    `method` is a tag written into every record (scripts/tables.py groups by it); `width` narrows convnet6."""
    archs = [a for a in (arch.split(",") if isinstance(arch, str) else list(arch)) if a and a != "none"]
    bad = [a for a in archs + [feature_arch] if a not in CLASSIFIERS]
    if bad:
        raise UserError(f"unknown arch '{bad[0]}'; choose from {', '.join(CLASSIFIERS)}")
    if select not in SELECTS:
        raise UserError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    if select in ("random", "herding", "kcenter") and ipc is None:
        raise UserError(f"select {select} needs --ipc K (images per class to pick from the real train set)")
    if select == "full" and ipc is not None:
        raise UserError("select full trains on every image; drop --ipc (or use --select random --ipc K)")
    if mmd_real and select in ("herding", "kcenter") and os.path.abspath(mmd_real) != os.path.abspath(train):
        # the selection would read features of mmd_real's images as if they were the train dir's
        raise UserError(f"select {select} with mmd_real needs mmd_real = train (got {mmd_real} and {train}); "
                        f"measure the coreset in a second run with --select none on its folder")
    if data_path not in ("gpu", "pil"):
        raise UserError(f"data_path must be gpu or pil, got {data_path!r}")
    if repeat < 1 or (ipc is not None and ipc < 1):
        raise UserError("repeat and ipc must be >= 1")
    dev = resolve_device(device)
    amp = resolve_amp(amp, dev)
    config = dict(config or {}, train=train, val=val, arch=",".join(archs), subset=subset, ipc=ipc, select=select)

    #### classes, file lists (every input check happens here, before any training)
    sub = resolve_subset(subset, train_dir=train)
    wnids, C = sub.wnids, sub.num_classes
    if subset == "custom":
        extra = sorted(set(list_class_dirs(val)) - set(wnids)) if os.path.isdir(val) else []
        if extra:
            raise UserError(f"val dir {val} has classes not in train dir {train}: {', '.join(extra[:5])}; "
                            f"train and val folders must hold the same classes")
    real_files = class_files(train, wnids, "train")
    val_files = class_files(val, wnids, "val")
    mmd_files = class_files(mmd_real, wnids, "mmd_real") if mmd_real else None
    files = real_files if select in ("random", "herding", "kcenter", "full") else take_first(real_files, ipc, train)
    if select in ("random", "herding", "kcenter"):
        take_first(real_files, ipc, train)  # IPC larger than available -> error now
    val_paths, val_labels = flatten(val_files, wnids)
    n_ipc = ipc if (ipc is not None and select != "full") else max(len(f) for f in files.values())
    lr_d, wd_d = optim_defaults(C)
    epochs = epochs or epochs_for(n_ipc, C)
    hp = {"epochs": epochs, "batch_size": batch_size, "lr": lr if lr is not None else lr_d, "momentum": momentum,
          "weight_decay": weight_decay if weight_decay is not None else wd_d,
          "eval_every": eval_every or max(1, epochs // 100)}
    out_path = results_path(results, sub.name if subset != "custom" else os.path.basename(os.path.abspath(train)))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    save_config(config, os.path.join(out_dir, "config.yaml"))  # latest invocation; every record has its own
    log(f"{C} classes, {sum(map(len, files.values()))} train files, {len(val_paths)} val images; epochs {epochs}, "
        f"lr {hp['lr']}, wd {hp['weight_decay']}, device {dev}, amp {amp}, data path {data_path}; "
        f"results -> {out_path}")

    #### decode once (corrupt files are named here)
    val_u8 = decode_all(val_paths, image_size, workers)
    test = (DeviceTest(val_u8, val_labels, test_batch_size, dev) if data_path == "gpu" else
            PilTest(val_paths, val_labels, image_size, test_batch_size, dev, workers))
    fhp = dict(hp, epochs=feature_epochs or epochs_for(max(len(f) for f in (mmd_files or real_files).values()), C))
    fhp["eval_every"] = max(1, fhp["epochs"] // 100)
    need_feat = select in ("herding", "kcenter") or mmd_real
    feat_model, real_u8, real_labels = None, None, None
    if need_feat:
        ref = mmd_files or real_files
        ref_paths, real_labels = flatten(ref, wnids)
        real_u8 = decode_all(ref_paths, image_size, workers)
        feat_model, feat_path = feature_net(feature_arch, real_u8, real_labels, test, C, image_size, None, fhp, dev,
                                            amp, feature_seed, os.path.join(out_dir, "feature_net"),
                                            fingerprint(ref_paths), log)
        config["feature_net"] = feat_path
    if select in ("random", "herding", "kcenter"):
        by_class = None
        if select != "random":
            feats = extract_features(feat_model, real_u8, dev, amp)
            lab = torch.as_tensor(real_labels)
            by_class = {w: feats[lab == j] for j, w in enumerate(wnids)}
        files = _select_files(select, real_files, ipc, seed, by_class)
    train_paths, train_labels = flatten(files, wnids)
    fp = {"train": fingerprint(train_paths), "val": fingerprint(val_paths)}
    protocol = dict(hp, image_size=image_size, depth=depth, amp=amp, data_path=data_path, select=select, ipc=ipc,
                    classes=list(wnids))
    if width is not None:  # only in the identity of runs that set it, so earlier results keep their keys
        protocol["width"] = width
    if method is not None:  # two methods' folders can coincide (same names and sizes): never reuse across tags
        protocol["method"] = method
    info = run_info()
    summary = {}

    #### MMD, representativeness and diversity of the set against the real set (paper Table 2)
    if mmd_real:
        mkey = run_key(dict(measures=1, image_size=image_size, amp=amp, select=select, ipc=ipc, method=method),
                       dict(train=fp["train"], real=fingerprint(ref_paths), net=os.path.basename(feat_path)),
                       feature_arch, feature_seed)
        mmd = finished_runs(out_path, kind="mmd").get(mkey)
        if mmd is not None:
            mmd = {k: mmd[k] for k in MEASURES}
        else:
            syn_u8 = decode_all(train_paths, image_size, workers)
            mmd = set_measures(extract_features(feat_model, syn_u8, dev, amp), torch.as_tensor(train_labels),
                               extract_features(feat_model, real_u8, dev, amp), torch.as_tensor(real_labels), C)
            record(out_path, dict(kind="mmd", key=mkey, time=time.time(), method=method, train=train,
                                  subset=sub.name, select=select, ipc=ipc, seed=seed, mmd_real=mmd_real,
                                  fingerprint=fp["train"], **mmd, config=config, info=info))
        log(f"measures against {mmd_real}: MMD linear {mmd['mmd_linear']:.4f}  rbf {mmd['mmd_rbf']:.6f}  "
            f"representativeness {mmd['rep']:.4f}  diversity {mmd['div']:.4f}")
        summary["mmd"] = mmd
    if not archs:
        return summary

    #### training runs
    done = finished_runs(out_path)
    train_data = None
    for a in archs:
        runs, trained = [], False
        for r in range(repeat):
            s = seed + r
            key = run_key(protocol, fp, a, s)
            if key in done:
                log(f"[{a} seed {s}] already in {out_path}: best {done[key]['best']:.2f} last {done[key]['last']:.2f}")
                runs.append(done[key])
                continue
            if data_path == "pil":  # a fresh loader per run: worker RNG streams start from the run seed
                if train_data is None:
                    check_readable(train_paths, workers)
                train_data = PilTrain(train_paths, train_labels, image_size, batch_size, dev, workers, s)
            elif train_data is None:
                train_data = DeviceTrain(decode_all(train_paths, image_size, workers), train_labels, image_size,
                                         batch_size, dev)
            model = make_model(a, C, image_size, depth, dev, compile, s, width)
            res = train_classifier(model, train_data, test, epochs, hp["lr"], hp["momentum"], hp["weight_decay"],
                                   hp["eval_every"], s, dev, amp, log, tag=f"[{a} seed {s}]")
            rec = dict(kind="run", key=key, time=time.time(), method=method, arch=a, repeat=r, seed=s, train=train,
                       val=val,
                       subset=sub.name, select=select, ipc=ipc, epochs=epochs, n_train=len(train_paths),
                       n_val=len(val_paths), **res, fingerprint=fp["train"], fingerprints=fp, protocol=protocol,
                       config=config, device=str(dev), info=info)
            record(out_path, rec)
            runs.append(rec)
            trained = True
        stats = _stats(runs)
        tag = f"{os.path.basename(os.path.abspath(train))}-{select}-ipc{ipc}-{a}"
        save_curves(os.path.join(out_dir, "curves", f"{tag}.png"),
                    {f"seed {r['seed']}": r["curve"] for r in runs}, tag)
        if trained:  # a rerun that found every run finished adds nothing to the results file
            record(out_path, dict(kind="summary", time=time.time(), method=method, arch=a, train=train,
                                  subset=sub.name, select=select,
                                  ipc=ipc, epochs=epochs, seeds=[r["seed"] for r in runs], **stats,
                                  fingerprint=fp["train"], protocol=protocol, config=config, info=info))
        log(f"[{a}] best {stats['best_mean']:.2f} ± {stats['best_std']:.2f}   last {stats['last_mean']:.2f} ± "
            f"{stats['last_std']:.2f}   over seeds {[r['seed'] for r in runs]}")
        summary[a] = dict(stats, runs=runs)
    return summary
