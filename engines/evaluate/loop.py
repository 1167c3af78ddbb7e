"""The training loop both protocols share: epochs of steps, scheduled tests, and an exactly resumable state.

A protocol gives the optimiser, the per-epoch scheduler and `loss_fn(x, y, gen) -> loss` (its CutMix and its
labels); this loop owns the epoch order, the tests, the curve and the state file: student, optimiser, scheduler,
every RNG, epoch, curve and losses, written atomically every `ckpt_every` epochs and at the end, so a run killed
at any point continues from its last state and ends with the same weights and curve as an uninterrupted one
(on the device-resident data path; the PIL path's DataLoader workers keep RNG streams that are not saved). On
SIGTERM / SIGUSR1 (utils/preempt.py) the state is written at the end of the current epoch and the run stops.
"""
import os
import signal
import time

import torch

from engines.evaluate.common import test_accuracy
from engines.evaluate.state import STATE_SECONDS, load_state, save_state
from utils import preempt

def eval_epochs(epochs, eval_every, after=0):
    """Epochs with a test: every `eval_every` epochs after epoch `after`, and always the last one."""
    return sorted({e for e in range(eval_every, epochs + 1, eval_every) if e > after} | {epochs})


def fit(model, train, test, *, epochs, opt, sched, loss_fn, eval_at, gen, device, amp, state_path=None,
        state_key=None, ckpt_every=None, debug_kill_epoch=0, log=print, tag=""):
    """Train `epochs` epochs (scheduler stepped per epoch), test at the epochs in `eval_at`. With `state_path`, the
    state is written every `ckpt_every` epochs (None: after the first epoch that ends STATE_SECONDS after the last
    write; 0: only at the end) and at the end.

    Returns {"curve": [[epoch, top1]], "loss": [[epoch, mean loss of that epoch]], "seconds", "images_per_sec",
    "resumed_from"}; with `state_path`, continues from the state found there and keeps the final state."""
    start, curve, losses, seen, secs, resumed = 0, [], [], 0, 0.0, 0
    if state_path and os.path.isfile(state_path):
        state = load_state(state_path, state_key, model, opt, sched, gen, train, device)
        start, curve, losses = state["epoch"], state["curve"], state["loss"]
        seen, secs, resumed = state["seen"], state["seconds"], state["epoch"]
        log(f"{tag} resumed at epoch {start}/{epochs} from {state_path}")
    eval_at = set(eval_at)
    t0 = time.time() - secs
    last_write = time.time()
    model.train()
    for epoch in range(start + 1, epochs + 1):
        total, steps = torch.zeros((), device=device), 0
        for x, y in train.batches(gen):
            loss = loss_fn(x, y, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
            seen += y.numel()
        sched.step()
        if epoch in eval_at:
            acc = test_accuracy(model, test, device, amp)
            curve.append([epoch, acc])
            losses.append([epoch, float(total) / max(steps, 1)])
            log(f"{tag} epoch {epoch}/{epochs} loss {losses[-1][1]:.4f} top1 {acc:.2f} "
                f"best {max(a for _, a in curve):.2f}")
        due = (time.time() - last_write >= STATE_SECONDS) if ckpt_every is None else \
            (ckpt_every > 0 and epoch % ckpt_every == 0)
        stop = epoch < epochs and preempt.requested() is not None  # SIGTERM / SIGUSR1: save this epoch, exit 75
        if state_path and (due or epoch == epochs or stop):
            save_state(state_path, state_key, model, opt, sched, gen, train, device, epoch=epoch, epochs=epochs,
                       curve=curve, loss=losses, seen=seen, seconds=time.time() - t0)
            last_write = time.time()
            if debug_kill_epoch == epoch:
                os.kill(os.getpid(), signal.SIGKILL)  # testing: die like kill -9, right after the write
        if stop:
            preempt.stop(f"{tag} state {state_path} at epoch {epoch} of {epochs}" if state_path else
                         f"{tag} at epoch {epoch} of {epochs} (no state file: the run starts again)")
    secs = time.time() - t0
    return {"curve": curve, "loss": losses, "seconds": secs, "images_per_sec": seen / max(secs, 1e-9),
            "resumed_from": resumed}


def best_and_last(curve, after=0):
    """(best top-1 over the tests after epoch `after`, its epoch, last top-1): RDED reports the best test after
    epoch 240 of 300; IDC the best over the whole run."""
    late = [c for c in curve if c[0] > after] or curve[-1:]
    best_epoch, best = max(late, key=lambda c: c[1])
    return best, best_epoch, curve[-1][1]
