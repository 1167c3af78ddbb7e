"""The evaluation runner: train classifiers from scratch on an image folder, report top-1 on val, under the IDC
protocol (SPEC §5, engines/evaluate/idc.py) or RDED's soft-label protocol (SPEC §9, engines/evaluate/rded.py).

`run_evaluation(...)` is the library entry point (evaluate.py is its CLI): classes and file lists, every input
check before anything is written, one-time decoding (the val set optionally through an on-disk uint8 cache),
coreset selection, repeats, results on disk, read-back of finished runs and mid-run resume of unfinished ones. Data
are decoded once; on the default 'gpu' path they stay on the device as uint8 and every augmentation runs there.
"""
import os
import time

import numpy as np
import torch

from data.eval_augment import PilRdedTrainSet, rded_train_batch
from data.eval_data import (check_readable, class_files, decode_all, decode_cached, fingerprint, flatten,
                            numbered_to_wnids, take_first)
from data.eval_results import finished_runs, record, results_path, run_key, save_curves
from data.eval_measures import KEYS as MEASURES, set_measures
from data.eval_select import herding, kcenter, random_select
from data.subsets import Subset, list_class_dirs, resolve_subset
from engines.evaluate import rded
from engines.evaluate.common import (DeviceTest, DeviceTrain, PilTest, PilTrain, confusion_matrix, make_model,
                                     memory_format_for, resolve_amp, resolve_device)
from engines.evaluate.idc import (batch_size_for, epochs_for, extract_features, feature_net, optim_defaults,
                                  train_classifier)
from engines.evaluate.schema import CONFIG, check_config  # the tool's declaration checks library calls too
from models.classifiers import CLASSIFIERS, RDED_ALIASES, net_ident
from utils.config import save_config, validate
from utils.errors import UserError
from utils.io import file_sha256, remove_stale_tmp, run_info
from utils.tracker import Tracker

SELECTS = ("none", "random", "herding", "kcenter", "full")
PROTOCOLS = ("idc", "rded")


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


def _subset(subset, train):
    """The class list; a custom train dir in RDED's numbered layout (00000..00999) maps to wnids by position."""
    sub = resolve_subset(subset, train_dir=train)
    if subset == "custom":
        wnids = numbered_to_wnids(sub.wnids)
        if wnids is not None:
            sub = Subset(sub.name, wnids)
    return sub


