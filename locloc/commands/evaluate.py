"""``locloc evaluate``: Top-1/Top-5/GT-known Loc, Cls and MaxBoxAccV2 on a data set.

Takes a project model directory (``--model-dir``) or the reference release's three files
with the reference's flags (``--model deit_small_lctr --data-set CUB --resume BACKBONE
--classifier CLS --locator LOC``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "evaluate"
HELP = "evaluate a model on a data set with boxes (CUB, ILSVRC val, any CUB-layout folder)"



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-path", required=True, help="data set root (CUB layout, ILSVRC root, or CUB images/ folder)")
    p.add_argument("--model-dir", default=None, help="a project model directory")
    p.add_argument("--split", default=None, help="split to evaluate (default: test for CUB, val for ILSVRC)")
    p.add_argument("--images-root", default=None, metavar="DIR",
                   help="for wsolevaluation metadata (--data-path metadata/CUB): the images folder the "
                   "image ids are relative to (default: dataset/<NAME> beside metadata/<NAME>)")
    p.add_argument("--threshold-split", default=None, metavar="SPLIT",
                   help="choose the box threshold on this split (max GT-known Loc there; e.g. val, "
                   "wsolevaluation's train-fullsup) and report --split at it: the honest protocol. "
                   "Without it the best threshold is chosen on the evaluated split itself (optimistic)")
    p.add_argument("--out", default=None, metavar="DIR", help="write metrics.json and per_image.csv here")
    p.add_argument("--thresholds", type=float, nargs="+", default=None,
                   help="box thresholds (default: the model's sweep, else the reference's for the data set)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: 0 on CPU, where they would take cores from the "
                        "networks, 2 on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast mode; not bit-exact)")
    p.add_argument("--boxes-only", action="store_true",
                   help="skip the classifier (fast mode): boxes only, no class or Top-k Loc metrics")
    p.add_argument("--box-mapping", choices=("reference", "exact"), default="reference",
                   help="GT box mapping through resize+crop: the reference's integer arithmetic or exact")
    p.add_argument("--first-box-only", action="store_true",
                   help="score against the first GT box only (the reference's ILSVRC protocol)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--metric-workers", type=int, default=1, help="processes for box extraction")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) unreadable images instead of stopping at the first one")
    ref = p.add_argument_group("reference release flags (main_eval.py compatible)")
    ref.add_argument("--model", default=None, help="reference model name (deit_small_lctr)")
    ref.add_argument("--data-set", default=None, choices=("CUB", "IMNET", "ILSVRC"), help="reference data set name")
    ref.add_argument("--resume", default=None, help="backbone weights file (official DeiT-S)")
    ref.add_argument("--classifier", default=None, help="reference classifier checkpoint")
    ref.add_argument("--locator", default=None, help="reference generator checkpoint")
    ref.add_argument("--locator-type", choices=("auto", "unet", "deconv"), default="auto")
    ref.add_argument("--eval", action="store_true", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace):
    """The stage-4 config of the command line."""
    from ..engine.config import EvalConfig, load_config

    keys = ("data_path", "model_dir", "split", "images_root", "threshold_split", "out", "thresholds",
            "batch_size", "workers", "device", "bf16", "boxes_only", "box_mapping", "first_box_only",
            "limit", "metric_workers", "skip_bad", "data_set", "locator_type")
    values = {k: getattr(args, k) for k in keys}
    values.update(reference_model=args.model, reference_backbone=args.resume,
                  reference_classifier=args.classifier, reference_locator=args.locator)
    return load_config(EvalConfig, None, values)


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import skipped_message
    from ..engine.evaluate import evaluate, format_model_threshold, format_reference, format_table
    from ..errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.thresholds and not all(0.0 <= t < 1.0 for t in args.thresholds):
        raise ConfigError(f"--thresholds must be in [0, 1), got {args.thresholds}")
    cfg = config_from_args(args)
    result = evaluate(cfg)
    if args.model is not None:  # the reference's flags: its printout too
        print(format_reference(result.metrics))
    print(format_table(result.metrics))
    line = format_model_threshold(result.metrics)
    if line:
        print(line)
    if cfg.out:
        print(f"wrote {Path(cfg.out) / 'metrics.json'} and {Path(cfg.out) / 'per_image.csv'}", file=sys.stderr)
    if result.metrics.get("skipped"):
        print(skipped_message(result.metrics["skipped"]), file=sys.stderr)
    return 0
