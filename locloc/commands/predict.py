"""``locloc predict``: class and box for images, as JSON lines, with optional overlays."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "predict"
HELP = "predict class and box for an image, a folder or a glob"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="images to predict")
    p.add_argument("--model-dir", required=True, help="a project model directory (locloc convert / train / demo)")
    p.add_argument("--out", default="-", help="JSON-lines output file ('-' = stdout)")
    p.add_argument("--save-vis", default=None, metavar="DIR", help="write heatmap+box overlays (PNG) here")
    p.add_argument("--threshold", type=float, default=None, help="box threshold (default: the model's)")
    p.add_argument("--view", choices=("full", "crop"), default="full",
                   help="full: the whole image resized to the input size; crop: eval transform (centre crop)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on recent CPUs/GPUs)")
    p.add_argument("--boxes-only", action="store_true",
                   help="skip the classifier (fast mode): boxes only, no class")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..api import LocLoc
    from ..data.folder import list_images
    from ..errors import ConfigError
    from ..fileio import atomic_write, open_image
    from ..viz import overlay, save_png

    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        raise ConfigError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths: list[Path] = []
    skipped = 0
    for spec in args.inputs:
        found = list_images(spec)
        paths.extend(found.paths)
        skipped += found.skipped
    model = LocLoc.from_pretrained(
        args.model_dir, device=args.device, view=args.view, threshold=args.threshold,
        amp_dtype=torch.bfloat16 if args.bf16 else None, boxes_only=args.boxes_only,
    )
    vis_dir = Path(args.save_vis) if args.save_vis else None
    used: set[str] = set()
    lines = []
    for pred in model.predict_many(paths, batch_size=args.batch_size):
        lines.append(json.dumps(pred.to_json()))
        if args.out == "-":
            print(lines[-1], flush=True)
        if vis_dir is not None:
            img = np.asarray(open_image(pred.path))
            cap = f"{pred.class_name} {pred.score:.2f}" if pred.class_name else None
            name = Path(pred.path).stem + ".png"
            k = 1
            while name in used:  # same file name in two folders: keep both overlays
                k += 1
                name = f"{Path(pred.path).stem}_{k}.png"
            used.add(name)
            save_png(vis_dir / name, overlay(img, pred.heatmap, [pred.box], label=cap))
    if args.out != "-":
        with atomic_write(args.out, "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    msg = f"predicted {len(lines)} image(s)"
    if skipped:
        msg += f"; skipped {skipped} non-image file(s)"
    if args.out != "-":
        msg += f"; wrote {args.out}"
    if vis_dir is not None:
        msg += f"; overlays in {vis_dir}"
    print(msg, file=sys.stderr)
    return 0
