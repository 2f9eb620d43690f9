"""Accumulators (``update`` / ``compute``): GT-known / Top-1 / Top-5 Loc over a threshold
sweep, MaxBoxAccV2, PxAP, Top-k classification."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .iou import box_iou
from .maps import DEFAULT_SIZE, EMPTY_BOX_WSOL, _as_maps, _size_hw, normalize_map, threshold_level
from .sweep import BoxSweep, _gt_list, _SweepRunner

IOU_THRESHOLDS_V2 = (0.3, 0.5, 0.7)
BEST_SELECTION = "max gt_known_loc over thresholds (class-agnostic); ties -> first threshold"

__all__ = ["LocalizationAccumulator", "MaxBoxAccV2Accumulator", "PxAPAccumulator", "topk_classes", "topk_hits"]


def topk_classes(scores: Any, k: int = 5) -> np.ndarray:
    """``B x min(k, C)`` int64 class indices, best first, from ``B x C`` scores (torch or
    numpy); integer input of at most ``k`` columns is taken as indices already."""
    import torch

    if hasattr(scores, "detach"):
        t = scores.detach().cpu()
        if not t.is_floating_point():
            return t.numpy().astype(np.int64)[:, :k]
    else:
        arr = np.asarray(scores)
        if np.issubdtype(arr.dtype, np.integer) and arr.shape[1] <= k:
            return arr.astype(np.int64)
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t.float().topk(min(k, t.shape[1]), dim=1).indices.numpy().astype(np.int64)


def topk_hits(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 correct, top-5 correct) per image from ``B x C`` scores or ``B x k`` indices."""
    idx = topk_classes(scores, 5)
    lab = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels, dtype=np.int64).reshape(-1)
    if len(idx) != len(lab):
        raise ValueError(f"got {len(idx)} predictions for {len(lab)} labels")
    return idx[:, 0] == lab, (idx == lab[:, None]).any(axis=1)


def _pct(count: float, n: int) -> float:
    # count / n * 100, in this order, gives the reference's float64 values bit for bit.
    return float(count) / n * 100.0 if n else 0.0


