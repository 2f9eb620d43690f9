#!/usr/bin/env bash
# Stage generator on ILSVRC-2012 with the reference hyper-parameters (configs/generator_ilsvrc.yaml) via torchrun.
# DATA, MASKS, WEIGHTS, OUT (and NGPUS, default 4) from the environment; --help for details.
LOCLOC_SCRIPT="$0" exec "$(dirname "$0")/_train.sh" generator generator_ilsvrc ILSVRC-2012 "$@"
