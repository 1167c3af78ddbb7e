"""The fine-tuning engine (train_minimax.py): schema.py (keys, checks across keys), run.py (the training loop,
Difffit + minimax, DDP, latent cache), state.py (checkpoint, EMA, RNG streams, the data order). Importing the
package loads no torch: `main` parses and validates first."""
from engines.train.schema import CONFIG, check_config
from utils.config import parse_config
from utils.preempt import watch

DESCRIPTION = ("Minimax fine-tuning of a pretrained DiT (Gu et al., CVPR 2024), or base training of a tiny DiT for "
               "demos.")


def main(argv=None):
    cfg = parse_config(CONFIG, argv, description=DESCRIPTION, prog="train_minimax.py", section="train")
    check_config(cfg)  # across keys (batch vs processes, CUDA present)
    from engines.train.run import train  # after validation: --help and config errors stay instant (no torch yet)
    with watch():  # SIGTERM / SIGUSR1: save the state, exit 75 (utils/preempt.py)
        train(cfg)
