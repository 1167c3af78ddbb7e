#!/usr/bin/env bash
# Reproduce the paper on imagenet100 (configs/imagenet100.yaml): bash scripts/imagenet100.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config X.yaml]
exec bash "$(dirname "$0")/run_subset.sh" imagenet100 "$@"
