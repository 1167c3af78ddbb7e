#!/usr/bin/env bash
# Reproduce the paper on imagenette (configs/imagenette.yaml): bash scripts/imagenette.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config X.yaml]
exec bash "$(dirname "$0")/run_subset.sh" imagenette "$@"
