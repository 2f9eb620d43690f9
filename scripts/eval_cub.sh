#!/usr/bin/env bash
# Evaluate the reference release's CUB checkpoints (thin wrapper over `locloc evaluate`).
# Usage: scripts/eval_cub.sh [CUB_ROOT [BACKBONE CLASSIFIER LOCATOR]] [extra locloc evaluate flags]
# or set CUB_ROOT, BACKBONE, CLASSIFIER, LOCATOR in the environment.
set -euo pipefail
CUB_ROOT="${1:-${CUB_ROOT:-}}"
BACKBONE="${2:-${BACKBONE:-log/deit_small_patch16_224.pth}}"
CLASSIFIER="${3:-${CLASSIFIER:-log/CUB_cls.pth}}"
LOCATOR="${4:-${LOCATOR:-log/CUB_loc.pth}}"
if [ -z "$CUB_ROOT" ]; then
  echo "usage: $0 CUB_ROOT [BACKBONE CLASSIFIER LOCATOR]   (or set CUB_ROOT=...)" >&2
  exit 2
fi
shift $(( $# < 4 ? $# : 4 ))
exec locloc evaluate --model deit_small_lctr --data-set CUB --data-path "$CUB_ROOT" \
  --resume "$BACKBONE" --classifier "$CLASSIFIER" --locator "$LOCATOR" "$@"
