"""RDED's soft-label evaluation protocol (SPEC §9; paper Table 4, ImageNet-1K): a student trained from scratch on
the distilled images with a frozen teacher's soft labels, computed online on every augmented, CutMixed batch.

Rules (defaults of evaluate.py's keys): 300 epochs; AdamW lr 1e-3, betas (0.9, 0.999), weight decay 0.01 on
weights with ndim > 1 only; lr * 0.5 * (1 + cos(pi * epoch / epochs / 2)) per epoch (a quarter cosine); KL
(batchmean) of log_softmax(student / T) to softmax(teacher / T), T = 20, no T^2, no hard labels;
ShufflePatches(2) -> RandomResizedCrop(224, (1/2, 1)) -> flip per image, CutMix p = 1 per batch; batch 100 at
IPC 10, 200 at IPC 50; test Resize 256 -> CenterCrop 224 (below 224 px: Resize size // 7 * 8); best test after
epoch 240 (every 10 epochs) and last. BatchNorm running statistics move twice per step, as in RDED's loop
(`bn_updates`, repeat_bn_updates).
"""
import math
import os
import pickle

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from data.eval_augment import cutmix
from engines.evaluate.common import autocast_for, to_device_format
from engines.evaluate.loop import best_and_last, eval_epochs, fit
from utils.errors import UserError

EPOCHS = 300
LR = 1e-3
BETAS = (0.9, 0.999)
WEIGHT_DECAY = 0.01
TEMPERATURE = 20.0
FACTOR = 2
EVAL_EVERY = 10
TEACHER_WEIGHTS = "IMAGENET1K_V1"


#### Protocol rules ##########################################################################################

def batch_size_for(ipc):
    """RDED's table: 100 at IPC 10, 200 at IPC 50 (below IPC 50: 100; from 50 on: 200)."""
    return 100 if ipc < 50 else 200


def best_after_for(epochs):
    """The published number is the best test after epoch 240 of 300: the last fifth of the run."""
    return epochs * 4 // 5


def lr_factor(epoch, epochs):
    """Quarter cosine of the 0-based epoch: 1 at epoch 0, 0.5 + 0.5 cos(pi/4) at epochs/2, -> 0.5 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2))


def param_groups(model, weight_decay):
    """Weight decay on weights with ndim > 1 (convolutions, linear layers) only; none on biases and norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def val_resize_for(image_size):
    """RDED's test Resize before CenterCrop(image_size): image_size // 7 * 8 (256 at 224, 72 at 64, 32 at 32);
    never below image_size (at 9-13, 17-20, 25-27, 33, 34 and 41 px RDED's rule would pad the centre crop with
    black)."""
    return max(image_size // 7 * 8, image_size)


def soft_label_loss(student_logits, teacher_logits, temperature):
    """KLDivLoss(batchmean) of log_softmax(student / T) against softmax(teacher / T)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean")


#### Teacher #################################################################################################

def cached_weights_path(name):
    """Where torchvision keeps `name`'s ImageNet weights once downloaded (torch.hub's checkpoints folder)."""
    weights = torchvision.models.get_model_weights(name)[TEACHER_WEIGHTS]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)), weights


def _state_dict(obj, path):
    """A plain state dict from a state dict or a checkpoint that wraps one ({"state_dict"|"model": ...})."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"teacher weights {path} hold no state dict of tensors; pass a state dict or a checkpoint "
                        f"with 'state_dict' / 'model'")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def _head_key(name):
    """The state-dict key of the classifier weight: the one whose shape follows num_classes."""
    a = torchvision.models.get_model(name, weights=None, num_classes=1000).state_dict()
    b = torchvision.models.get_model(name, weights=None, num_classes=7).state_dict()
    return next(k for k in a if k.endswith("weight") and a[k].shape != b[k].shape)


def load_teacher(name, weights_file=None):
    """(frozen eval-mode teacher, its class count, its training resolution or None) from torchvision's cache or
    `weights_file`; every failure is one line saying what to do."""
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"unknown teacher '{name}'; use a torchvision classification model name such as resnet18")
    size = None
    if weights_file:
        path = weights_file
        if not os.path.isfile(path):
            raise UserError(f"teacher weights not found: {path}; pass an existing file to --teacher_weights")
    else:
        path, weights = cached_weights_path(name)
        size = weights.transforms().crop_size[0]
        if not os.path.isfile(path):
            raise UserError(f"teacher weights for {name} ({TEACHER_WEIGHTS}) not in torchvision's cache {path}; on a "
                            f"machine with internet run python -c \"import torchvision; torchvision.models.{name}("
                            f"weights='{TEACHER_WEIGHTS}')\" and copy {os.path.basename(path)} to that folder, or "
                            f"pass --teacher_weights FILE")
    try:
        state = _state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, IndexError, ValueError) as e:
        # weights_only refuses pickled code; truncated files; files that are not torch files at all
        raise UserError(f"cannot read teacher weights {path} ({str(e).splitlines()[0][:120]}); pass a state dict "
                        f"saved with torch.save") from None
    head = _head_key(name)
    if head not in state:
        raise UserError(f"teacher weights {path} have no '{head}': not a {name} state dict")
    num_classes = state[head].shape[0]
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    own = model.state_dict()
    expected, given = set(own), set(state)
    # older torchvision files predate BatchNorm's num_batches_tracked counters (unused in eval mode): they come
    # from the fresh model; any other difference is an error, and the load itself is strict
    counters = {k: own[k] for k in expected - given if k.endswith("num_batches_tracked")}
    bad = sorted((expected - given - set(counters)) | (given - expected))
    if bad:
        raise UserError(f"teacher weights {path} do not fit {name}: {len(bad)} missing/unexpected key(s), e.g. "
                        f"{bad[0]}; pass weights of that architecture")
    shaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if shaped:
        raise UserError(f"teacher weights {path} do not fit {name}: {shaped[0]} has shape "
                        f"{tuple(state[shaped[0]].shape)}, the model {tuple(own[shaped[0]].shape)}; pass weights of "
                        f"that architecture")
    model.load_state_dict({**state, **counters})
    model.eval().requires_grad_(False)
    return model, num_classes, size


