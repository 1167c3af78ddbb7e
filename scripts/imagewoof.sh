#!/usr/bin/env bash
# Reproduce the paper on imagewoof: fine-tune -> sample IPC 100 -> evaluate (+ baselines) -> tables.
#   bash scripts/imagewoof.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config EXTRA.yaml ...]
# IMAGENET_DIR holds train/<wnid>/ and val/<wnid>/. GPUs: all visible ones (NGPU=k to choose). Rerun to continue.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [[ "$1" == --* ]]; then
  echo "usage: bash scripts/imagewoof.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config EXTRA.yaml ...]" >&2; exit 2
fi
imagenet=$1; shift
out=results/imagewoof
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then out=$1; shift; fi
exec python "$root/scripts/reproduce.py" --subset imagewoof --imagenet "$imagenet" --out "$out" "$@"
