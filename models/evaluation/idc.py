"""IDC evaluation protocol (SPEC §5): its rules (epochs, lr, milestones), the hard-label CutMix training loop, and
the feature network for the coreset baselines and MMD."""
import os
import time

import torch

from data.eval_augment import cutmix, cutmix_loss, gpu_test_batch
from data.eval_results import run_key
from models.evaluation.common import DeviceTrain, autocast_for, to_device_format, make_model, test_accuracy
from utils.io import atomic_torch_save, run_info


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


#### Training ################################################################################################

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
            with autocast_for(device, amp):
                logits = model(to_device_format(x))  # (B, classes)
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


#### Feature network (herding, k-center, MMD) ################################################################

@torch.no_grad()
def extract_features(model, images, device, amp, batch_size=256):
    """Penultimate features of uint8 images under the test transform -> (N, d) float32 on CPU."""
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = gpu_test_batch(images[i:i + batch_size].to(device))
        with autocast_for(device, amp):
            out.append(model.forward_features(to_device_format(x)).float().cpu())
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