def teacher_class_index(teacher_classes, num_classes, imagenet_idx, restrict, teacher):
    """Which teacher logits are the data's classes: all (same count) or, with `restrict`, the 1,000-class
    teacher's logits of the subset's classes in subset order (an option, not from the paper)."""
    if teacher_classes == num_classes:
        return None
    if teacher_classes != 1000:
        raise UserError(f"teacher {teacher} has {teacher_classes} classes but the data have {num_classes}; pass a "
                        f"teacher trained on these classes (--teacher_weights) or on ImageNet-1K")
    if not restrict:
        raise UserError(f"the teacher has 1000 classes but the data have {num_classes}; pass --teacher_subset true "
                        f"to use its logits of these classes only (not the paper's setting), or evaluate ImageNet-1K")
    unknown = [j for j, i in enumerate(imagenet_idx) if i is None]
    if unknown:
        raise UserError(f"{len(unknown)} class(es) are not ImageNet-1K wnids, so the teacher cannot label them "
                        f"(e.g. class #{unknown[0]}); name the folders by wnid or 00000..00999")
    return list(imagenet_idx)


#### Training ################################################################################################

def _bn_update_again(module, args):
    """Forward pre-hook: the running-statistics update of a BatchNorm forward on this input in train mode (the
    same kernel, momentum and counter rule as the module's own, which follows it), without its output's use."""
    if module.training and module.track_running_stats:
        module.num_batches_tracked.add_(1)
        factor = 1.0 / float(module.num_batches_tracked) if module.momentum is None else module.momentum
        with torch.no_grad():
            F.batch_norm(args[0].detach(), module.running_mean, module.running_var, None, None, True, factor,
                         module.eps)


def repeat_bn_updates(model):
    """RDED's train() runs the student twice per step in train mode, both before the optimiser step: under no_grad
    on the CutMixed batch (its train-accuracy forward; its CutMix pastes in place) and then for the loss. Both
    forwards normalise with batch statistics, so every BatchNorm sees the same input twice: its running mean and
    variance take two momentum steps towards the same batch statistics and num_batches_tracked counts 2 per step.
    This reproduces that inside the one loss forward: a pre-hook on each BatchNorm first applies the update the
    extra forward would have made (bit-identical on CPU, tested), at the cost of one BatchNorm pass per layer
    instead of a whole forward. Exact for networks whose only train-mode state is BatchNorm's (no dropout: the
    registry's). Returns the hook handles (remove() them to stop)."""
    return [m.register_forward_pre_hook(_bn_update_again) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def train_student(model, teacher, train, test, *, epochs, lr, weight_decay, temperature, eval_every, best_after,
                  seed, device, amp="none", teacher_index=None, bn_updates="twice", log=print, tag="",
                  state_path=None, state_key=None, ckpt_every=None, debug_kill_epoch=0):
    """AdamW + quarter cosine per epoch; each batch: CutMix (p = 1), teacher logits on the mixed images, KL.
    bn_updates "twice": BatchNorm statistics move twice per step as in RDED's loop (repeat_bn_updates); "once":
    one update per step (the plain loop, before issue 16).

    Returns {"best" (best test after `best_after`), "best_epoch", "last", "curve", "loss", "seconds",
    "images_per_sec", "resumed_from"}."""
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=BETAS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, epochs))
    gen = torch.Generator(device=device).manual_seed(seed)
    index = None if teacher_index is None else torch.as_tensor(teacher_index, device=device)

    def loss_fn(x, y, g):
        x = to_device_format(cutmix(x, y, g)[0])  # one box and one partner permutation per batch
        with torch.no_grad(), autocast_for(device, amp):
            soft = teacher(x)  # (B, teacher classes)
        soft = soft if index is None else soft[:, index]  # (B, classes)
        with autocast_for(device, amp):
            logits = model(x)  # (B, classes)
        return soft_label_loss(logits.float(), soft.float(), temperature)

    hooks = repeat_bn_updates(model) if bn_updates == "twice" else []
    try:
        res = fit(model, train, test, epochs=epochs, opt=opt, sched=sched, loss_fn=loss_fn,
                  eval_at=eval_epochs(epochs, eval_every, best_after), gen=gen, device=device, amp=amp,
                  state_path=state_path, state_key=state_key, ckpt_every=ckpt_every,
                  debug_kill_epoch=debug_kill_epoch, log=log, tag=tag)
    finally:
        for h in hooks:
            h.remove()
    best, best_epoch, last = best_and_last(res["curve"], best_after)
    return dict(res, best=best, last=last, best_epoch=best_epoch)
