"""An optional experiment tracker for the three tools: `--tracker none|tensorboard|wandb` (a key of each schema).

It receives what the tools already write (log.jsonl's scalars, the evaluation curves, the resolved config, sample
grids and figures as images) and sends it on; it reads no RNG and touches no tensor, so it never changes a computed
number (tests compare runs with and without it). TensorBoard event files go to the tool's tracker folder; W&B runs
in that folder too, offline when WANDB_MODE=offline (no network needed). Neither package is required by the project:
asking for a missing one is one line naming the package to install, before anything is loaded.
"""
import importlib.util
import os

from utils.errors import UserError

TRACKERS = ("none", "tensorboard", "wandb")
HELP = ("experiment tracker: none | tensorboard (event files in the tool's tracker folder; pip install tensorboard) | "
        "wandb (pip install wandb; WANDB_MODE=offline for no network); logs the same scalars, the config and images, "
        "and never changes a result")


def check_tracker(kind):
    """One line when the backend's package is not installed (called by each tool's check_config)."""
    if kind not in TRACKERS:
        raise UserError(f"--tracker must be one of {', '.join(TRACKERS)}, got {kind!r}")
    if kind != "none" and importlib.util.find_spec(kind) is None:
        raise UserError(f"--tracker {kind} needs the package '{kind}', which is not installed: pip install {kind} "
                        f"(or use --tracker none)")


class Tracker:
    """Scalars (under a prefix, against a step axis), images (a PNG path) and the config, sent to TensorBoard or
    W&B; with kind "none" every call does nothing. Use on the main process only."""

    def __init__(self, kind, folder, name, config=None):
        self.kind, self.folder, self._axes = kind, folder, set()
        self._tb = self._wb = None
        if kind == "none":
            return
        check_tracker(kind)
        os.makedirs(folder, exist_ok=True)
        clean = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                 for k, v in (config or {}).items()}
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=folder)
            import yaml
            self._tb.add_text("config", "```\n" + yaml.safe_dump(clean, sort_keys=False) + "```", 0)
        else:
            import wandb
            self._wb = wandb.init(project=os.environ.get("WANDB_PROJECT", "minimax-diffusion"), name=name, dir=folder,
                                  config=clean)  # finished in close(): one run per tool invocation

    def scalars(self, values, step, prefix, axis="step"):
        """values {name: number or None} at `step` of the axis named `axis` (step, epoch); None values skipped."""
        vals = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in vals.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
        elif self._wb is not None:
            if prefix not in self._axes:  # each prefix has its own x axis (evaluation runs restart at epoch 1)
                self._wb.define_metric(f"{prefix}/{axis}")
                self._wb.define_metric(f"{prefix}/*", step_metric=f"{prefix}/{axis}")
                self._axes.add(prefix)
            self._wb.log({**{f"{prefix}/{k}": v for k, v in vals.items()}, f"{prefix}/{axis}": int(step)})

    def image(self, tag, path, step=0):
        """The image file at `path` (a grid, a figure) under `tag`."""
        if self.kind == "none" or path is None or not os.path.isfile(path):
            return
        if self._tb is not None:
            import numpy as np
            from PIL import Image
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
            self._tb.add_image(tag, arr, int(step), dataformats="HWC")
        else:
            import wandb
            self._wb.log({tag: wandb.Image(path)})

    def close(self):
        if self._tb is not None:
            self._tb.close()
        if self._wb is not None:
            self._wb.finish()
        self._tb = self._wb = None
