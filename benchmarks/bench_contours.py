"""Box sweep on maps with many contours: all contours of a level at once vs one call each.

The per-pass evaluation cost of `locloc evaluate` is the box sweep (6 reference thresholds +
MaxBoxAccV2's 100 levels, every contour of every level) on 448-px maps. On smooth maps (a
trained generator's) a level has a handful of contours; on rough maps (random weights, as in
the reference comparison) it has thousands, and one ``cv2.boundingRect`` + ``contourArea``
call per contour used to dominate. The sweep now takes boxes and areas of all of a level's
contours with array reductions above ``_FEW_CONTOURS`` contours; this script times both paths
in one run (the per-contour path by raising ``_FEW_CONTOURS``), interleaved, best of
``--rounds``, on three kinds of maps, and checks both give the same numbers.

Usage: ``python benchmarks/bench_contours.py [--n 16] [--size 448] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from locloc.metrics import LocalizationAccumulator, MaxBoxAccV2Accumulator
from locloc.metrics import sweep as sweep_mod

THRESHOLDS = (0.45, 0.48, 0.50, 0.51, 0.52, 0.53)  # the reference's CUB sweep


def maps_of(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "smooth":  # a trained generator's map: a few blobs
        return np.stack([cv2.GaussianBlur(rng.random((56, 56)).astype(np.float32), (0, 0), 4) for _ in range(n)])
    if kind == "rough":  # lightly correlated noise
        return np.stack([cv2.GaussianBlur(rng.random((224, 224)).astype(np.float32), (0, 0), 1) for _ in range(n)])
    return rng.random((n, 224, 224)).astype(np.float32)  # "noise": pixel noise


def run(maps: np.ndarray, gts: list[np.ndarray], size: int) -> tuple[float, dict, dict]:
    t = time.perf_counter()
    mba = MaxBoxAccV2Accumulator(size=size)
    acc = LocalizationAccumulator(THRESHOLDS, size=size, maxboxacc_v2=mba)
    acc.update(maps, gts)
    res, v2 = acc.compute(), mba.compute()
    return time.perf_counter() - t, res, v2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="maps per kind")
    p.add_argument("--size", type=int, default=448, help="evaluated crop (maps are resized to it)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    few = sweep_mod._FEW_CONTOURS
    for kind in ("smooth", "rough", "noise"):
        maps = maps_of(kind, a.n, rng)
        gts = [np.array([[a.size * 0.2, a.size * 0.25, a.size * 0.7, a.size * 0.8]]) for _ in range(a.n)]
        best = {"one call each": float("inf"), "all at once": float("inf")}
        results = {}
        for _ in range(a.rounds):
            for name, limit in (("one call each", 10**9), ("all at once", few)):
                sweep_mod._FEW_CONTOURS = limit
                s, res, v2 = run(maps, gts, a.size)
                best[name] = min(best[name], s)
                results[name] = (res["per_threshold"], v2["maxboxacc_v2"])
        sweep_mod._FEW_CONTOURS = few
        same = results["one call each"] == results["all at once"]
        per = {k: v / a.n * 1000 for k, v in best.items()}
        print(f"{kind:6s} maps -> {a.size} px, 6 thresholds + MaxBoxAccV2: one call per contour "
              f"{per['one call each']:.1f} ms/map, all at once {per['all at once']:.1f} ms/map "
              f"({per['one call each'] / per['all at once']:.2f}x); same numbers: {same}")


if __name__ == "__main__":
    main()
