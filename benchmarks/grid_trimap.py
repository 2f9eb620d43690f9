"""Grid over the GrabCut trimap rules on real ViT attention, scored against GT boxes/masks.

    python benchmarks/grid_trimap.py --data-path locloc-demo/data \
        --weights locloc-demo/backbone/backbone.safetensors [--split train] [--n 160]

Prints, per trimap (fg / bg / mid fractions of the normalised attention), the fraction of
images whose mask box has IoU >= 0.5 with the GT box, the mean box IoU and the mean mask IoU,
beside the raw thresholded attention. The defaults of ``TrimapConfig`` come from this grid
(see its docstring).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from locloc.data import load_dataset
from locloc.fileio import open_image
from locloc.masks.grabcut import GrabCutMasker, TrimapConfig, attention_mask
from locloc.masks.quality import MaskQuality, read_gt_mask
from locloc.masks.runner import attention_grids, load_backbone_batch
from locloc.models.backbone import build_backbone

GRID = [(0.8, 0.2, 0.5), (0.4, 0.02, 0.1), (0.5, 0.0, 0.05), (0.5, 0.0, 0.1), (0.6, 0.0, 0.1),
        (0.7, 0.0, 0.1), (0.5, 0.0, 0.2), (0.6, 0.05, 0.15), (0.5, 0.0, 0.03), (0.6, 0.0, 0.03),
        (0.4, 0.0, 0.03), (0.3, 0.0, 0.03)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-path", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="locloc_vit_tiny_cs8")
    ap.add_argument("--backbone-kwargs", default="{}", help="JSON timm kwargs")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=80, help="images (every k-th of the split)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--attention-blocks", type=int, nargs="+", default=None,
                    help="blocks whose CLS attention is averaged (default: the backbone family's)")
    ap.add_argument("--rules", nargs="+", default=None, metavar="FG/BG/MID",
                    help="trimap rules to try instead of the built-in grid, e.g. 0.6/0/0.03 0.5/0/0.2")
    ap.add_argument("--open", type=float, nargs="+", default=[0.02], metavar="FRAC",
                    help="mask opening fractions to try with each rule (GrabCutMasker open_frac; 0: none)")
    args = ap.parse_args()
    grid = [tuple(float(v) for v in r.split("/")) for r in args.rules] if args.rules else GRID

    data = load_dataset(args.data_path)
    samples = data.split(args.split)
    samples = samples[:: max(1, len(samples) // args.n)][: args.n]
    bb = build_backbone(args.backbone, args.weights, **json.loads(args.backbone_kwargs))
    if args.attention_blocks:
        bb.attention_blocks = tuple(args.attention_blocks)
    grids = np.concatenate([attention_grids(bb, load_backbone_batch(samples[k:k + 32], bb))
                            for k in range(0, len(samples), 32)])
    images = [np.asarray(open_image(s.path)) for s in samples]
    gts = [read_gt_mask(s.mask_path, im.shape[:2]) if s.mask_path else None for s, im in zip(samples, images)]

    def score(fn) -> tuple[float, float, float | None]:
        q = MaskQuality()
        for s, im, a, gt in zip(samples, images, grids, gts):
            q.update(fn(im, a), s.boxes, gt)
        r = q.compute()
        return r["box_acc_50"], r["mean_box_iou"], r.get("mean_mask_iou")

    print(f"{len(samples)} images of {args.data_path} ({args.split}); backbone {args.backbone}, "
          f"attention blocks {list(bb.attention_blocks)}")
    print(f"{'method':34} {'box IoU>=.5':>11} {'box IoU':>8} {'mask IoU':>9} {'s':>6}")
    for t in (0.1, 0.2, 0.3, 0.5):
        t0 = time.perf_counter()
        r = score(lambda im, a, t=t: attention_mask(a, im.shape[:2], t))
        print(f"{f'thresholded attention {t}':34} {r[0]:11.3f} {r[1]:8.3f} {r[2] or float('nan'):9.3f} {time.perf_counter() - t0:6.1f}")
    for (fg, bg, mid), op in ((rule, op) for rule in grid for op in args.open):
        m = GrabCutMasker(TrimapConfig(fg_frac=fg, bg_frac=bg, mid_frac=mid), iterations=args.iterations,
                          open_frac=op)
        t0 = time.perf_counter()
        r = score(m.generate)
        name = f"grabcut {fg}/{bg}/{m.trimap_config.mid:.2f} open {op}"
        print(f"{name:34} {r[0]:11.3f} {r[1]:8.3f} {r[2] or float('nan'):9.3f} {time.perf_counter() - t0:6.1f}")


if __name__ == "__main__":
    main()
