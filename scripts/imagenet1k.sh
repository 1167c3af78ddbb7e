#!/usr/bin/env bash
# Reproduce Table 4 on ImageNet-1K (configs/imagenet1k.yaml, RDED protocol): bash scripts/imagenet1k.sh IMAGENET_DIR [OUT_DIR] [--dry-run] [--config X.yaml]
exec bash "$(dirname "$0")/run_subset.sh" imagenet1k "$@"
