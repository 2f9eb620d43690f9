"""``locloc train-generator``: stage 2, the GEG generator trained on the stage-1 masks."""

from __future__ import annotations

import argparse
import sys

NAME = "train-generator"
HELP = "train the localization generator (GEG) on stage-1 masks"
DESCRIPTION = (
    "Train the GEG generator with MSE against the stage-1 GrabCut masks on a frozen ViT "
    "backbone. Options left out take their value from --config, then from the reference "
    "recipe (AdamW, wd 0.05, base lr 1e-3 x global batch / 512, 20 epochs, batch 128 per "
    "process). Multi-GPU: launch with torchrun. Writes OUT/last.pt, best.pt, metrics.jsonl, "
    "config.yaml and the model directory OUT/model."
)

_EXTRA = [
    ("--generator", "generator", dict(choices=("unet", "deconv", "light"), help="generator architecture")),
    ("--cache-views", "cache_views", dict(type=int, metavar="V",
                                          help="precompute backbone features for V augmented views per image")),
    ("--mask-threshold", "mask_threshold", dict(type=float, help="binarize min-max normalised masks above this")),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..engine.config import add_train_arguments

    add_train_arguments(p, _EXTRA)


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import skipped_message, worker_errors
    from ..engine.config import GeneratorTrainConfig, config_from_args
    from ..engine.distributed import cleanup
    from ..engine.train_generator import train_generator

    cfg = config_from_args(GeneratorTrainConfig, args, tuple(key for _, key, _ in _EXTRA))
    try:
        with worker_errors():
            summary = train_generator(cfg, resume=args.resume)
    finally:
        cleanup()
    print(f"model written to {summary['model_dir']} (best gt_known_loc {summary['best_metric']})")
    if summary.get("skipped_images"):
        print(skipped_message(summary["skipped_images"]), file=sys.stderr)
    return 0
