"""The many-threshold sweep: one contour search per map and level serves both the reference
box (largest contour) and MaxBoxAccV2 (every contour); a process pool spreads chunks of maps.
Its results equal the plain per-threshold loop (:func:`box_from_map`, :func:`contour_boxes`)."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .iou import box_iou, check_box_convention
from .maps import DEFAULT_SIZE, EMPTY_BOX_REFERENCE, _as_maps, _size_hw, _u8_maps, threshold_level

_CHUNK = 64  # maps per worker task
_FEW_CONTOURS = 48  # below this, boxes and areas contour by contour (measured crossover)

__all__ = ["BoxSweep", "boxes_from_maps", "sweep_boxes", "sweep_maps"]


def _boxes_areas(contours: Sequence[np.ndarray], with_area: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Bounding boxes ``K x 4`` int64 ``x0, y0, x1, y1`` (``cv2.boundingRect`` of each contour:
    ``x1 = max x + 1``) and, with ``with_area``, the areas (``cv2.contourArea``: the shoelace
    sum over the contour's points; exact in float64 for integer points), for all contours at
    once. A map of noise has tens of thousands of contours per level: a Python call per
    contour was the sweep's main cost."""
    lens = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    x, y = pts[:, 0], pts[:, 1]
    boxes = np.stack([np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts),
                      np.maximum.reduceat(x, starts) + 1, np.maximum.reduceat(y, starts) + 1], axis=1)
    if not with_area:
        return boxes, None
    nxt = np.arange(1, len(pts) + 1)
    nxt[starts + lens - 1] = starts  # each contour closes on its first point
    cross = (x * y[nxt] - x[nxt] * y).astype(np.float64)
    areas = np.abs(np.add.reduceat(cross, starts)) * 0.5
    return boxes, areas


