"""Which blocks' CLS attention should seed the GrabCut trimap? Scored against GT boxes.

    python benchmarks/grid_attention.py --data-path PHOTOS --weights vit_s14.safetensors \\
        --backbone vit_small_patch14_dinov2 --backbone-kwargs '{"img_size": 224}'

For each choice of blocks (their CLS->patch attention, heads averaged, then averaged over the
blocks) runs the default trimap + GrabCut on ``--n`` images of ``--split`` and prints the
fraction of images whose mask box has IoU >= 0.5 with the GT box and the mean box IoU; with
at most 10 images, the per-image IoUs too. ``default_attention_blocks`` in
``locloc/models/backbone.py`` comes from this grid.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from locloc.data import load_dataset
from locloc.fileio import open_image
from locloc.masks.grabcut import GrabCutMasker, TrimapConfig
from locloc.masks.quality import MaskQuality, box_iou, mask_box
from locloc.masks.runner import attention_grids, load_backbone_batch
from locloc.models.backbone import build_backbone

CHOICES = [(-1,), (-2,), (-3,), (-2, -1), (-3, -2, -1), (-4, -3, -2, -1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-path", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="vit_small_patch14_dinov2")
    ap.add_argument("--backbone-kwargs", default='{"img_size": 224}', help="JSON timm kwargs")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=120)
    args = ap.parse_args()

    samples = load_dataset(args.data_path).split(args.split)[: args.n]
    bb = build_backbone(args.backbone, args.weights, **json.loads(args.backbone_kwargs))
    images = [np.asarray(open_image(s.path)) for s in samples]
    batches = [load_backbone_batch(samples[k:k + 32], bb) for k in range(0, len(samples), 32)]
    masker = GrabCutMasker(TrimapConfig(), iterations=5, work_size=256, seed=0)
    print(f"{len(samples)} images of {args.data_path} ({args.split}); backbone {args.backbone}; default trimap")
    print(f"{'blocks':18} {'box IoU>=.5':>11} {'box IoU':>8}")
    for blocks in CHOICES:
        bb.attention_blocks = blocks
        grids = np.concatenate([attention_grids(bb, x) for x in batches])
        q, ious = MaskQuality(), []
        for s, im, g in zip(samples, images, grids):
            m = masker.generate(im, g)
            q.update(m, s.boxes)
            ious.append(float(box_iou(mask_box(m), s.boxes).max()))
        r = q.compute()
        extra = "  " + " ".join(f"{v:.2f}" for v in ious) if len(samples) <= 10 else ""
        print(f"{str(list(blocks)):18} {r['box_acc_50']:11.3f} {r['mean_box_iou']:8.3f}{extra}")


if __name__ == "__main__":
    main()
