"""IoU in both conventions, and the box-convention check at the metrics' boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["box_iou", "check_box_convention", "iou_reference"]


def check_box_convention(boxes: Any, what: str = "boxes") -> np.ndarray:
    """``boxes`` as ``(K, 4)`` float64 ``x0, y0, x1, y1`` with ``x1 >= x0`` and ``y1 >= y0``
    (locloc's one convention; CUB's ``x, y, w, h`` must be converted first). Raises
    ``ValueError`` naming ``what`` otherwise, as wsolevaluation checks its boxes."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError(f"{what} must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0, got {b.tolist()}")
    return b


def box_iou(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU of every box in ``a`` (N x 4) with every box in ``b`` (M x 4) -> N x M float64.

    Boxes are ``x0, y0, x1, y1``. ``plus_one=False`` is the LocLoc reference convention
    (area ``(x1 - x0) * (y1 - y0)``); ``plus_one=True`` is wsolevaluation's (``+1`` on every
    width and height). A pair whose union is not positive has IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    one = 1.0 if plus_one else 0.0
    a_, b_ = a[:, None, :], b[None, :, :]
    iw = np.maximum(0.0, np.minimum(a_[..., 2], b_[..., 2]) - np.maximum(a_[..., 0], b_[..., 0]) + one)
    ih = np.maximum(0.0, np.minimum(a_[..., 3], b_[..., 3]) - np.maximum(a_[..., 1], b_[..., 1]) + one)
    inter = iw * ih
    area_a = (a_[..., 2] - a_[..., 0] + one) * (a_[..., 3] - a_[..., 1] + one)
    area_b = (b_[..., 2] - b_[..., 0] + one) * (b_[..., 3] - b_[..., 1] + one)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def iou_reference(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two single boxes ``x0, y0, x1, y1`` exactly as the reference ``utils.IoU``
    (no ``+1``; intersection ``max(0, w) * max(0, h)``)."""
    return float(box_iou(np.asarray(a), np.asarray(b), plus_one=False)[0, 0])
