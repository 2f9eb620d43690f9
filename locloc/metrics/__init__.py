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

from .accumulators import (
    BEST_SELECTION,
    IOU_THRESHOLDS_V2,
    LocalizationAccumulator,
    MaxBoxAccV2Accumulator,
    PxAPAccumulator,
    topk_classes,
    topk_hits,
)
from .iou import box_iou, check_box_convention, iou_reference
from .maps import (
    DEFAULT_SIZE,
    EMPTY_BOX_REFERENCE,
    EMPTY_BOX_WSOL,
    box_from_map,
    contour_boxes,
    normalize_map,
    threshold_level,
    to_uint8,
)
from .protocol import choose_threshold, heldout_protocol
from .sweep import BoxSweep, boxes_from_maps, sweep_boxes, sweep_maps

__all__ = [
    "BEST_SELECTION",
    "DEFAULT_SIZE",
    "EMPTY_BOX_REFERENCE",
    "EMPTY_BOX_WSOL",
    "IOU_THRESHOLDS_V2",
    "BoxSweep",
    "LocalizationAccumulator",
    "MaxBoxAccV2Accumulator",
    "PxAPAccumulator",
    "box_from_map",
    "box_iou",
    "boxes_from_maps",
    "check_box_convention",
    "choose_threshold",
    "contour_boxes",
    "heldout_protocol",
    "iou_reference",
    "normalize_map",
    "sweep_boxes",
    "sweep_maps",
    "threshold_level",
    "to_uint8",
    "topk_classes",
    "topk_hits",
]
