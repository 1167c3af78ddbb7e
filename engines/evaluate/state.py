"""The state of one evaluation training run (engines/evaluate/loop.py writes it): student, optimiser, scheduler, the
RNG stream, the loader's position, epoch, curve and losses in one torch file, loaded with weights_only=True. A run
killed at any point continues from it and ends with the same weights and curve as an uninterrupted one."""
import torch

from engines.train.state import get_rng_state, set_rng_state
from utils.errors import UserError
from utils.io import atomic_torch_save

STATE_FORMAT = "minimax-eval-state"
STATE_SECONDS = 120  # ckpt_every None: a state at most this often (an IDC epoch of 100 images takes ms)


def load_state(path, key, model, opt, sched, gen, train, device):
    """The state at `path` restored into the run's objects; refuses the state of another run (`key`)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT or state.get("key") != key:
        raise UserError(f"{path} is not the state of this run (key {state.get('key')} != {key}); delete it to "
                        f"start the run again")
    getattr(model, "_orig_mod", model).load_state_dict(state["model"])  # the same file with or without compile
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], {"train": gen}, device)
    if state.get("loader") is not None and hasattr(train, "set_state"):
        train.set_state(state["loader"])
    return state


def save_state(path, key, model, opt, sched, gen, train, device, **progress):
    """Atomically write the run's state; `progress` holds epoch, epochs, curve, loss, seen and seconds."""
    atomic_torch_save({"format": STATE_FORMAT, "key": key, "epoch": progress["epoch"], "epochs": progress["epochs"],
                       "model": getattr(model, "_orig_mod", model).state_dict(), "optimizer": opt.state_dict(),
                       "scheduler": sched.state_dict(), "rng": get_rng_state({"train": gen}, device),
                       "loader": train.get_state() if hasattr(train, "get_state") else None,
                       "curve": progress["curve"], "loss": progress["loss"], "seen": progress["seen"],
                       "seconds": progress["seconds"]}, path)
