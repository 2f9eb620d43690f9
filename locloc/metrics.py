"""Boxes from localization maps, IoU, and the WSOL metrics (Loc/Cls accuracies, MaxBoxAccV2, PxAP).

Conventions
-----------
* Boxes are ``x0, y0, x1, y1`` in pixels of the evaluated crop (224 x 224 by default).
* Two IoU conventions exist and both are kept, by name:

  - the LocLoc reference (``utils.IoU``): widths ``x1 - x0`` (no ``+1``); used for GT-known,
    Top-1 and Top-5 Loc;
  - wsolevaluation ("Evaluating WSOL Right", CVPR 2020): widths ``x1 - x0 + 1``; used for
    MaxBoxAccV2, together with its box conventions (predicted ``x1, y1`` clipped to
    ``W - 1, H - 1``; no contour gives the box ``[0, 0, 0, 0]``).

* A map becomes boxes the reference's way: ``cv2.resize`` (bilinear) to the crop size, min-max
  normalisation in the map's precision (float32 for network maps, bit-exact with the
  reference; float64 maps, as wsolevaluation's score maps are, stay float64 so near-constant
  maps keep their levels), ``uint8`` by truncation (:func:`normalize_map`, :func:`to_uint8`);
  a threshold ``t`` keeps pixels strictly above ``int(t * 255)``. A map that is constant or
  holds a NaN/inf normalises to all zeros (wsolevaluation's choice), so it yields no contour:
  the reference box ``[0, 0, 1, 1]``, and ``[0, 0, 0, 0]`` under MaxBoxAccV2.

The sweep over many thresholds (:func:`sweep_maps`, :func:`sweep_boxes`) runs one
``cv2.findContours`` per map and distinct ``uint8`` level, and one search serves both the
reference box (largest contour) and MaxBoxAccV2 (every contour). It works on the map cropped
to the bounding box of its pixels above the level, which yields exactly the contours of the
full-size call (outside the crop everything is zero); levels at or above the map's peak are
skipped; ``workers`` > 1 spreads chunks of maps over processes. Its results equal the plain
per-threshold loop (:func:`box_from_map`, :func:`contour_boxes`); the tests check this.

MaxBoxAccV2 keeps wsolevaluation's ``RETR_TREE``, so hole contours give boxes too. Boxes of
8-connected components (``cv2.connectedComponentsWithStats``) would drop them: on smooth
maps that never changed a best IoU in our measurement, but on noisy maps with random GT
boxes it changed 3,132 of 12,966 (map, threshold) pairs that had holes (488 correctness
flips), so it is not an equivalent shortcut (it was also slower here: ~180 us per 224 x 224
call against ~15 us for ``findContours``).
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .errors import ConfigError, DataError

DEFAULT_SIZE = (224, 224)
IOU_THRESHOLDS_V2 = (0.3, 0.5, 0.7)
EMPTY_BOX_REFERENCE = (0, 0, 1, 1)
EMPTY_BOX_WSOL = (0, 0, 0, 0)
_CHUNK = 64  # maps per worker task
BEST_SELECTION = "max gt_known_loc over thresholds (class-agnostic); ties -> first threshold"

__all__ = [
    "box_iou",
    "iou_reference",
    "normalize_map",
    "to_uint8",
    "threshold_level",
    "box_from_map",
    "contour_boxes",
    "sweep_boxes",
    "sweep_maps",
    "BoxSweep",
    "boxes_from_maps",
    "LocalizationAccumulator",
    "MaxBoxAccV2Accumulator",
    "PxAPAccumulator",
    "choose_threshold",
    "heldout_protocol",
    "topk_classes",
    "topk_hits",
]


# --------------------------------------------------------------------------------------- IoU


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


# ------------------------------------------------------------------------------ map -> boxes


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _as_maps(maps: Any) -> np.ndarray:
    """Maps as numpy ``B x h x w`` (accepts ``B x 1 x h x w``, ``h x w``, torch): float64 stays
    float64 (wsolevaluation's score maps), everything else becomes float32."""
    if hasattr(maps, "detach"):
        maps = maps.detach()
        maps = maps.cpu().numpy() if str(maps.dtype) == "torch.float64" else maps.float().cpu().numpy()
    maps = np.asarray(maps)
    maps = maps.astype(np.float64 if maps.dtype == np.float64 else np.float32, copy=False)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    elif maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must be B x H x W (or B x 1 x H x W), got shape {maps.shape}")
    return maps


def _normalize_into(m: np.ndarray, cam: np.ndarray) -> bool:
    """Resize ``m`` (h x w) into ``cam`` (H x W, same dtype) and min-max it in place in that
    dtype: ``(cam - min) / (max - min)``, as both the reference (float32 maps) and
    wsolevaluation's ``normalize_scoremap`` (``cam -= min; cam /= max``, in the score map's
    own dtype) do. False (``cam`` untouched) for a constant or non-finite map."""
    if not np.isfinite(m).all():
        return False
    h, w = cam.shape
    if m.shape != (h, w):
        cv2.resize(m, (w, h), dst=cam, interpolation=cv2.INTER_LINEAR)
    else:
        cam[:] = m
    lo, hi = cv2.minMaxLoc(cam)[:2]
    if not hi > lo:
        return False
    t = cam.dtype.type
    np.subtract(cam, t(lo), out=cam)
    # The shifted map's maximum is t(hi) - t(lo): the reference divides by it.
    np.divide(cam, t(hi) - t(lo), out=cam)
    return True


def normalize_map(maps: Any, size: int | Sequence[int] = DEFAULT_SIZE) -> np.ndarray:
    """Resize raw maps to ``size`` = (H, W) and min-max normalise them -> B x H x W.

    ``maps``: B x h x w (or B x 1 x h x w, numpy or torch). Resizing is ``cv2.resize``
    (``INTER_LINEAR``, one map per call as in the reference: a multi-channel call rounds
    differently), then ``(cam - min) / (max - min)`` without epsilon, in the maps' precision:
    float64 maps (wsolevaluation's score maps) stay float64, so near-constant maps keep their
    levels; everything else runs in float32, bit-exact with the reference. A constant map, or
    one holding NaN/inf, becomes all zeros.
    """
    maps = _as_maps(maps)
    h, w = _size_hw(size)
    out = np.zeros((len(maps), h, w), dtype=maps.dtype)
    cam = np.empty((h, w), dtype=maps.dtype)
    for i, m in enumerate(maps):
        if _normalize_into(m, cam):
            out[i] = cam
    return out


def to_uint8(cams: np.ndarray) -> np.ndarray:
    """Normalised maps in [0, 1] -> uint8 by truncation, ``(cam * 255.).astype(uint8)`` in the
    maps' precision (float64 stays float64, as in wsolevaluation; else float32)."""
    cams = np.asarray(cams)
    t = np.float64 if cams.dtype == np.float64 else np.float32
    return (cams.astype(t, copy=False) * t(255.0)).astype(np.uint8)


def _u8_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``to_uint8(normalize_map(maps, size))`` one map at a time (cache-friendly, same bits)."""
    out = np.zeros((len(maps), *size), dtype=np.uint8)
    cam = np.empty(size, dtype=maps.dtype)
    for i, m in enumerate(maps):
        if _normalize_into(m, cam):
            np.multiply(cam, cam.dtype.type(255.0), out=cam)
            out[i] = cam  # unsafe float -> uint8 cast truncates, like astype
    return out


def threshold_level(threshold: float) -> int:
    """The uint8 level of a box threshold: pixels strictly above ``int(t * 255)`` are kept."""
    t = float(threshold)
    if not (0.0 <= t <= 1.0) or math.isnan(t):
        raise ConfigError(f"box threshold {threshold!r} is outside [0, 1]")
    return int(t * 255)


def box_from_map(u8_map: np.ndarray, threshold: float) -> np.ndarray:
    """The reference box of one uint8 map (H x W) at ``threshold`` -> int64 (4,) x0y0x1y1.

    ``cv2.threshold(THRESH_TOZERO)`` at ``int(t * 255)``, ``cv2.findContours(RETR_TREE,
    CHAIN_APPROX_SIMPLE)``, the contour of largest ``cv2.contourArea`` (first on ties; hole
    contours included), ``cv2.boundingRect`` -> ``[x, y, x + w, y + h]``; no contour gives
    ``[0, 0, 1, 1]``. One OpenCV call per threshold: the plain reference path.
    """
    u8 = np.ascontiguousarray(u8_map, dtype=np.uint8)
    _, thr = cv2.threshold(u8, threshold_level(threshold), 255, cv2.THRESH_TOZERO)
    contours, _ = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.array(EMPTY_BOX_REFERENCE, dtype=np.int64)
    best = max(contours, key=cv2.contourArea)
    x, y, w, h = cv2.boundingRect(best)
    return np.array([x, y, x + w, y + h], dtype=np.int64)


def contour_boxes(u8_map: np.ndarray, threshold: float) -> np.ndarray:
    """Boxes ``[x, y, x + w, y + h]`` of every contour (outer and hole, ``RETR_TREE``) of one
    uint8 map at ``threshold`` -> int64 K x 4 (K = 0 when nothing is above the level).
    One OpenCV call per threshold: the plain path the fast sweep is checked against."""
    u8 = np.ascontiguousarray(u8_map, dtype=np.uint8)
    _, thr = cv2.threshold(u8, threshold_level(threshold), 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros((len(contours), 4), dtype=np.int64)
    for k, c in enumerate(contours):
        x, y, w, h = cv2.boundingRect(c)
        out[k] = (x, y, x + w, y + h)
    return out


def _sweep_one(
    u8: np.ndarray, levels: np.ndarray, gt: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One map over sorted unique ``levels``: (largest L x 4, contour count L, v2 best IoU L)."""
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
    lv_live = levels[live][:, None]
    # Bounding box of the pixels above each level: contours never leave it.
    rmask, cmask = rows[None, :] > lv_live, cols[None, :] > lv_live
    y0s, y1s = rmask.argmax(1).tolist(), (h - rmask[:, ::-1].argmax(1)).tolist()
    x0s, x1s = cmask.argmax(1).tolist(), (w - cmask[:, ::-1].argmax(1)).tolist()
    all_boxes: list[tuple[int, int, int, int]] = []
    owners: list[int] = []
    for j, lv in enumerate(lv_live[:, 0].tolist()):
        y0, y1, x0, x1 = y0s[j], y1s[j], x0s[j], x1s[j]
        _, sub = cv2.threshold(u8[y0:y1, x0:x1], lv, 255, cv2.THRESH_BINARY)
        contours, _ = cv2.findContours(sub, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
        counts[j] = len(contours)
        best_area = -1.0
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            area = cv2.contourArea(c)
            if area > best_area:
                best_area = area
                largest[j] = (x, y, x + bw, y + bh)
            if gt is not None:
                all_boxes.append((x, y, x + bw, y + bh))
                owners.append(j)
    if gt is not None and all_boxes:
        boxes = np.asarray(all_boxes, dtype=np.int64)
        np.minimum(boxes[:, 2], w - 1, out=boxes[:, 2])
        np.minimum(boxes[:, 3], h - 1, out=boxes[:, 3])
        best = box_iou(boxes, gt, plus_one=True).max(axis=1, initial=0.0)
        lv_best = np.full(n_lv, -np.inf)
        np.maximum.at(lv_best, np.asarray(owners), best)
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
    """GT boxes as a list of n arrays K x 4 float64 (accepts B x 4, B x K x 4 or a list)."""
    if isinstance(gt_boxes, np.ndarray) and gt_boxes.ndim == 2:
        gt_boxes = gt_boxes[:, None, :]
    out = [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gt_boxes]
    if len(out) != n:
        raise ValueError(f"got {len(out)} GT box sets for {n} maps")
    for g in out:
        if (g[:, 2] < g[:, 0]).any() or (g[:, 3] < g[:, 1]).any():
            raise ValueError(f"GT boxes must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0, got {g.tolist()}")
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


# ------------------------------------------------------------------------------ accumulators


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


# --------------------------------------------------------------------- threshold protocol


def choose_threshold(results: dict[str, Any], metric: str = "gt_known_loc") -> float:
    """The threshold of best ``metric`` in a ``LocalizationAccumulator.compute()`` dict
    (first on ties). Run it on a held-out split, then report the test split at that value."""
    per = results["per_threshold"]
    vals = [r[metric] for r in per]
    if any(v is None for v in vals):
        raise ConfigError(f"metric {metric!r} is not available in these results (no classifier?)")
    return float(per[int(np.argmax(vals))]["threshold"])


def heldout_protocol(
    heldout: dict[str, Any], test: LocalizationAccumulator | dict[str, Any], metric: str = "gt_known_loc"
) -> dict[str, Any]:
    """Honest reporting: the threshold chosen on ``heldout`` results, the test metrics at that
    threshold, and (labelled as such) the test sweep's own best, which is optimistic.

    ``test`` is the test accumulator or its ``compute()`` dict; its sweep must contain the
    chosen threshold.
    """
    t = choose_threshold(heldout, metric)
    held_row = next(r for r in heldout["per_threshold"] if r["threshold"] == t)
    if isinstance(test, LocalizationAccumulator):
        test_row, test_res = test.compute_at(t), test.compute()
    else:
        test_res = test
        rows = [r for r in test["per_threshold"] if abs(r["threshold"] - t) < 1e-9]
        if not rows:
            raise ConfigError(f"threshold {t} chosen on the held-out split is not in the test sweep")
        test_row = rows[0]
    return {
        "threshold_chosen_on": "held-out split",
        "selection_metric": metric,
        "threshold": t,
        "heldout": dict(held_row),
        "test_at_heldout_threshold": dict(test_row),
        "test_sweep_best_optimistic": dict(test_res["best"]),
    }
