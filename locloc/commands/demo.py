"""``locloc demo``: the whole method on the embedded synthetic default, on a CPU."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole method on generated data and write a report (CPU, minutes)"
DESCRIPTION = (
    "Generate a synthetic CUB-layout data set and run LocLoc's four stages (GrabCut masks, GEG "
    "generator, LFDM classifier, evaluation with baselines) on a frozen pretrained backbone, "
    "then write report.html + metrics.json. The default backbone is the small ViT shipped with "
    "locloc, pretrained on synthetic classes disjoint from the demo's (no download). "
    "--backbone/--weights run the same recipe on any timm ViT (a local file or an opt-in "
    "hf-hub: name); --pretrain-backbone trains a small ViT on the data set's own labels instead."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="locloc-demo", help="output directory (a rerun resumes finished stages)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke tests)")
    p.add_argument("--data-path", default=None,
                   help="run the same recipe on this CUB-layout data set instead of generated data")
    p.add_argument("--backbone", default=None, metavar="NAME",
                   help="timm ViT name (default: the embedded locloc_vit_tiny_cs8); needs --weights")
    p.add_argument("--weights", default=None, metavar="FILE|hf-hub:NAME",
                   help="backbone weights: a local file, or hf-hub:ORG/NAME (opt-in download)")
    p.add_argument("--backbone-kwargs", default=None, metavar="JSON",
                   help='extra timm arguments, e.g. \'{"img_size": 224}\'')
    p.add_argument("--classifier-depth", type=int, default=None, metavar="N",
                   help="backbone blocks the LFDM classifier copies (default: all; fewer is faster on CPU)")
    p.add_argument("--frozen-blocks", type=int, default=None, metavar="K",
                   help="keep the classifier's first K copied blocks fixed, train the rest + head "
                        "(default: with --weights, on a CPU, for the synthetic data all but the last 2; else 0)")
    p.add_argument("--classifier-lr", type=float, default=None, metavar="LR",
                   help="the LFDM classifier's learning rate (default: 5e-4; 5e-5 when more than the "
                        "last 2 blocks of a backbone given with --weights train)")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default=None,
                   help="stages 2-3 precision: bf16 autocast needs a CPU with native bf16 or CUDA "
                        "(default auto: fp32 on CPU)")
    p.add_argument("--class-seeds", dest="class_seeds", action="store_true", default=None,
                   help="stage 1 adds a GrabCut round seeded by a patch probe trained with the labels "
                        "(default: on with --weights, off for the embedded backbone)")
    p.add_argument("--no-class-seeds", dest="class_seeds", action="store_false",
                   help="stage 1 from the attention alone, as in the paper")
    p.add_argument("--pretrain-backbone", action="store_true",
                   help="train a small ViT on the data set's labels first (today's pre-0.2 path)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import torch

    from ..demo import DemoRecipe, embedded_backbone_advice, format_demo_table, run_demo
    from ..errors import ConfigError

    if args.device is None and not torch.cuda.is_available():
        args.device = "cpu"
    recipe = DemoRecipe.quick() if args.quick else DemoRecipe()
    changes: dict = {"pretrain_backbone": args.pretrain_backbone}
    if args.backbone is not None or args.weights is not None:
        if args.pretrain_backbone:
            raise ConfigError("--pretrain-backbone trains its own weights; drop --backbone/--weights")
        if args.backbone is None or args.weights is None:
            raise ConfigError("--backbone and --weights go together (e.g. --backbone vit_small_patch14_dinov2 "
                              "--weights vit_s14.safetensors --backbone-kwargs '{\"img_size\": 224}')")
        changes.update(backbone=args.backbone, weights=args.weights)
    if args.backbone_kwargs is not None:
        try:
            kw = json.loads(args.backbone_kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--backbone-kwargs is not valid JSON ({e.msg}): {args.backbone_kwargs}") from None
        if not isinstance(kw, dict):
            raise ConfigError(f"--backbone-kwargs must be a JSON object, got {args.backbone_kwargs}")
        changes["backbone_kwargs"] = kw
    if args.classifier_depth is not None:
        changes["classifier_depth"] = args.classifier_depth
    if args.frozen_blocks is not None:
        changes["classifier_frozen_blocks"] = args.frozen_blocks
    if args.classifier_lr is not None:
        if not args.classifier_lr > 0 or args.classifier_lr == float("inf"):
            raise ConfigError(f"--classifier-lr must be a positive number, got {args.classifier_lr}")
        changes["classifier_lr"] = args.classifier_lr
    if args.amp is not None:
        changes["amp"] = args.amp
    if args.class_seeds is not None:
        changes["class_seeds"] = args.class_seeds
    recipe = dataclasses.replace(recipe, **changes)
    metrics = run_demo(args.out, seed=args.seed, quick=args.quick, data_path=args.data_path,
                       recipe=recipe, device=args.device, progress=not args.no_progress)
    print()
    print(format_demo_table(metrics))
    print(f"\ntotal {metrics['timings_s']['total']:.0f} s; report: {metrics['report']}")
    print(f"model: {metrics['model_dir']}  (try: locloc predict IMAGE --model-dir {metrics['model_dir']})")
    advice = embedded_backbone_advice(metrics)
    if advice:
        print(f"\n{advice}")
    return 0
