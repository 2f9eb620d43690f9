"""How good are the stage-1 masks? IoU with GT boxes and GT masks, vs raw attention.

Box of a mask: the bounding rectangle ``[x, y, x + w, y + h]`` (exclusive right/bottom
edge) of its **largest 8-connected component** by pixel count — the same single-box rule as
the evaluation (largest contour), so stray blobs do not inflate the box. IoU follows the
reference: no ``+1`` in widths. An image's box IoU is the best over its GT boxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from ..fileio import write_json
from ..metrics import box_iou as metrics_box_iou

IOU_THRESHOLD = 0.5


def mask_box(mask: np.ndarray) -> np.ndarray:
    """``(4,)`` float64 ``x0, y0, x1, y1`` of the mask's largest 8-connected component (the
    box convention of every box in locloc); zeros when empty."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if not m.any():
        return np.zeros(4, np.float64)
    n, _, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    k = 1 + int(np.argmax(st[1:n, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in st[k, :4])
    return np.array([x, y, x + w, y + h], np.float64)


def box_iou(box: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` box with ``(K, 4)`` boxes (reference convention, no +1): ``(K,)``
    (:func:`locloc.metrics.box_iou`, one row)."""
    return metrics_box_iou(np.asarray(box, np.float64).reshape(1, 4), gt)[0]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel IoU of two same-shape binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class MaskQuality:
    """Accumulates per-image box IoU (vs GT boxes) and mask IoU (vs GT masks)."""

    def __init__(self) -> None:
        self.box_ious: list[float] = []
        self.mask_ious: list[float] = []

    def update(
        self, mask: np.ndarray, gt_boxes: np.ndarray | None = None, gt_mask: np.ndarray | None = None
    ) -> None:
        """``mask``, ``gt_mask``: ``H x W`` (same size, original pixels); ``gt_boxes``: ``(K, 4)``."""
        if gt_boxes is not None and len(gt_boxes):
            self.box_ious.append(float(box_iou(mask_box(mask), gt_boxes).max()))
        if gt_mask is not None:
            self.mask_ious.append(mask_iou(mask, gt_mask))

    def compute(self) -> dict[str, float | int | None]:
        b, m = np.asarray(self.box_ious), np.asarray(self.mask_ious)
        return {
            "n_boxes": int(b.size),
            "mean_box_iou": float(b.mean()) if b.size else None,
            "box_acc_50": float((b >= IOU_THRESHOLD).mean()) if b.size else None,
            "n_masks": int(m.size),
            "mean_mask_iou": float(m.mean()) if m.size else None,
        }


def read_gt_mask(path: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A GT mask PNG as ``H x W`` {0, 1} resized (nearest) to ``shape``; None if unreadable."""
    if path is None:
        return None
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        return None
    if m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return (m > 127).astype(np.uint8)


def quality_report(
    samples: Sequence[Any],
    store: Any,
    backbone: Any | None = None,
    attention_threshold: float = 0.5,
    batch_size: int = 32,
    device: Any = "cpu",
) -> dict[str, Any]:
    """Score the stored masks of ``samples`` (those with a mask) against their GT.

    With a ``backbone``, the raw thresholded attention (:func:`~.grabcut.attention_mask`
    at ``attention_threshold``) is scored on the same images as the baseline. Returns
    ``{"grabcut": {...}, "attention": {...} | None, "missing": int}``.
    """
    from .grabcut import attention_mask
    from .runner import attention_grids, load_backbone_batch

    have = [s for s in samples if store.has(s.relpath)]
    gc, att = MaskQuality(), MaskQuality()
    per_image: list[dict[str, Any]] = []
    for k in range(0, len(have), batch_size):
        batch = have[k : k + batch_size]
        grids = None
        if backbone is not None:
            grids = attention_grids(backbone, load_backbone_batch(batch, backbone), device)
        for j, s in enumerate(batch):
            m = store.read(s.relpath)
            gt = read_gt_mask(s.mask_path, m.shape)
            gc.update(m, s.boxes, gt)
            row: dict[str, Any] = {"image": s.relpath, "gt_boxes": np.asarray(s.boxes).tolist(),
                                   "grabcut_box": mask_box(m).tolist()}
            if len(s.boxes):
                row["grabcut_iou"] = float(box_iou(mask_box(m), s.boxes).max())
            if grids is not None:
                am = attention_mask(grids[j], m.shape, attention_threshold)
                att.update(am, s.boxes, gt)
                row["attention_box"] = mask_box(am).tolist()
                if len(s.boxes):
                    row["attention_iou"] = float(box_iou(mask_box(am), s.boxes).max())
            per_image.append(row)
    return {
        "grabcut": gc.compute(),
        "attention": att.compute() if backbone is not None else None,
        "attention_threshold": attention_threshold if backbone is not None else None,
        "missing": len(samples) - len(have),
        "per_image": per_image,
    }


def format_report(report: dict[str, Any], per_image_limit: int = 50) -> str:
    """A small text table of :func:`quality_report`'s result; with at most
    ``per_image_limit`` images, one line per image too (boxes ``x0 y0 x1 y1`` and IoUs)."""

    def f(v: Any) -> str:
        return "   -  " if v is None else f"{v:6.3f}"

    rows = [("grabcut", report["grabcut"])]
    if report.get("attention"):
        rows.append((f"attention@{report['attention_threshold']:.2f}", report["attention"]))
    lines = [f"{'masks':<16}{'n':>6}{'box IoU':>10}{'IoU>=0.5':>10}{'mask IoU':>10}"]
    for name, r in rows:
        lines.append(
            f"{name:<16}{r['n_boxes']:>6}{f(r['mean_box_iou']):>10}"
            f"{f(r['box_acc_50']):>10}{f(r['mean_mask_iou']):>10}"
        )
    rows_ = report.get("per_image") or []
    if 0 < len(rows_) <= per_image_limit:
        def b(box: Any) -> str:
            return " ".join(f"{v:.0f}" for v in box)

        lines.append("")
        lines.append(f"{'image':<34}{'GrabCut box':>22}{'IoU':>7}{'attention box':>22}{'IoU':>7}")
        for r in rows_:
            ab = b(r["attention_box"]) if "attention_box" in r else "-"
            lines.append(f"{r['image'][-34:]:<34}{b(r['grabcut_box']):>22}{f(r.get('grabcut_iou')):>7}"
                         f"{ab:>22}{f(r.get('attention_iou')):>7}")
    return "\n".join(lines)


def write_report(path: Any, report: dict[str, Any]) -> None:
    """``report.json``, atomically."""
    write_json(path, report)


def grid_search_trimap(
    cases: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    fg_fracs: Sequence[float] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    bg_fracs: Sequence[float] = (0.1, 0.2, 0.3),
    border_fracs: Sequence[float] = (0.0, 0.03, 0.06),
    iterations: int = 5,
    work_size: int | None = 256,
) -> list[dict[str, float]]:
    """Mean mask IoU and box accuracy per trimap rule over ``(image, attention, gt_mask)``.

    ``image``: ``H x W x 3`` uint8 RGB; ``attention``: ``gh x gw``; ``gt_mask``: ``H x W``.
    Returns one row per (fg, bg, border) with ``mask_iou``, ``box_iou``, ``box_acc_50`` and
    ``fallbacks``, sorted by ``mask_iou`` descending.
    """
    from .grabcut import GrabCutMasker, TrimapConfig

    cases = list(cases)
    rows = []
    for fg in fg_fracs:
        for bg in bg_fracs:
            if bg >= fg:
                continue
            for border in border_fracs:
                trimap = TrimapConfig(fg_frac=fg, bg_frac=bg, border_frac=border)
                masker = GrabCutMasker(trimap, iterations, work_size)
                q = MaskQuality()
                for image, attention, gt in cases:
                    ys, xs = np.nonzero(gt)
                    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
                    q.update(masker.generate(image, attention), box, gt)
                r = q.compute()
                rows.append(
                    {
                        "fg_frac": fg,
                        "bg_frac": bg,
                        "border_frac": border,
                        "mask_iou": r["mean_mask_iou"],
                        "box_iou": r["mean_box_iou"],
                        "box_acc_50": r["box_acc_50"],
                        "fallbacks": masker.stats["total"] - masker.stats["grabcut"],
                    }
                )
    rows.sort(key=lambda r: -r["mask_iou"])
    return rows
