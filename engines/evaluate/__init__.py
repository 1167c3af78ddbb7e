"""The evaluation engine (evaluate.py): schema.py (keys, checks across keys), run.py (data, selection, repeats,
records), state.py (the resumable state of one training run), and the protocols: loop.py (the training loop both
share), idc.py (SPEC §5), rded.py (SPEC §9), common.py (devices, data paths, accuracy). Importing the package loads
no torch: `main` parses and validates first."""
from engines.evaluate.schema import CONFIG, check_config
from utils.config import parse_config
from utils.preempt import watch

DESCRIPTION = ("Evaluate a (distilled) image folder: train networks from scratch on it (IDC protocol, or RDED's soft "
               "labels).")


def main(argv=None):
    cfg = parse_config(CONFIG, argv, description=DESCRIPTION, prog="evaluate.py", section="evaluate")
    check_config(cfg)
    from engines.evaluate.run import run_evaluation  # torch: only after the config is known to be valid
    with watch():  # SIGTERM / SIGUSR1: save the state, exit 75 (utils/preempt.py)
        summary = run_evaluation(**cfg, config=dict(cfg))
    for arch, s in summary.items():
        if arch != "mmd":
            print(f"{arch}: best {s['best_mean']:.2f} ± {s['best_std']:.2f}  last {s['last_mean']:.2f} ± "
                  f"{s['last_std']:.2f}  (n={s['n_runs']})")
