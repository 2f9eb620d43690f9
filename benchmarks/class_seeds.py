"""Stage 1 with and without class-aware seeds, scored against the GT boxes and masks.

    python benchmarks/class_seeds.py --data-path locloc-demo/data --weights vit_s14.safetensors \
        --backbone vit_small_patch14_dinov2 --backbone-kwargs '{"img_size": 224}' [--split train]

Runs ``locloc masks --report`` twice on the split (the paper's attention seeds; then
``--class-seeds``: round 1, the patch probe, round 2) into temporary stores and prints, per
run, the share of images whose mask box has IoU >= 0.5 with the GT box, the mean box IoU,
the mean mask IoU (where GT masks exist) and the wall time; then the same for the round-1
masks the probe learned from. The figures in ``locloc/masks/refine.py`` come from this script's
logic on the demo's data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from locloc.data import load_dataset
from locloc.engine.config import MaskConfig
from locloc.masks.quality import quality_report
from locloc.masks.refine import ROUND1_DIR
from locloc.masks.stage import build_mask_backbone, generate_masks
from locloc.masks.store import MaskStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-path", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="vit_small_patch14_dinov2")
    ap.add_argument("--backbone-kwargs", default='{"img_size": 224}', help="JSON timm kwargs")
    ap.add_argument("--split", default="train")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    base = dict(data_path=args.data_path, split=args.split, backbone=args.backbone,
                backbone_kwargs=json.loads(args.backbone_kwargs), weights=args.weights, workers=args.workers)
    backbone = build_mask_backbone(MaskConfig(**base))
    samples = load_dataset(args.data_path).split(args.split)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("attention seeds (paper)", {}), ("class seeds (round 2)", {"class_seeds": True})):
            out = Path(tmp) / name.split()[0]
            t0 = time.perf_counter()
            generate_masks(MaskConfig(out=str(out), **base, **extra), backbone=backbone, progress=False,
                           log=lambda _m: None)
            rows.append((name, quality_report(samples, MaskStore(out))["grabcut"], time.perf_counter() - t0))
            if extra:
                r1 = MaskStore(out / ROUND1_DIR)
                rows.append(("  its round 1 (probe's labels)", quality_report(samples, r1)["grabcut"], None))
    print(f"{len(samples)} images of {args.data_path} ({args.split}); backbone {args.backbone}")
    print(f"{'stage 1':32} {'box IoU>=.5':>11} {'box IoU':>8} {'mask IoU':>9} {'s':>7}")
    for name, q, s in rows:
        mi = q.get("mean_mask_iou")
        print(f"{name:32} {q['box_acc_50']:11.3f} {q['mean_box_iou']:8.3f} "
              f"{(f'{mi:9.3f}' if mi is not None else f'{chr(45):>9}')} {(f'{s:7.1f}' if s else f'{chr(45):>7}')}")


if __name__ == "__main__":
    main()
