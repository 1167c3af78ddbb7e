"""IDC evaluation protocol (SPEC §5): train classifiers from scratch on an image folder, report top-1 on val.

`run_evaluation(...)` is the library entry point (evaluate.py is its CLI). Data are decoded once; on the default
'gpu' path they stay on the device as uint8 and every augmentation runs there in batch.
"""
import os
import time

import numpy as np
import torch

from data.eval_augment import (PilTestSet, PilTrainSet, cutmix, cutmix_loss, gpu_test_batch, gpu_train_batch)
from data.eval_data import (check_readable, class_files, decode_all, fingerprint, flatten, take_first)
from data.eval_results import finished_runs, record, results_path, run_key, save_curves
from data.eval_select import feature_mmd, herding, kcenter, random_select
from data.subsets import list_class_dirs, resolve_subset
from models.classifiers import build_classifier
from utils.config import save_config, validate
from utils.errors import UserError
from utils.io import atomic_torch_save, remove_stale_tmp, run_info

SELECTS = ("none", "random", "herding", "kcenter", "full")


#### Protocol rules ##########################################################################################

def epochs_for(ipc, num_classes):
    """IDC's epochs by IPC (10 -> 2000, 20/50 -> 1500, 70/100 -> 1000); >= 100 classes: x2/3, floor to 100s."""
    if ipc <= 10:
        epochs = 2000
    elif ipc <= 50:
        epochs = 1500
    elif ipc <= 200:
        epochs = 1000
    elif ipc <= 500:  # beyond SPEC's table (IDC's rule for large sets, e.g. the full subset)
        epochs = 500
    else:
        epochs = 300
    if num_classes >= 100:
        epochs = int(epochs * 2 / 3) // 100 * 100
    return epochs


def optim_defaults(num_classes):
    """(lr, weight decay): 0.01 / 5e-4, or 0.1 / 1e-4 above 100 classes."""
    return (0.1, 1e-4) if num_classes > 100 else (0.01, 5e-4)