def _hparams(protocol, n_ipc, C, epochs, batch_size, lr, momentum, weight_decay, eval_every, best_after,
             temperature, factor, crop_scale, bn_updates="once"):
    """Every training value of the protocol, defaults (None) resolved; the IDC dict keeps its historic fields so
    earlier results keep their keys."""
    if protocol == "idc":
        lr_d, wd_d = optim_defaults(C)
        epochs = epochs or epochs_for(n_ipc, C)
        hp = {"epochs": epochs, "batch_size": batch_size or batch_size_for(C),
              "lr": lr if lr is not None else lr_d, "momentum": momentum,
              "weight_decay": weight_decay if weight_decay is not None else wd_d,
              "eval_every": eval_every or max(1, epochs // 100)}
        if best_after:  # only in the identity of runs that set it, so earlier results keep their keys
            hp["best_after"] = best_after
        return hp
    epochs = epochs or rded.EPOCHS
    factor = rded.FACTOR if factor is None else factor
    scale = list(crop_scale) if crop_scale is not None else [1.0 / factor, 1.0]
    hp = {"protocol": "rded", "epochs": epochs, "batch_size": batch_size or rded.batch_size_for(n_ipc),
          "lr": lr if lr is not None else rded.LR,
          "weight_decay": weight_decay if weight_decay is not None else rded.WEIGHT_DECAY,
          "eval_every": eval_every or rded.EVAL_EVERY,
          "best_after": rded.best_after_for(epochs) if best_after is None else best_after,
          "temperature": temperature, "factor": factor, "crop_scale": scale}
    if bn_updates != "once":  # only in the identity of runs that set it: "once" runs keep their earlier keys
        hp["bn_updates"] = bn_updates
    return hp


def _check_teacher_fits(teacher, student, size, device):
    """Both networks take the training resolution (one tiny forward each, before anything is written)."""
    x = torch.zeros(2, 3, size, size, device=device)
    for name, net in (("teacher", teacher), ("student", student)):
        was = net.training
        try:
            with torch.no_grad():
                net.eval()(x)
        except RuntimeError as e:
            raise UserError(f"the {name} cannot take {size} px inputs ({str(e).splitlines()[0][:100]}); set "
                            f"--image_size to the resolution both networks were built for") from None
        finally:
            net.train(was)


def run_evaluation(train, val, arch=None, subset="custom", ipc=None, select="none", repeat=3, seed=0,
                   image_size=224, epochs=None, batch_size=None, test_batch_size=256, lr=None, momentum=0.9,
                   weight_decay=None, eval_every=None, depth=None, device="auto", amp="none", data_path="gpu",
                   workers=2, compile=False, results=None, mmd_real=None, feature_arch="resnetap10",
                   feature_epochs=None, feature_seed=0, width=None, method=None,
                   protocol="idc", teacher="resnet18",
                   teacher_weights=None, teacher_subset=False, temperature=rded.TEMPERATURE, factor=rded.FACTOR,
                   crop_scale=None, bn_updates="twice", best_after=None, test_resize=None, val_cache="auto",
                   ckpt_every=None, keep_weights=False, confusion=False, tracker="none", debug_kill_epoch=0, log=print,
                   config=None):
    """Evaluate `train` (a class-per-folder image dir) on `val` for each arch in `arch` (list or comma string).

    Returns {arch: {"best_mean", "best_std", "last_mean", "last_std", "n_runs", "runs": [run records]}} plus
    "mmd": {...} when `mmd_real` is given: MMD, representativeness and diversity of the set actually trained on
    (the folder, or the coreset `select` picks) in the features of one network trained on `mmd_real`
    (data/eval_measures.py). Finished runs and measures found in the results JSONL are reused, not redone;
    an unfinished run continues from its state file. `method` is a tag written into every record (scripts/tables.py
    groups by it); `width` narrows convnet6. `protocol` "rded" trains with a frozen teacher's soft labels.
    `confusion`: each trained run's last-epoch confusion matrix goes into its record and <folder>/confusion/ as a
    figure; `tracker` (none | tensorboard | wandb) receives every run's curve and the figures (utils/tracker.py)."""
    args = {k: v for k, v in locals().items() if k not in ("log", "config")}  # the parameters, as given
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    arch = arch or ("resnet18" if protocol == "rded" else "resnetap10")
    archs = [a for a in (arch.split(",") if isinstance(arch, str) else list(arch)) if a and a != "none"]
    names = {a: RDED_ALIASES.get(a, a) if protocol == "rded" else a for a in archs}  # arch -> network to build
    bad = [a for a in list(names.values()) + [feature_arch] if a not in CLASSIFIERS]
    if bad:
        raise UserError(f"unknown arch '{bad[0]}'; choose from {', '.join(CLASSIFIERS)}")
    check_config(validate(CONFIG, dict(args, arch=archs or ["none"])))
    dev = resolve_device(device)
    amp = resolve_amp(amp, dev)
    config = dict(config or {}, train=train, val=val, arch=",".join(archs), subset=subset, ipc=ipc, select=select,
                  protocol=protocol)

    #### classes, file lists, teacher (every input check happens here, before anything is written)
    sub = _subset(subset, train)
    wnids, C = sub.wnids, sub.num_classes
    if subset == "custom":
        val_names = list_class_dirs(val) if os.path.isdir(val) else []
        extra = sorted(set(numbered_to_wnids(val_names) or val_names) - set(wnids))
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
    hp = _hparams(protocol, n_ipc, C, epochs, batch_size, lr, momentum, weight_decay, eval_every, best_after,
                  temperature, factor, crop_scale, bn_updates)
    epochs = hp["epochs"]
    teacher_net, teacher_index, teacher_id = None, None, None
    if protocol == "rded" and archs:
        teacher_net, k, trained_size = rded.load_teacher(teacher, teacher_weights)
        if trained_size is not None and trained_size != image_size:
            raise UserError(f"teacher {teacher} ({rded.TEACHER_WEIGHTS}) was trained at {trained_size} px but "
                            f"image_size is {image_size}; use --image_size {trained_size}")
        teacher_index = rded.teacher_class_index(k, C, sub.imagenet_idx, teacher_subset, teacher)
        for a in archs:
            _check_teacher_fits(teacher_net, make_model(names[a], C, image_size, depth, torch.device("cpu"), False,
                                                        seed, width), image_size, torch.device("cpu"))
        teacher_net = teacher_net.to(dev, memory_format=memory_format_for(dev))
        if compile:
            teacher_net = torch.compile(teacher_net)
        teacher_id = {"teacher": teacher, "weights": (file_sha256(teacher_weights) if teacher_weights
                                                      else rded.TEACHER_WEIGHTS), "classes": k,
                      "subset_logits": teacher_index is not None}
    out_path = results_path(results, sub.name if subset != "custom" else os.path.basename(os.path.abspath(train)))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    for d in (out_dir, os.path.join(out_dir, "curves"), os.path.join(out_dir, "feature_net")):
        remove_stale_tmp(d)  # temporary files a killed evaluation left (its pid is gone)
    save_config(config, os.path.join(out_dir, "config.yaml"))  # latest invocation; every record has its own
    log(f"{C} classes, {sum(map(len, files.values()))} train files, {len(val_paths)} val images; protocol "
        f"{protocol}, epochs {epochs}, batch {hp['batch_size']}, lr {hp['lr']}, wd {hp['weight_decay']}, device {dev}, "
        f"amp {amp}, data path {data_path}; results -> {out_path}")

    #### decode once (corrupt files are named here)
    resize = test_resize or (rded.val_resize_for(image_size) if protocol == "rded" else None)
    cache_dir = (os.path.join(os.path.dirname(out_dir), "val_cache") if val_cache == "auto" and protocol == "rded"
                 else None if val_cache in ("auto", "none", None) else val_cache)
    val_u8 = (decode_cached(val_paths, image_size, resize, cache_dir, workers, log) if cache_dir
              else decode_all(val_paths, image_size, workers, resize))
    test = (DeviceTest(val_u8, val_labels, test_batch_size, dev) if data_path == "gpu" else
            PilTest(val_paths, val_labels, image_size, test_batch_size, dev, workers, resize))
    fhp = hp if protocol == "idc" else _hparams("idc", n_ipc, C, None, None, None, momentum, None, None, None,
                                                 None, None, None)  # the feature net is an IDC-trained network
    fhp = dict(fhp, epochs=feature_epochs or epochs_for(max(len(f) for f in (mmd_files or real_files).values()), C))
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
    ident = dict(hp, image_size=image_size, depth=depth, amp=amp, data_path=data_path, select=select, ipc=ipc,
                 classes=list(wnids))
    if width is not None:  # only in the identity of runs that set it, so earlier results keep their keys
        ident["width"] = width
    if method is not None:  # two methods' folders can coincide (same names and sizes): never reuse across tags
        ident["method"] = method
    if image_size < 224:  # the small-image networks follow the authors' since issue 13: never reuse older runs
        ident["nets"] = "authors"
    if data_path == "gpu":  # the device path crops then resizes as torchvision since issue 16 (roi_align before)
        ident["crop"] = "resized_crop"
    if protocol == "rded" and hp["factor"] > 1 and image_size % hp["factor"]:
        ident["patches"] = "drop"  # an odd side loses its remainder strip, as RDED's ShufflePatches (issue 16)
    if protocol == "rded":
        ident.update(teacher=teacher_id, test_resize=resize)
    elif test_resize is not None:  # only runs that set it: earlier IDC results keep their keys
        ident["test_resize"] = resize
    info = run_info()
    summary, train_u8 = {}, None  # the train set decoded once, for the measures and the training

    #### MMD, representativeness and diversity of the set against the real set (paper Table 2)
    if mmd_real:
        mkey = run_key(dict(measures=1, image_size=image_size, amp=amp, select=select, ipc=ipc, method=method),
                       dict(train=fp["train"], real=fingerprint(ref_paths), net=os.path.basename(feat_path)),
                       feature_arch, feature_seed)
        mmd = finished_runs(out_path, kind="mmd").get(mkey)
        if mmd is not None:
            mmd = {k: mmd[k] for k in MEASURES}
        else:
            train_u8 = decode_all(train_paths, image_size, workers)
            mmd = set_measures(extract_features(feat_model, train_u8, dev, amp), torch.as_tensor(train_labels),
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
    trk = Tracker(tracker, os.path.join(out_dir, "tracker"), os.path.basename(out_dir), config)
    augment = (lambda u8, size, g: rded_train_batch(u8, size, hp["factor"], hp["crop_scale"], g)) \
        if protocol == "rded" else None
    train_data = None
    for a in archs:
        runs, trained = [], False
        tag = f"{os.path.basename(os.path.abspath(train))}-{select}-ipc{ipc}-{a}"
        for r in range(repeat):
            s = seed + r
            key = run_key(dict(ident, **net_ident(names[a], image_size)), fp, a, s)
            if key in done:
                log(f"[{a} seed {s}] already in {out_path}: best {done[key]['best']:.2f} last {done[key]['last']:.2f}")
                runs.append(done[key])
                continue
            if data_path == "pil":  # a fresh loader per run: worker RNG streams start from the run seed
                if train_data is None:
                    check_readable(train_paths, workers)
                dataset = PilRdedTrainSet(train_paths, train_labels, image_size, hp["factor"], hp["crop_scale"]) \
                    if protocol == "rded" else None
                train_data = PilTrain(train_paths, train_labels, image_size, hp["batch_size"], dev, workers, s,
                                      dataset)
            elif train_data is None:
                train_data = DeviceTrain(train_u8 if train_u8 is not None else
                                         decode_all(train_paths, image_size, workers), train_labels, image_size,
                                         hp["batch_size"], dev, **({"augment": augment} if augment else {}))
            model = make_model(names[a], C, image_size, depth, dev, compile, s, width)
            state = dict(state_path=os.path.join(out_dir, "state", f"{key}.pt"), state_key=key,
                         ckpt_every=ckpt_every, debug_kill_epoch=debug_kill_epoch, log=log, tag=f"[{a} seed {s}]")
            if protocol == "rded":
                res = rded.train_student(model, teacher_net, train_data, test, epochs=epochs, lr=hp["lr"],
                                         weight_decay=hp["weight_decay"], temperature=hp["temperature"],
                                         eval_every=hp["eval_every"], best_after=hp["best_after"], seed=s,
                                         device=dev, amp=amp, teacher_index=teacher_index,
                                         bn_updates=bn_updates, **state)
            else:
                res = train_classifier(model, train_data, test, epochs, hp["lr"], hp["momentum"],
                                       hp["weight_decay"], hp["eval_every"], s, dev, amp,
                                       best_after=hp.get("best_after", 0), **state)
            rec = dict(kind="run", key=key, time=time.time(), method=method, eval_protocol=protocol, arch=a, repeat=r,
                       seed=s, train=train, val=val, subset=sub.name, select=select, ipc=ipc, epochs=epochs,
                       n_train=len(train_paths), n_val=len(val_paths), **res, fingerprint=fp["train"],
                       fingerprints=fp, protocol=ident, config=config, device=str(dev), info=info)
            if confusion:  # the final weights are the last epoch's: the last test, counted per class pair
                rec["confusion"] = confusion_matrix(model, test, dev, amp, C)
                _confusion_figure(rec, wnids, os.path.join(out_dir, "confusion", f"{tag}-seed{s}.png"), trk)
            record(out_path, rec)
            if not keep_weights:  # the record is written: the run's state is no longer needed
                os.remove(state["state_path"])
            runs.append(rec)
            trained = True
        stats = _stats(runs)
        curves_png = os.path.join(out_dir, "curves", f"{tag}.png")
        save_curves(curves_png, {f"seed {r['seed']}": r["curve"] for r in runs}, tag)
        for r in runs:  # the tracker gets the records' curves as they are
            losses = dict((e, v) for e, v in r.get("loss", []))
            for e, acc in r["curve"]:
                trk.scalars({"top1": acc, "loss": losses.get(e)}, e,
                            f"eval/{method or tag}/{a}/ipc{ipc}/seed{r['seed']}", axis="epoch")
        trk.image(f"eval/curves/{tag}", curves_png)
        if trained:  # a rerun that found every run finished adds nothing to the results file
            record(out_path, dict(kind="summary", time=time.time(), method=method, eval_protocol=protocol, arch=a,
                                  train=train, subset=sub.name, select=select, ipc=ipc, epochs=epochs,
                                  seeds=[r["seed"] for r in runs], **stats, fingerprint=fp["train"],
                                  protocol=ident, config=config, info=info))
        log(f"[{a}] best {stats['best_mean']:.2f} ± {stats['best_std']:.2f}   last {stats['last_mean']:.2f} ± "
            f"{stats['last_std']:.2f}   over seeds {[r['seed'] for r in runs]}")
        summary[a] = dict(stats, runs=runs)
    trk.close()
    return summary


def _confusion_figure(rec, names, path, trk):
    """The run's confusion matrix as a figure (matplotlib), sent to the tracker too."""
    from utils.plots import confusion_figure, save_figure
    acc = 100.0 * sum(rec["confusion"][i][i] for i in range(len(names))) / max(1, sum(map(sum, rec["confusion"])))
    title = (f"{rec['method'] or os.path.basename(str(rec['train']))} {rec['arch']} IPC {rec['ipc']} seed "
             f"{rec['seed']}: epoch {rec['curve'][-1][0]}, top-1 {acc:.2f} %")
    save_figure(confusion_figure(rec["confusion"], names, title), path)
    trk.image(f"eval/confusion/{os.path.splitext(os.path.basename(path))[0]}", path)
