#!/usr/bin/env bash
# Full-size rehearsal on CPU: DiT-XL/2 + SD-VAE at 256 px, random weights, through fine-tuning (kill -9 + resume),
# sampling (with and without mode guidance) and evaluation (IDC x 3 networks, RDED) -> OUT/report.json, REPORT.md.
#   bash scripts/rehearse.sh OUT [--threads 2] [--steps 2] [--sample_steps 2]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec python "$root/scripts/rehearse.py" "$@"