class LocalizationAccumulator(_SweepRunner):
    """GT-known / Top-1 / Top-5 Loc over a threshold sweep, and Top-1 / Top-5 Cls.

    ``update(maps, gt_boxes, topk=None, labels=None)``; ``compute()``. Boxes follow
    ``box_rule``: ``"reference"`` (LocLoc: largest contour, IoU without ``+1``) or ``"wsol"``
    (wsolevaluation's single-box MaxBoxAcc: largest contour, clipped to ``W-1, H-1``,
    ``[0, 0, 0, 0]`` when empty, IoU with ``+1``). A box is correct when its best IoU over the
    image's GT boxes is ``>= iou_threshold``. Maps are normalised at ``size`` (H, W).
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        iou_threshold: float = 0.5,
        box_rule: str = "reference",
        size: int | Sequence[int] = DEFAULT_SIZE,
        workers: int = 1,
        maxboxacc_v2: MaxBoxAccV2Accumulator | None = None,
    ) -> None:
        if box_rule not in ("reference", "wsol"):
            raise ConfigError(f"box_rule must be 'reference' or 'wsol', got {box_rule!r}")
        if len(thresholds) == 0:
            raise ConfigError("the box threshold list is empty")
        self.thresholds = [float(t) for t in thresholds]
        for t in self.thresholds:
            threshold_level(t)
        self.iou_threshold = float(iou_threshold)
        self.box_rule = box_rule
        self.size = _size_hw(size)
        self.workers = int(workers)
        self.maxboxacc_v2 = maxboxacc_v2
        if maxboxacc_v2 is not None and maxboxacc_v2.size != self.size:
            raise ConfigError(f"map sizes differ: {self.size} here, {maxboxacc_v2.size} for MaxBoxAccV2")
        self._pool: Executor | None = None
        self._ious: list[np.ndarray] = []
        self._boxes: list[np.ndarray] = []
        self._top1: list[np.ndarray] = []
        self._top5: list[np.ndarray] = []
        self._has_cls: bool | None = None

    def update(self, maps: Any, gt_boxes: Any, topk: Any = None, labels: Any = None) -> None:
        """Add a batch. ``maps``: raw generator maps B x h x w; ``gt_boxes``: per image K x 4
        (crop px); ``topk``: B x k predicted class indices or B x C logits (None: no
        classifier); ``labels``: B (0-based). With an attached ``maxboxacc_v2`` accumulator,
        one contour search per map and level feeds both."""
        maps = _as_maps(maps)
        gts = _gt_list(gt_boxes, len(maps))
        v2 = self.maxboxacc_v2
        thresholds = self.thresholds + (v2.cam_thresholds if v2 is not None else [])
        sweep = self._sweep(maps, thresholds, gts if v2 is not None else None)
        self.update_from_sweep(sweep, gts, topk, labels)
        if v2 is not None:
            v2.update_from_sweep(sweep)

    def update_from_sweep(self, sweep: BoxSweep, gt_boxes: Any, topk: Any = None, labels: Any = None) -> None:
        """Add a batch whose boxes were already swept (:func:`sweep_boxes` over levels that
        include this accumulator's thresholds)."""
        n = len(sweep.largest)
        gts = _gt_list(gt_boxes, n)
        boxes = sweep.largest[:, sweep.columns(self.thresholds)]  # B x T x 4
        if self.box_rule == "wsol":
            boxes = boxes.copy()
            empty = sweep.counts[:, sweep.columns(self.thresholds)] == 0
            boxes[empty] = EMPTY_BOX_WSOL
            np.minimum(boxes[..., 2], self.size[1] - 1, out=boxes[..., 2])
            np.minimum(boxes[..., 3], self.size[0] - 1, out=boxes[..., 3])
        plus_one = self.box_rule == "wsol"
        ious = np.zeros(boxes.shape[:2])
        for i in range(n):
            if len(gts[i]):
                ious[i] = box_iou(boxes[i], gts[i], plus_one=plus_one).max(axis=1)
        has_cls = topk is not None
        if self._has_cls is not None and self._has_cls != has_cls:
            raise ValueError("topk must be given for every batch or for none")
        self._has_cls = has_cls
        if has_cls:
            if labels is None:
                raise ValueError("labels are required with topk")
            t1, t5 = topk_hits(topk, labels)
            if len(t1) != n:
                raise ValueError(f"got {len(t1)} predictions for {n} maps")
            self._top1.append(t1)
            self._top5.append(t5)
        self._ious.append(ious)
        self._boxes.append(boxes)

    def __len__(self) -> int:
        return sum(len(x) for x in self._ious)

    @property
    def ious(self) -> np.ndarray:
        """Per-image best IoU, T x N float64."""
        return np.concatenate(self._ious).T if self._ious else np.zeros((len(self.thresholds), 0))

    @property
    def boxes(self) -> np.ndarray:
        """Per-image predicted boxes, T x N x 4 int64 (crop px)."""
        if not self._boxes:
            return np.zeros((len(self.thresholds), 0, 4), np.int64)
        return np.concatenate(self._boxes).transpose(1, 0, 2)

    def _column(self, threshold: float) -> int:
        for k, t in enumerate(self.thresholds):
            if abs(t - float(threshold)) < 1e-9:
                return k
        raise ConfigError(f"threshold {threshold} is not in this sweep {self.thresholds}")

    def per_image(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(boxes N x 4 int64, best IoUs N float64) at one of the sweep's thresholds."""
        k = self._column(threshold)
        return self.boxes[k], self.ious[k]

    def compute_at(self, threshold: float) -> dict[str, float]:
        """``{threshold, gt_known_loc, top1_loc, top5_loc}`` (percent) at one threshold of the
        sweep; the Top-k Loc entries are None without a classifier."""
        k = self._column(threshold)
        ok = self.ious[k] >= self.iou_threshold
        n = len(ok)
        row: dict[str, Any] = {"threshold": self.thresholds[k], "gt_known_loc": _pct(ok.sum(), n)}
        if self._has_cls:
            t1, t5 = np.concatenate(self._top1), np.concatenate(self._top5)
            row["top1_loc"] = _pct((ok & t1).sum(), n)
            row["top5_loc"] = _pct((ok & t5).sum(), n)
        else:
            row["top1_loc"] = row["top5_loc"] = None
        return row

    def compute(self) -> dict[str, Any]:
        """Metrics in percent: ``top1_cls``, ``top5_cls`` (None without a classifier),
        ``per_threshold`` (list of ``{threshold, gt_known_loc, top1_loc, top5_loc}``) and
        ``best``: the entry of largest GT-known Loc (class-agnostic choice, first on ties),
        chosen on the evaluated data itself (see :func:`heldout_protocol`)."""
        n = len(self)
        per = [self.compute_at(t) for t in self.thresholds]
        best_k = int(np.argmax([r["gt_known_loc"] for r in per]))
        out: dict[str, Any] = {
            "num_images": n,
            "iou_threshold": self.iou_threshold,
            "box_rule": self.box_rule,
            "top1_cls": _pct(np.concatenate(self._top1).sum(), n) if self._has_cls else None,
            "top5_cls": _pct(np.concatenate(self._top5).sum(), n) if self._has_cls else None,
            "per_threshold": per,
            "best": dict(per[best_k]),
            "best_selection": BEST_SELECTION,
        }
        if self.maxboxacc_v2 is not None:
            out["maxboxacc_v2"] = self.maxboxacc_v2.compute()
        return out

class MaxBoxAccV2Accumulator(_SweepRunner):
    """MaxBoxAccV2 of "Evaluating WSOL Right" (CVPR 2020), with its conventions.

    For each map threshold in ``cam_thresholds`` (default ``np.arange(0, 1, step)``) every
    contour of the thresholded map (``RETR_TREE``: outer and hole contours) gives a box; an
    image is correct at IoU ``delta`` when the best ``+1``-IoU of any of its boxes with any GT
    box is ``>= delta``. MaxBoxAcc(delta) is the best accuracy over thresholds; MaxBoxAccV2
    is their mean over ``iou_thresholds``, in percent.
    """

    def __init__(
        self,
        cam_thresholds: Sequence[float] | None = None,
        iou_thresholds: Sequence[float] = IOU_THRESHOLDS_V2,
        step: float = 0.01,
        size: int | Sequence[int] = DEFAULT_SIZE,
        workers: int = 1,
    ) -> None:
        if cam_thresholds is None:
            if not 0 < step < 1:
                raise ConfigError(f"MaxBoxAccV2 threshold step must be in (0, 1), got {step}")
            cam_thresholds = np.arange(0, 1, step)
        self.cam_thresholds = [float(t) for t in cam_thresholds]
        for t in self.cam_thresholds:
            threshold_level(t)
        self.iou_thresholds = [float(d) for d in iou_thresholds]
        self.size = _size_hw(size)
        self.workers = int(workers)
        self._pool: Executor | None = None
        self._best: list[np.ndarray] = []

    def update(self, maps: Any, gt_boxes: Any) -> None:
        """Add a batch: raw maps B x h x w and per-image GT boxes K x 4 (crop px)."""
        maps = _as_maps(maps)
        gts = _gt_list(gt_boxes, len(maps))
        self.update_from_sweep(self._sweep(maps, self.cam_thresholds, gts))

    def update_from_sweep(self, sweep: BoxSweep) -> None:
        """Add a batch swept with GT boxes over levels that include ``cam_thresholds``."""
        if sweep.v2_iou is None:
            raise ValueError("the sweep was run without GT boxes")
        self._best.append(sweep.v2_iou[:, sweep.columns(self.cam_thresholds)])

    def __len__(self) -> int:
        return sum(len(b) for b in self._best)

    @property
    def best_ious(self) -> np.ndarray:
        """Per image and threshold, the best IoU of any box with any GT box: N x T."""
        return np.concatenate(self._best) if self._best else np.zeros((0, len(self.cam_thresholds)))

    def compute(self) -> dict[str, Any]:
        """``maxboxacc_v2`` (percent), ``per_iou`` (list of ``{iou_threshold, maxboxacc,
        best_threshold}``), ``cam_thresholds`` and ``curves`` (accuracy per cam threshold,
        one list per IoU threshold, for plots)."""
        best = self.best_ious
        n = len(best)
        per_iou, curves = [], []
        for d in self.iou_thresholds:
            acc = (best >= d).sum(axis=0) / n * 100.0 if n else np.zeros(len(self.cam_thresholds))
            k = int(np.argmax(acc))
            per_iou.append({"iou_threshold": d, "maxboxacc": float(acc[k]), "best_threshold": self.cam_thresholds[k]})
            curves.append([float(a) for a in acc])
        return {
            "maxboxacc_v2": float(np.mean([p["maxboxacc"] for p in per_iou])),
            "num_images": n,
            "per_iou": per_iou,
            "cam_thresholds": list(self.cam_thresholds),
            "curves": curves,
        }

class PxAPAccumulator:
    """Pixel average precision (PxAP) of "Evaluating WSOL Right", for data with GT masks.

    Normalised map values (:func:`normalize_map` at the mask size) at GT foreground and
    background pixels go into histograms with left bin edges ``cam_thresholds`` (default
    ``np.arange(0, 1, step)``) plus ``[1, 2)`` and ``[2, 3]``; ``compute`` sweeps them into a
    precision-recall curve and returns the area under it, ``sum(P[1:] * diff(R))``, in
    percent. Mask pixels: nonzero = foreground, 0 = background; ``ignore_value`` pixels
    (wsolevaluation's 255 for OpenImages' ignore regions) are skipped when given.
    """

    def __init__(
        self,
        cam_thresholds: Sequence[float] | None = None,
        step: float = 0.001,
        ignore_value: int | None = None,
    ) -> None:
        if cam_thresholds is None:
            cam_thresholds = np.arange(0, 1, step)
        self.cam_thresholds = np.asarray(cam_thresholds, dtype=np.float64)
        self.edges = np.append(self.cam_thresholds, [1.0, 2.0, 3.0])
        self.ignore_value = ignore_value
        self.pos_hist = np.zeros(len(self.edges) - 1)
        self.neg_hist = np.zeros(len(self.edges) - 1)

    def update(self, maps: Any, gt_masks: Any) -> None:
        """Add a batch: raw maps B x h x w and GT masks B x H x W (maps are resized to H x W)."""
        masks = np.asarray(gt_masks.detach().cpu() if hasattr(gt_masks, "detach") else gt_masks)
        if masks.ndim == 2:
            masks = masks[None]
        cams = normalize_map(maps, masks.shape[1:])
        if len(cams) != len(masks):
            raise ValueError(f"got {len(masks)} masks for {len(cams)} maps")
        valid = np.ones(masks.shape, bool) if self.ignore_value is None else masks != self.ignore_value
        pos = (masks != 0) & valid
        neg = (masks == 0) & valid
        self.pos_hist += np.histogram(cams[pos], bins=self.edges)[0]
        self.neg_hist += np.histogram(cams[neg], bins=self.edges)[0]

    def compute(self) -> dict[str, Any]:
        """``pxap`` (percent) and the ``precision``/``recall`` curve (from high to low threshold)."""
        tp = self.pos_hist[::-1].cumsum()
        fp = self.neg_hist[::-1].cumsum()
        n_pos = self.pos_hist.sum()
        if n_pos <= 0:
            raise DataError("PxAP: the evaluated GT masks have no foreground pixel")
        pred = tp + fp
        precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
        recall = tp / n_pos
        nz = pred[1:] > 0
        pxap = float((precision[1:] * np.diff(recall))[nz].sum() * 100.0)
        return {"pxap": pxap, "precision": precision.tolist(), "recall": recall.tolist()}
