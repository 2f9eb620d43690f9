#!/usr/bin/env bash
# Evaluate the reference release's ILSVRC checkpoints (thin wrapper over `locloc evaluate`).
# Usage: scripts/eval_ilsvrc.sh [ILSVRC_ROOT [BACKBONE CLASSIFIER LOCATOR]] [extra flags]
# or set ILSVRC_ROOT, BACKBONE, CLASSIFIER, LOCATOR in the environment. Add --first-box-only
# for the reference's protocol (first GT box only); the default uses every GT box.
set -euo pipefail
ILSVRC_ROOT="${1:-${ILSVRC_ROOT:-}}"
BACKBONE="${2:-${BACKBONE:-log/deit_small_patch16_224.pth}}"
CLASSIFIER="${3:-${CLASSIFIER:-log/ILSVRC_cls.pth}}"
LOCATOR="${4:-${LOCATOR:-log/ILSVRC_loc.pth}}"
if [ -z "$ILSVRC_ROOT" ]; then
  echo "usage: $0 ILSVRC_ROOT [BACKBONE CLASSIFIER LOCATOR]   (or set ILSVRC_ROOT=...)" >&2
  exit 2
fi
shift $(( $# < 4 ? $# : 4 ))
exec locloc evaluate --model deit_small_lctr --data-set ILSVRC --data-path "$ILSVRC_ROOT" \
  --resume "$BACKBONE" --classifier "$CLASSIFIER" --locator "$LOCATOR" "$@"