def _sweep_one(
    u8: np.ndarray, levels: np.ndarray, gt: np.ndarray | None, need_largest: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One map over sorted unique ``levels``: (largest L x 4, contour count L, v2 best IoU L).

    ``need_largest`` (L bools, default all): levels whose largest contour is wanted (the
    reference boxes); elsewhere ``largest`` keeps the empty box and only counts / v2 are made.
    """
    h, w = u8.shape
    n_lv = len(levels)
    largest = np.tile(np.array(EMPTY_BOX_REFERENCE, dtype=np.int64), (n_lv, 1))
    counts = np.zeros(n_lv, dtype=np.int64)
    v2 = None
    if gt is not None:
        # No contour -> box [0, 0, 0, 0]; its IoU is the default for levels without contours.
        v2 = np.full(n_lv, box_iou(np.zeros((1, 4)), gt, plus_one=True).max(initial=0.0))
    rows, cols = u8.max(axis=1), u8.max(axis=0)
    live = levels < int(rows.max(initial=0))
    if not live.any():
        return largest, counts, v2
    want = np.ones(n_lv, bool) if need_largest is None else np.asarray(need_largest, bool)
    lv_live = levels[live][:, None]
    # Bounding box of the pixels above each level: contours never leave it.
    rmask, cmask = rows[None, :] > lv_live, cols[None, :] > lv_live
    y0s, y1s = rmask.argmax(1).tolist(), (h - rmask[:, ::-1].argmax(1)).tolist()
    x0s, x1s = cmask.argmax(1).tolist(), (w - cmask[:, ::-1].argmax(1)).tolist()
    few_boxes: list[tuple[int, int, int, int]] = []  # levels with a few contours: plain loop
    few_owners: list[int] = []
    level_boxes: list[np.ndarray] = []  # levels with many: all contours at once
    owners: list[np.ndarray] = []
    for j, lv in enumerate(lv_live[:, 0].tolist()):
        if gt is None and not want[j]:
            continue
        y0, y1, x0, x1 = y0s[j], y1s[j], x0s[j], x1s[j]
        _, sub = cv2.threshold(u8[y0:y1, x0:x1], lv, 255, cv2.THRESH_BINARY)
        contours, _ = cv2.findContours(sub, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
        counts[j] = len(contours)
        if len(contours) <= _FEW_CONTOURS:  # one C call per contour beats the array set-up
            best_area = -1.0
            for c in contours:
                x, y, bw, bh = cv2.boundingRect(c)
                if want[j]:
                    area = cv2.contourArea(c)
                    if area > best_area:
                        best_area = area
                        largest[j] = (x, y, x + bw, y + bh)
                if gt is not None:
                    few_boxes.append((x, y, x + bw, y + bh))
                    few_owners.append(j)
            continue
        boxes, areas = _boxes_areas(contours, bool(want[j]))
        if areas is not None:
            largest[j] = boxes[int(np.argmax(areas))]  # the first of the largest, as the loop above
        if gt is not None:
            level_boxes.append(boxes)
            owners.append(np.full(len(boxes), j))
    if few_boxes:
        level_boxes.append(np.asarray(few_boxes, dtype=np.int64))
        owners.append(np.asarray(few_owners, dtype=np.int64))
    if gt is not None and level_boxes:
        boxes = np.concatenate(level_boxes)
        np.minimum(boxes[:, 2], w - 1, out=boxes[:, 2])
        np.minimum(boxes[:, 3], h - 1, out=boxes[:, 3])
        best = box_iou(boxes, gt, plus_one=True).max(axis=1, initial=0.0)
        lv_best = np.full(n_lv, -np.inf)
        np.maximum.at(lv_best, np.concatenate(owners), best)
        has = counts > 0
        v2[has] = lv_best[has]
    return largest, counts, v2


def _sweep_chunk(
    maps: np.ndarray, levels: np.ndarray, gts: list[np.ndarray] | None, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sweep a chunk of maps: uint8 maps when ``size`` is None, else raw maps normalised here."""
    u8 = maps if size is None else _u8_maps(maps, size)
    n, n_lv = len(u8), len(levels)
    largest = np.empty((n, n_lv, 4), dtype=np.int64)
    counts = np.empty((n, n_lv), dtype=np.int64)
    v2 = np.empty((n, n_lv)) if gts is not None else None
    for i in range(n):
        out = _sweep_one(u8[i], levels, None if gts is None else gts[i])
        largest[i], counts[i] = out[0], out[1]
        if v2 is not None:
            v2[i] = out[2]
    return largest, counts, v2


@dataclass
class BoxSweep:
    """Boxes of B maps at L distinct uint8 ``levels`` (ascending).

    ``largest``: B x L x 4 int64, reference boxes (largest contour, ``[0, 0, 1, 1]`` if none);
    ``counts``: B x L contour counts; ``v2_iou``: B x L best wsolevaluation IoU (``+1``) of any
    contour box with any GT box, or None when no GT boxes were given.
    """

    levels: np.ndarray
    largest: np.ndarray
    counts: np.ndarray
    v2_iou: np.ndarray | None

    def columns(self, thresholds: Sequence[float]) -> np.ndarray:
        """Index into ``levels`` of each threshold."""
        lv = np.array([threshold_level(t) for t in thresholds], dtype=np.int64)
        cols = np.searchsorted(self.levels, lv)
        if (cols >= len(self.levels)).any() or (self.levels[np.minimum(cols, len(self.levels) - 1)] != lv).any():
            raise ValueError("some thresholds were not part of this sweep")
        return cols


def _gt_list(gt_boxes: Any, n: int) -> list[np.ndarray]:
    """GT boxes as a list of n arrays K x 4 float64 (accepts B x 4, B x K x 4 or a list), each
    checked by :func:`check_box_convention` (the metrics' boundary)."""
    if isinstance(gt_boxes, np.ndarray) and gt_boxes.ndim == 2:
        gt_boxes = gt_boxes[:, None, :]
    out = [check_box_convention(g, "GT boxes") for g in gt_boxes]
    if len(out) != n:
        raise ValueError(f"got {len(out)} GT box sets for {n} maps")
    return out


def sweep_boxes(
    u8_maps: np.ndarray,
    thresholds: Sequence[float],
    gt_boxes: Any = None,
    executor: Executor | None = None,
    chunk: int = 64,
) -> BoxSweep:
    """Reference boxes (and, given ``gt_boxes``, the MaxBoxAccV2 best IoU) of uint8 maps
    B x H x W at every threshold, with one contour search per distinct level.

    ``gt_boxes``: per map a K x 4 array (crop pixels). ``executor`` (e.g. a process pool)
    spreads chunks of ``chunk`` maps over workers; results do not depend on it.
    """
    u8_maps = np.ascontiguousarray(u8_maps, dtype=np.uint8)
    if u8_maps.ndim != 3:
        raise ValueError(f"u8_maps must be B x H x W, got shape {u8_maps.shape}")
    return _sweep(u8_maps, None, thresholds, gt_boxes, executor, chunk)


def sweep_maps(
    maps: Any,
    thresholds: Sequence[float],
    gt_boxes: Any = None,
    size: int | Sequence[int] = DEFAULT_SIZE,
    executor: Executor | None = None,
    chunk: int = 64,
) -> BoxSweep:
    """:func:`sweep_boxes` of raw maps B x h x w, normalised at ``size`` (in the workers)."""
    return _sweep(_as_maps(maps), _size_hw(size), thresholds, gt_boxes, executor, chunk)


def _sweep(
    maps: np.ndarray,
    size: tuple[int, int] | None,
    thresholds: Sequence[float],
    gt_boxes: Any,
    executor: Executor | None,
    chunk: int,
) -> BoxSweep:
    levels = np.unique(np.array([threshold_level(t) for t in thresholds], dtype=np.int64))
    gts = None if gt_boxes is None else _gt_list(gt_boxes, len(maps))
    starts = range(0, len(maps), chunk)
    args = [(maps[s : s + chunk], levels, None if gts is None else gts[s : s + chunk], size) for s in starts]
    if executor is None or len(args) <= 1:
        parts = [_sweep_chunk(*a) for a in args]
    else:
        parts = list(executor.map(_sweep_chunk, *zip(*args)))
    n_lv = len(levels)
    if not parts:
        return BoxSweep(
            levels,
            np.zeros((0, n_lv, 4), np.int64),
            np.zeros((0, n_lv), np.int64),
            None if gts is None else np.zeros((0, n_lv)),
        )
    return BoxSweep(
        levels=levels,
        largest=np.concatenate([p[0] for p in parts]),
        counts=np.concatenate([p[1] for p in parts]),
        v2_iou=None if gts is None else np.concatenate([p[2] for p in parts]),
    )


def boxes_from_maps(
    maps: Any, thresholds: Sequence[float], size: int | Sequence[int] = DEFAULT_SIZE
) -> np.ndarray:
    """Reference boxes of raw maps B x h x w at each threshold -> int64 T x B x 4 (crop px)."""
    sweep = sweep_maps(maps, thresholds, size=size)
    return sweep.largest[:, sweep.columns(thresholds)].transpose(1, 0, 2).copy()


def _make_pool(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    # fork where available: workers run only numpy/OpenCV code, and unlike spawn/forkserver it
    # does not re-import the caller's __main__ (a script without a main guard would re-run).
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already


class _SweepRunner:
    """Owns the optional process pool of an accumulator (``workers`` > 1) and runs sweeps."""

    workers: int
    size: tuple[int, int]
    _pool: Executor | None = None

    def _sweep(self, maps: np.ndarray, thresholds: Sequence[float], gts: list[np.ndarray] | None) -> BoxSweep:
        if self._pool is None and self.workers > 1 and len(maps) >= 2 * _CHUNK:
            self._pool = _make_pool(self.workers)
        try:
            return sweep_maps(maps, thresholds, gts, self.size, self._pool, _CHUNK)
        except BrokenProcessPool:
            # e.g. a __main__ that worker processes cannot re-import (code piped to stdin).
            warnings.warn("metric worker processes failed; continuing in this process", stacklevel=3)
            self.close()
            self.workers = 1
            return sweep_maps(maps, thresholds, gts, self.size, None, _CHUNK)

    def close(self) -> None:
        """Shut down the worker pool, if one was started."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