def milestones(epochs):
    """MultiStepLR milestones (gamma 0.2) at 2/3 and 5/6 of training."""
    return [2 * epochs // 3, 5 * epochs // 6]


def resolve_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def resolve_amp(amp, device):
    """'auto' -> bf16 autocast on CUDA, full fp32 on CPU (CPU bf16 is slower and less exact). `amp` is one of
    evaluate.CONFIG's choices (validated there)."""
    return "bf16" if (amp == "bf16" or (amp == "auto" and device.type == "cuda")) else "none"


def _memory_format(device):
    """channels_last feeds tensor cores on CUDA; on CPU (oneDNN) it is slower for these nets, so keep NCHW there."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _fmt(x):
    return x.contiguous(memory_format=_memory_format(x.device))


def _autocast(device, amp):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


#### Data sources ############################################################################################

class DeviceTrain:
    """Train images as uint8 on the device; each batch is cropped, flipped, jittered and lit there."""

    def __init__(self, images, labels, size, batch_size, device):
        self.images, self.labels = images.to(device), torch.as_tensor(labels, device=device)
        self.size, self.batch_size = size, batch_size

    def batches(self, gen):
        n = self.images.shape[0]
        perm = torch.randperm(n, generator=gen, device=gen.device).to(self.images.device)
        for i in range(0, n, self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield gpu_train_batch(self.images[idx], self.size, gen), self.labels[idx]


class DeviceTest:
    def __init__(self, images, labels, batch_size, device):
        self.images, self.labels = images.to(device), torch.as_tensor(labels, device=device)
        self.batch_size = batch_size

    def batches(self):
        for i in range(0, self.images.shape[0], self.batch_size):
            yield gpu_test_batch(self.images[i:i + self.batch_size]), self.labels[i:i + self.batch_size]


class PilTrain:
    """The authors' CPU path: PIL decode + augmentation per sample in DataLoader workers."""

    def __init__(self, paths, labels, size, batch_size, device, workers, seed):
        self.device = device
        self.loader = torch.utils.data.DataLoader(
            PilTrainSet(paths, labels, size), batch_size=batch_size, shuffle=True, num_workers=workers,
            generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
            pin_memory=device.type == "cuda")

    def batches(self, gen):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class PilTest:
    def __init__(self, paths, labels, size, batch_size, device, workers):
        self.device = device
        self.loader = torch.utils.data.DataLoader(PilTestSet(paths, labels, size), batch_size=batch_size,
                                                  num_workers=workers)

    def batches(self):
        for x, y in self.loader:
            yield x.to(self.device), y.to(self.device)


#### Training ################################################################################################

@torch.no_grad()
def test_accuracy(model, test, device, amp):
    """Top-1 (%) over the whole test set."""
    model.eval()
    correct, total = torch.zeros((), device=device), 0
    for x, y in test.batches():
        with _autocast(device, amp):
            logits = model(_fmt(x))  # (B, classes)
        correct += (logits.argmax(1) == y).sum()
        total += y.numel()
    model.train()
    return 100.0 * float(correct) / max(total, 1)


def train_classifier(model, train, test, epochs, lr, momentum, weight_decay, eval_every, seed, device, amp="none",
                     log=print, tag=""):
    """SGD + MultiStepLR + CutMix on every batch; test every `eval_every` epochs and at the end.

    Returns {"best", "last", "best_epoch", "curve": [[epoch, top1]], "loss": [[epoch, mean loss]], "seconds",
    "images_per_sec"}."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(epochs), gamma=0.2)
    gen = torch.Generator(device=device).manual_seed(seed)
    curve, losses, seen, t0 = [], [], 0, time.time()
    model.train()
    for epoch in range(1, epochs + 1):
        total, steps = torch.zeros((), device=device), 0
        for x, y in train.batches(gen):
            x, y, y_b, ratio = cutmix(x, y, gen)
            with _autocast(device, amp):
                logits = model(_fmt(x))  # (B, classes)
            loss = cutmix_loss(logits.float(), y, y_b, ratio)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
            seen += y.numel()
        sched.step()
        if epoch % eval_every == 0 or epoch == epochs:
            acc = test_accuracy(model, test, device, amp)
            curve.append([epoch, acc])
            losses.append([epoch, float(total) / max(steps, 1)])
            best = max(a for _, a in curve)
            log(f"{tag} epoch {epoch}/{epochs} loss {losses[-1][1]:.4f} top1 {acc:.2f} best {best:.2f}")
    secs = time.time() - t0
    best_epoch, best = max(curve, key=lambda c: c[1])
    return {"best": best, "last": curve[-1][1], "best_epoch": best_epoch, "curve": curve, "loss": losses,
            "seconds": secs, "images_per_sec": seen / max(secs, 1e-9)}


def make_model(arch, num_classes, image_size, depth, device, compile_model, seed, width=None):
    torch.manual_seed(seed)
    model = build_classifier(arch, num_classes, image_size, depth=depth, width=width)
    model = model.to(device, memory_format=_memory_format(device))
    return torch.compile(model) if compile_model else model


#### Feature network (herding, k-center, MMD) ################################################################

@torch.no_grad()
def extract_features(model, images, device, amp, batch_size=256):
    """Penultimate features of uint8 images under the test transform -> (N, d) float32 on CPU."""
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = gpu_test_batch(images[i:i + batch_size].to(device))
        with _autocast(device, amp):
            out.append(model.forward_features(_fmt(x)).float().cpu())
    return torch.cat(out)


def feature_net(arch, images, labels, test, num_classes, image_size, depth, hp, device, amp, seed, cache_dir,
                data_fp, log):
    """A network trained on the full real set under the same protocol; its checkpoint is cached (trained once)."""
    key = run_key(dict(hp, image_size=image_size, depth=depth, amp=amp), data_fp, arch, seed)
    path = os.path.join(cache_dir, f"{arch}-{key}.pt")
    model = make_model(arch, num_classes, image_size, depth, device, False, seed)
    if os.path.isfile(path):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        log(f"feature net loaded from {path} (top1 {ckpt['top1']:.2f})")
        return model, path
    log(f"training the feature net ({arch}, {hp['epochs']} epochs on {images.shape[0]} real images)")
    train = DeviceTrain(images, labels, image_size, hp["batch_size"], device)
    res = train_classifier(model, train, test, hp["epochs"], hp["lr"], hp["momentum"], hp["weight_decay"],
                           hp["eval_every"], seed, device, amp, log, tag=f"[feature {arch}]")
    atomic_torch_save({"model": model.state_dict(), "arch": arch, "top1": res["last"], "key": key,
                       "hparams": hp, "info": {k: str(v) for k, v in run_info().items()}}, path)
    return model, path


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
                   feature_epochs=None, width=None, method=None, log=print, config=None):
    """Evaluate `train` (a class-per-folder image dir) on `val` for each arch in `arch` (list or comma string).

    Returns {arch: {"best_mean", "best_std", "last_mean", "last_std", "n_runs", "runs": [run records]}} plus
    "mmd": {...} when `mmd_real` is given. Finished runs found in the results JSONL are reused, not retrained.
    `method` is a tag written into every record (scripts/tables.py groups by it); `width` narrows convnet6."""
    args = {k: v for k, v in locals().items() if k not in ("log", "config")}  # the parameters, as given
    archs = [a for a in (arch.split(",") if isinstance(arch, str) else list(arch)) if a and a != "none"]
    from evaluate import CONFIG, check_config  # the tool's declaration checks library calls too (no torch there)
    check_config(validate(CONFIG, dict(args, arch=archs or ["none"])))
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
    for d in (out_dir, os.path.join(out_dir, "curves"), os.path.join(out_dir, "feature_net")):
        remove_stale_tmp(d)  # temporary files a killed evaluation left (its pid is gone)
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
                                            amp, seed, os.path.join(out_dir, "feature_net"),
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

    #### MMD between the train folder and the real set (paper Table 2)
    if mmd_real:
        syn_u8 = decode_all(train_paths, image_size, workers)
        mmd = feature_mmd(extract_features(feat_model, syn_u8, dev, amp), torch.as_tensor(train_labels),
                          extract_features(feat_model, real_u8, dev, amp), torch.as_tensor(real_labels), C)
        log(f"MMD to {mmd_real}: linear {mmd['mmd_linear']:.4f}  rbf {mmd['mmd_rbf']:.6f}")
        record(out_path, dict(kind="mmd", time=time.time(), train=train, subset=sub.name, select=select, ipc=ipc,
                              fingerprint=fp["train"], **mmd, config=config, info=info))
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
