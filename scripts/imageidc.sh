#!/usr/bin/env bash
# Reproduce the paper on imageidc (configs/imageidc.yaml): bash scripts/imageidc.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config X.yaml]
exec bash "$(dirname "$0")/run_subset.sh" imageidc "$@"
