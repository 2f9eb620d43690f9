"""Localization map -> boxes, the reference's way: resize, min-max normalise (in the map's
precision), ``uint8`` by truncation, strict threshold ``> int(t * 255)``, contours."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError

DEFAULT_SIZE = (224, 224)
EMPTY_BOX_REFERENCE = (0, 0, 1, 1)
EMPTY_BOX_WSOL = (0, 0, 0, 0)

__all__ = ["DEFAULT_SIZE", "box_from_map", "contour_boxes", "normalize_map", "threshold_level", "to_uint8"]


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
