#!/usr/bin/env bash
# Shared body of scripts/<subset>.sh: fine-tune -> sample IPC 100 -> evaluate (+ baselines) -> tables.
#   bash scripts/run_subset.sh SUBSET IMAGENET_DIR [OUT_DIR] [--dry-run] [--config EXTRA.yaml ...] [--launcher slurm]
# IMAGENET_DIR holds train/<wnid>/ and val/<wnid>/. GPUs: all visible ones (NGPU=k to choose). Rerun to continue.
# --launcher slurm: every step a batch job (the slurm: block of a --config file; README "On a SLURM cluster").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
subset=${1:?usage: bash scripts/run_subset.sh SUBSET IMAGENET_DIR [OUT_DIR] [--dry-run] [--config EXTRA.yaml ...]}
shift
if [ $# -lt 1 ] || [[ "$1" == --* ]]; then
  echo "usage: bash scripts/$subset.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config EXTRA.yaml ...] [--launcher slurm]" >&2
  exit 2
fi
imagenet=$1; shift
out=results/$subset
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then out=$1; shift; fi
# PYTHON: the interpreter to use (default: python on PATH; the tests pass the one running them)
exec "${PYTHON:-python}" "$root/scripts/reproduce.py" --subset "$subset" --imagenet "$imagenet" --out "$out" "$@"
