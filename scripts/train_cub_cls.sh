#!/usr/bin/env bash
# Stage classifier on CUB-200-2011 with the reference hyper-parameters (configs/classifier_cub.yaml) via torchrun.
# DATA, MASKS, WEIGHTS, OUT (and NGPUS, default 4) from the environment; --help for details.
LOCLOC_SCRIPT="$0" exec "$(dirname "$0")/_train.sh" classifier classifier_cub CUB-200-2011 "$@"
