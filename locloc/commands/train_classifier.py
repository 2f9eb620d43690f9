"""``locloc train-classifier``: stage 3, the LFDM classifier on masked images with local guides."""

from __future__ import annotations

import argparse
import sys

NAME = "train-classifier"
HELP = "train the classifier (LFDM) on masked images with local-area guides"
DESCRIPTION = (
    "Train the LFDM classifier on images multiplied by their stage-1 mask, with one random "
    "box left unmasked, on a frozen ViT backbone. Options left out take their value from "
    "--config, then from the reference recipe (AdamW, wd 0.05, base lr 1.5e-4 x global "
    "batch / 512, cosine with 5 warm-up epochs, 100 epochs, batch 128 per process, label "
    "smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1). Multi-GPU: launch with torchrun. "
    "Writes OUT/classifier.safetensors (+ .json); with --generator-dir also the full model "
    "directory OUT/model."
)

_EXTRA = [
    ("--generator-dir", "generator_dir", dict(metavar="DIR",
                                              help="train-generator model dir to merge into OUT/model")),
    ("--label-smoothing", "label_smoothing", dict(type=float)),
    ("--crop-scale", "crop_scale", dict(type=float, metavar="F",
                                        help="smallest area fraction of the random-resized crop (default 0.08, "
                                             "timm's; larger keeps more of each object's outline)")),
    ("--re-prob", "re_prob", dict(type=float, help="random erasing probability")),
    ("--mask-threshold", "mask_threshold", dict(type=float, help="binarize min-max normalised masks above this")),
    ("--classifier-depth", "classifier_depth", dict(type=int, metavar="N",
                                                    help="copy only the backbone's first N blocks (default: all; "
                                                         "fewer is faster on a CPU)")),
    ("--frozen-blocks", "frozen_blocks", dict(type=int, metavar="K",
                                              help="keep the first K copied blocks at the backbone's weights and "
                                                   "train only the rest + head (default 0; a deep backbone on a CPU)")),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..engine.config import add_train_arguments

    add_train_arguments(p, _EXTRA)
    p.add_argument("--no-local-guide", dest="local_guide", action="store_const", const=False, default=None,
                   help="mask the whole image (ablation: no local-area guide box)")


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import skipped_message, worker_errors
    from ..engine.config import ClassifierTrainConfig, config_from_args
    from ..engine.distributed import cleanup
    from ..engine.train_classifier import train_classifier

    keys = tuple(key for _, key, _ in _EXTRA) + ("local_guide",)
    cfg = config_from_args(ClassifierTrainConfig, args, keys)
    try:
        with worker_errors():
            summary = train_classifier(cfg, resume=args.resume)
    finally:
        cleanup()
    where = summary.get("model_dir") or summary["classifier"]
    print(f"written to {where} (best top1_cls {summary['best_metric']})")
    if summary.get("skipped_images"):
        print(skipped_message(summary["skipped_images"]), file=sys.stderr)
    return 0
