#!/usr/bin/env bash
# The CPU demo on scikit-learn's real handwritten digits: base DiT -> minimax fine-tune -> sample -> evaluate.
#   bash scripts/demo.sh [--out demo_out] [--ipc 10] [--quick]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec python "$root/scripts/demo.py" "$@"
