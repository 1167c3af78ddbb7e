"""What makes fine-tuning exactly resumable: EMA, every RNG state, the data order, and the checkpoint format
(CONTRACTS.md "Fine-tuned checkpoint format"; models/loading.py reads it)."""
import os
import random

import numpy as np
import torch

from utils.errors import UserError

CKPT_FORMAT = "minimax-diffusion-ckpt"
CKPT_VERSION = 1


#################################################################################
#                                      EMA                                      #
#################################################################################

class EMA:
    """fp32 exponential moving average of named parameters, started from their current values (the base weights)."""

    def __init__(self, named_params, decay):
        self.decay = float(decay)
        self.names = list(named_params)
        self.params = [named_params[n] for n in self.names]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self):
        """ema = decay * ema + (1 - decay) * param (DiT's update_ema), every step."""
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, [p.detach().float() for p in self.params], alpha=1.0 - self.decay)

    def state_dict(self):
        return {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow)}

    def load_state_dict(self, state):
        missing = [n for n in self.names if n not in state]
        if missing:
            raise UserError(f"checkpoint EMA lacks {len(missing)} trainable parameter(s) (e.g. {missing[0]}); "
                            f"resume with the same tune/gamma_blocks settings")
        for n, s in zip(self.names, self.shadow):
            s.copy_(state[n])


#################################################################################
#                                   RNG state                                   #
#################################################################################

def get_rng_state(generators, device):
    """Every RNG the loop can touch: torch CPU (+ CUDA of this rank), numpy, python random, our generators.

    Stored as tensors and plain numbers so that torch.load(weights_only=True) reads them back."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "generators": {name: g.get_state() for name, g in generators.items()}}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, generators, device):
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if torch.device(device).type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


#################################################################################
#                                   Data order                                  #
#################################################################################

def epoch_permutation(seed, epoch, n):
    """The order of epoch `epoch`: a function of (seed, epoch) only, so a checkpoint stores just the position."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)  # (n,)


def rank_batch(perm, step_in_epoch, rank, world_size, batch_size):
    """This rank's disjoint slice of the global batch at `step_in_epoch`: (batch_size,) item indices."""
    start = (step_in_epoch * world_size + rank) * batch_size
    return perm[start:start + batch_size]


#################################################################################
#                                   Checkpoint                                  #
#################################################################################

def read_checkpoint(path):
    """A training checkpoint (weights_only load), with a one-line error for anything else."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}; pass an existing checkpoint.pt to --resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a torch file
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"resume from an intact checkpoint.pt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise UserError(f"{path} is not a training checkpoint of train_minimax.py; use it as --base instead")
    if ckpt.get("version", 0) > CKPT_VERSION:
        raise UserError(f"{path} has checkpoint version {ckpt['version']}, newer than this code "
                        f"({CKPT_VERSION}); update the code")
    return ckpt
