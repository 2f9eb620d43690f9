#!/usr/bin/env bash
# Shared launcher of the four train_*.sh wrappers: torchrun + one trainer + one reference config.
# Usage (from a wrapper): exec "$(dirname "$0")/_train.sh generator|classifier CONFIG_NAME DATA_NAME "$@"
set -euo pipefail
STAGE="$1"; CONFIG="$2"; DATA_NAME="$3"; shift 3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CALLER="${LOCLOC_SCRIPT:-scripts/train.sh}"

usage() {
    cat >&2 <<USAGE
usage: DATA=DIR MASKS=DIR WEIGHTS=FILE OUT=DIR [NGPUS=4] $CALLER [locloc train-$STAGE options...]
Stage ${STAGE} on ${DATA_NAME} with the reference hyper-parameters (configs/${CONFIG}.yaml),
on \${NGPUS:-4} processes per node via torchrun. Extra options override the config.
  DATA     ${DATA_NAME} root
  MASKS    stage-1 mask store (\`locloc masks --data-path DATA --out MASKS ...\`)
  WEIGHTS  backbone weights file (official DeiT-S/16 or DINO ViT-S/16 checkpoint)
  OUT      run directory (checkpoints, metrics.jsonl, model)
  GENERATOR_DIR  (classifier only, optional) a train-generator OUT/model, merged into OUT/model
  NGPUS    processes per node (default 4); NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT for multi-node
USAGE
}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
for v in DATA MASKS WEIGHTS OUT; do
    if [[ -z "${!v:-}" ]]; then echo "error: $v is not set" >&2; usage; exit 2; fi
done
extra=()
if [[ "$STAGE" == "classifier" && -n "${GENERATOR_DIR:-}" ]]; then extra=(--generator-dir "$GENERATOR_DIR"); fi
exec "${TORCHRUN:-torchrun}" --nproc_per_node "${NGPUS:-4}" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m locloc "train-$STAGE" --config "$HERE/../configs/${CONFIG}.yaml" \
    --data-path "$DATA" --masks "$MASKS" --weights "$WEIGHTS" --out "$OUT" "${extra[@]}" "$@"
