#!/usr/bin/env bash
# Stage 3 (LFDM classifier) on CUB-200-2011
# with the reference hyper-parameters (configs/classifier_cub.yaml), on ${NGPUS:-4} GPUs via torchrun.
# Extra arguments go to `locloc train-classifier` and override the config (e.g. --epochs 1, --resume).
set -euo pipefail

usage() {
    cat >&2 <<'USAGE'
usage: DATA=DIR MASKS=DIR WEIGHTS=FILE OUT=DIR [NGPUS=4] scripts/train_cub_cls.sh [locloc train-classifier options...]
  DATA     CUB-200-2011 root
  MASKS    stage-1 mask store (`locloc masks --data-path DATA --out MASKS ...`)
  WEIGHTS  backbone weights file (official DeiT-S/16 or DINO ViT-S/16 checkpoint)
  OUT      run directory (checkpoints, metrics.jsonl, model)
  GENERATOR_DIR  optional: a train-generator OUT/model, merged into OUT/model
  NGPUS    processes per node (default 4); NNODES/NODE_RANK/MASTER_ADDR for multi-node
USAGE
}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
for v in DATA MASKS WEIGHTS OUT; do
    if [[ -z "${!v:-}" ]]; then echo "error: $v is not set" >&2; usage; exit 2; fi
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${TORCHRUN:-torchrun}" --nproc_per_node "${NGPUS:-4}" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m locloc train-classifier \
    --config "$HERE/../configs/classifier_cub.yaml" \
    --data-path "$DATA" --masks "$MASKS" --weights "$WEIGHTS" --out "$OUT" ${GENERATOR_DIR:+--generator-dir "$GENERATOR_DIR"} "$@"
