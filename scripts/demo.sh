#!/usr/bin/env bash
# The CPU demo on scikit-learn's real handwritten digits: base DiT -> Difffit fine-tunes (losses off / minimax)
# -> samples per seed -> ConvNet accuracy + MMD / representativeness / diversity per set -> demo_out/RESULTS.md.
#   bash scripts/demo.sh [--out demo_out] [--holdout test|val] [--ipcs 10,50] [--quick]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# PYTHON: the interpreter to use (default: python on PATH; the tests pass the one running them)
exec "${PYTHON:-python}" "$root/scripts/demo.py" "$@"
