"""Benchmark harness: `python benchmarks/run.py STAGE [args]` runs benchmarks/bench_<STAGE>.py's main(args), which
prints a table and appends it to benchmarks/RESULTS.md. `python benchmarks/run.py STAGE --help` lists its options."""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.errors import UserError, run_cli  # noqa: E402

STAGES = ("dit", "train", "sample", "evaluate", "evaluate_rded", "latent_cache", "imagenet1k", "gpu")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python benchmarks/run.py STAGE [args]   (STAGE: {', '.join(STAGES)})")
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        raise UserError(f"unknown benchmark stage '{stage}'; choose one of {', '.join(STAGES)}")
    if not os.path.isfile(os.path.join(ROOT, "benchmarks", f"bench_{stage}.py")):
        raise UserError(f"benchmarks/bench_{stage}.py does not exist yet; run another stage ({', '.join(STAGES)})")
    importlib.import_module(f"benchmarks.bench_{stage}").main(rest)


if __name__ == "__main__":
    run_cli(main)
