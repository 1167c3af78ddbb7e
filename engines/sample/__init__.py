"""The sampling engine (sample.py): schema.py (keys, checks across keys), run.py (the sampler and the folder it
fills), state.py (manifest and resume). Importing the package loads no torch: `main` parses and validates first."""
from engines.sample.schema import CONFIG, check_config
from utils.config import parse_config
from utils.preempt import watch

DESCRIPTION = ("Sample an IPC image folder <out>/<wnid>/<i>.png from a (fine-tuned) DiT, as the Minimax authors do "
               "(SPEC §4),")


def main(argv=None):
    cfg = parse_config(CONFIG, argv, description=DESCRIPTION, prog="sample.py", section="sample")
    check_config(cfg)
    from engines.sample.run import run  # torch: only after the config is known to be valid
    with watch():  # SIGTERM / SIGUSR1: save the state, exit 75 (utils/preempt.py)
        run(cfg)
