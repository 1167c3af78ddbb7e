#!/usr/bin/env bash
# Reproduce the paper on imagewoof (configs/imagewoof.yaml): bash scripts/imagewoof.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config X.yaml]
exec bash "$(dirname "$0")/run_subset.sh" imagewoof "$@"
