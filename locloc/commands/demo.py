"""``locloc demo``: the whole method on the embedded synthetic default, on a CPU."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole method on generated data and write a report (CPU, minutes)"
DESCRIPTION = (
    "Generate a synthetic CUB-layout data set, train a small ViT on its class labels, freeze "
    "it, then run LocLoc's four stages (GrabCut masks, GEG generator, LFDM classifier, "
    "evaluation with baselines) and write report.html + metrics.json. About 6 minutes on 2 "
    "CPU cores (--quick: under 2)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="locloc-demo", help="output directory (a rerun resumes finished stages)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke tests)")
    p.add_argument("--data-path", default=None,
                   help="run the same recipe on this CUB-layout data set instead of generated data")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..demo import format_demo_table, run_demo

    if args.device is None and not torch.cuda.is_available():
        args.device = "cpu"
    metrics = run_demo(args.out, seed=args.seed, quick=args.quick, data_path=args.data_path,
                       device=args.device, progress=not args.no_progress)
    print()
    print(format_demo_table(metrics))
    print(f"\ntotal {metrics['timings_s']['total']:.0f} s; report: {metrics['report']}")
    print(f"model: {metrics['model_dir']}  (try: locloc predict IMAGE --model-dir {metrics['model_dir']})")
    return 0
