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

CUB_THRESHOLDS = (0.45, 0.48, 0.50, 0.51, 0.52, 0.53)
ILSVRC_THRESHOLDS = (0.30, 0.34, 0.38, 0.40, 0.42, 0.45)
REFERENCE_MODELS = {"deit_small_lctr": "deit_small_patch16_224"}


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
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
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


def _load_model(args: argparse.Namespace):
    from ..errors import ConfigError
    from ..models.checkpoint import build_from_reference, load_model_dir

    if args.model_dir:
        if any([args.resume, args.classifier, args.locator]):
            raise ConfigError("give either --model-dir or the reference files (--resume/--classifier/--locator), not both")
        return load_model_dir(args.model_dir, device="cpu")
    missing = [f for f, v in (("--resume", args.resume), ("--classifier", args.classifier), ("--locator", args.locator)) if not v]
    if missing:
        raise ConfigError(
            "no model given: pass --model-dir DIR, or the reference release's files with "
            f"--resume/--classifier/--locator (missing: {', '.join(missing)})"
        )
    name = REFERENCE_MODELS.get(args.model or "deit_small_lctr")
    if name is None:
        raise ConfigError(f"--model {args.model!r} is not a reference model; known: {', '.join(REFERENCE_MODELS)}")
    model = build_from_reference(args.resume, args.classifier, args.locator, backbone_name=name,
                                 generator=args.locator_type)
    return model, {}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..api import default_device
    from ..data import load_dataset
    from ..data.datasets import check_images, skipped_message, worker_errors
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
    from ..engine.evaluate import evaluate, format_reference, format_table, write_results
    from ..errors import ConfigError, DataError
    from ..metrics import choose_threshold, heldout_protocol

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.thresholds and not all(0.0 <= t < 1.0 for t in args.thresholds):
        raise ConfigError(f"--thresholds must be in [0, 1), got {args.thresholds}")
    kind = {"CUB": "cub", "IMNET": "ilsvrc", "ILSVRC": "ilsvrc"}.get(args.data_set or "", "auto")
    data = load_dataset(args.data_path, kind=kind, images_root=args.images_root)
    split = args.split or ("test" if "test" in data.splits else next(iter(data.splits)))
    samples = data.split(split)
    select = data.split(args.threshold_split) if args.threshold_split else None
    if args.threshold_split == split:
        raise ConfigError(f"--threshold-split {split} is the evaluated split itself; choose another (e.g. val)")
    if args.limit:
        samples = samples[: args.limit]
    skipped: list[str] = []
    if args.skip_bad:
        samples, skipped = check_images(samples, workers=max(1, args.workers))
        if not samples:
            raise DataError(f"{args.data_path}: no readable images in split {split!r} ({skipped_message(skipped)})")
    model, config = _load_model(args)
    inp = config.get("input", {})
    crop = int(inp.get("crop", getattr(model.backbone, "img_size", (224, 224))[0]))
    resize = int(inp.get("resize", round(crop * 256 / 224)))
    norm = config.get("normalization", {})
    transform = EvalTransform(
        resize=resize, crop=crop, mean=norm.get("mean", IMAGENET_MEAN), std=norm.get("std", IMAGENET_STD),
        box_mapping=args.box_mapping,
    )
    thresholds = args.thresholds or config.get("thresholds", {}).get("sweep") or (
        ILSVRC_THRESHOLDS if data.name.lower().startswith("ilsvrc") else CUB_THRESHOLDS
    )
    class_names = config.get("class_names") or data.classes
    device = torch.device(args.device) if args.device else default_device()
    common = dict(
        transform=transform, thresholds=thresholds, device=device, batch_size=args.batch_size,
        workers=args.workers, first_box_only=args.first_box_only,
        amp_dtype=torch.bfloat16 if args.bf16 else None, metric_workers=args.metric_workers,
    )
    proto = None
    chosen = None
    if select is not None:
        print(f"choosing the box threshold on {len(select)} images of {data.name} ({args.threshold_split})",
              file=sys.stderr)
        with worker_errors():  # GT-known Loc needs no class: the classifier is skipped here
            sel = evaluate(model, select, boxes_only=True, **common)
        chosen = choose_threshold(sel.metrics)
    print(f"evaluating {len(samples)} images of {data.name} ({split}) on {device}", file=sys.stderr)
    with worker_errors():
        result = evaluate(
            model, samples, class_names=class_names, boxes_only=args.boxes_only, row_threshold=chosen, **common,
        )
    if select is not None:
        proto = heldout_protocol(sel.metrics, result.metrics)
        proto["threshold_chosen_on"] = f"split {args.threshold_split!r}"
        result.metrics["test_sweep_best_optimistic"] = proto["test_sweep_best_optimistic"]
        result.metrics["best"] = proto["test_at_heldout_threshold"]
        result.metrics["best_selection"] = (
            f"threshold chosen on split {args.threshold_split!r} (max GT-known Loc there, "
            f"{len(select)} images)"
        )
        result.metrics["threshold_protocol"] = proto
    th_cfg = config.get("thresholds") or {}
    if select is None and "default" in th_cfg:
        # the threshold stored with the model (chosen on its validation split during training)
        rows = [r for r in result.metrics["per_threshold"] if abs(r["threshold"] - th_cfg["default"]) < 1e-9]
        if rows:
            result.metrics["at_model_threshold"] = {**rows[0], "chosen_on": th_cfg.get("chosen_on", "unknown")}
    result.metrics.update(data_path=str(Path(args.data_path)), split=split, skipped_images=len(skipped))
    if args.model is not None:  # the reference's flags: its printout too
        print(format_reference(result.metrics))
    print(format_table(result.metrics))
    at = result.metrics.get("at_model_threshold")
    if at is not None:
        where = {"heldout": "held-out training images", "test": "the test images (optimistic)"}.get(
            at["chosen_on"], f"split {at['chosen_on']!r}")
        print(f"at the model's own threshold {at['threshold']:.2f} (chosen during training on {where}): "
              f"GT-known {at['gt_known_loc']:.2f}" + (f", Top-1 Loc {at['top1_loc']:.2f}" if at["top1_loc"] is not None else ""))
    if args.out:
        try:
            m, c = write_results(result, args.out)
        except OSError as e:  # disk full, permissions, --out names a file: nothing half-written
            raise DataError(
                f"{args.out}: cannot write metrics.json and per_image.csv here ({e.strerror or e})"
            ) from None
        print(f"wrote {m} and {c}", file=sys.stderr)
    if skipped:
        print(skipped_message(skipped), file=sys.stderr)
    return 0
