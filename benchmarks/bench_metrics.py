"""Speed of the metric sweep over a CUB-sized test set.

Generates ``--n`` smooth random maps (sums of Gaussians on a 14 x 14 grid, upsampled to the
generator's 112 x 112) with one GT box each, then times the accumulator sweep over
``--thresholds`` box thresholds: reference-rule boxes (GT-known / Top-k Loc) and MaxBoxAccV2
(all contours, IoU 0.3/0.5/0.7), both from one contour search per map and level. In the same
run it times the plain loop (one ``cv2.findContours`` per map and threshold via
``box_from_map`` + ``contour_boxes``) on ``--naive-n`` maps, extrapolates it to ``--n`` maps
(stated as such) and prints the speed-up.

Usage: ``python benchmarks/bench_metrics.py [--n 5794] [--workers 2]``
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from locloc.metrics import (
    LocalizationAccumulator,
    MaxBoxAccV2Accumulator,
    box_from_map,
    box_iou,
    contour_boxes,
    normalize_map,
    to_uint8,
)


def make_maps(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` smooth maps (n x 112 x 112 float32 in (0, 1)) and one GT box each (n x 4, crop px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:14, 0:14].astype(np.float32)
    maps = np.empty((n, 112, 112), np.float32)
    boxes = np.empty((n, 4))
    for i in range(n):
        low = 0.15 * rng.random((14, 14), dtype=np.float32)
        cx, cy = rng.uniform(2, 12, 2)
        sx, sy = rng.uniform(1.0, 4.0, 2)
        low += np.exp(-((xx - cx) ** 2 / (2 * sx * sx) + (yy - cy) ** 2 / (2 * sy * sy)))
        for _ in range(rng.integers(0, 3)):  # distractor blobs
            dx, dy = rng.uniform(0, 14, 2)
            s = rng.uniform(0.7, 2.0)
            low += rng.uniform(0.2, 0.8) * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * s * s))
        m = cv2.resize(low, (112, 112), interpolation=cv2.INTER_LINEAR)
        maps[i] = 1.0 / (1.0 + np.exp(-6.0 * (m - 0.5)))
        # GT: the main blob's 2-sigma box in 224 px, jittered.
        c = np.array([cx, cy, cx, cy]) * 16 + 8
        half = np.array([-sx, -sy, sx, sy]) * 32
        boxes[i] = np.clip(c + half + rng.normal(0, 6, 4), 0, 224)
    return maps, boxes


def naive_sweep(maps: np.ndarray, boxes: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plain loop: per map and threshold, one findContours for the reference box and one
    for the all-contour boxes. Returns (reference boxes n x T x 4, v2 best IoU n x T)."""
    u8 = to_uint8(normalize_map(maps))
    ref = np.empty((len(u8), len(thresholds), 4), np.int64)
    v2 = np.empty((len(u8), len(thresholds)))
    for i, m in enumerate(u8):
        for j, t in enumerate(thresholds):
            ref[i, j] = box_from_map(m, t)
            cb = contour_boxes(m, t)
            if len(cb) == 0:
                cb = np.zeros((1, 4), np.int64)
            cb[:, 2:] = np.minimum(cb[:, 2:], 223)
            v2[i, j] = box_iou(cb, boxes[i : i + 1], plus_one=True).max()
    return ref, v2


def naive_shared(maps: np.ndarray, thresholds: np.ndarray) -> None:
    """The plain loop with one findContours per map and threshold shared by both rules
    (full-size mask, every level, no IoU): isolates what cropping and skipping save."""
    for m in to_uint8(normalize_map(maps)):
        for t in thresholds:
            _, thr = cv2.threshold(m, int(t * 255), 255, cv2.THRESH_BINARY)
            contours, _ = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
            for c in contours:
                cv2.boundingRect(c)
                cv2.contourArea(c)


def sweep(maps: np.ndarray, boxes: np.ndarray, thresholds: np.ndarray, batch: int, workers: int):
    """The accumulator path: one contour search per map and level feeds both accumulators."""
    mba = MaxBoxAccV2Accumulator(cam_thresholds=thresholds)
    with LocalizationAccumulator(thresholds, workers=workers, maxboxacc_v2=mba) as loc:
        for s in range(0, len(maps), batch):
            loc.update(maps[s : s + batch], boxes[s : s + batch, None])
        res = loc.compute()
    return loc, mba, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5794, help="number of maps (CUB test set: 5794)")
    p.add_argument("--thresholds", type=int, default=100, help="box thresholds np.arange(0, 1, 1/N)")
    p.add_argument("--batch", type=int, default=256, help="maps per update() call")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    p.add_argument("--cpu-n", type=int, default=500, help="maps for the 1-process CPU-time measurement")
    p.add_argument("--naive-n", type=int, default=100, help="maps for the plain-loop timing")
    args = p.parse_args()
    cv2.setNumThreads(1)

    thresholds = np.arange(0, 1, 1.0 / args.thresholds)
    t0 = time.perf_counter()
    maps, boxes = make_maps(args.n)
    print(f"generated {args.n} maps 112x112 + GT boxes in {time.perf_counter() - t0:.1f} s")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work slows wall times)")

    t0 = time.perf_counter()
    loc, mba, res = sweep(maps, boxes, thresholds, args.batch, args.workers)
    fast_s = time.perf_counter() - t0
    v2 = res["maxboxacc_v2"]
    print(
        f"sweep: {args.n} maps x {len(thresholds)} thresholds (reference boxes + MaxBoxAccV2), "
        f"{args.workers} process(es): {fast_s:.2f} s wall ({fast_s / args.n * 1e3:.2f} ms/map)"
    )
    print(f"  best GT-known {res['best']['gt_known_loc']:.2f} at t={res['best']['threshold']:.2f}; "
          f"MaxBoxAccV2 {v2['maxboxacc_v2']:.2f}")

    k = min(args.cpu_n, args.n)
    c0 = time.process_time()
    sweep(maps[:k], boxes[:k], thresholds, args.batch, 1)
    fast_cpu = (time.process_time() - c0) / k
    print(f"  CPU time in 1 process: {fast_cpu * 1e3:.2f} ms/map ({k} maps) -> {fast_cpu * args.n:.1f} CPU-s "
          f"for {args.n} maps, i.e. {fast_cpu * args.n / args.workers:.1f} s wall on {args.workers} idle cores")

    k = min(args.naive_n, args.n)
    c0, t0 = time.process_time(), time.perf_counter()
    ref, v2_naive = naive_sweep(maps[:k], boxes[:k], thresholds)
    naive_s = time.perf_counter() - t0
    naive_cpu = (time.process_time() - c0) / k
    same = np.array_equal(ref, loc.boxes[:, :k].transpose(1, 0, 2)) and np.array_equal(v2_naive, mba.best_ious[:k])
    print(
        f"naive loop (1 process; one findContours per map, threshold and rule): {k} maps in {naive_s:.2f} s wall, "
        f"{naive_cpu * 1e3:.2f} ms CPU/map -> extrapolated (not measured) to {args.n} maps: "
        f"{naive_s / k * args.n:.1f} s wall, {naive_cpu * args.n:.1f} CPU-s"
    )
    c0 = time.process_time()
    naive_shared(maps[:k], thresholds)
    shared_cpu = (time.process_time() - c0) / k
    print(f"naive loop, one findContours shared by both rules (no IoU): {shared_cpu * 1e3:.2f} ms CPU/map")
    print(
        f"speed-up: wall {naive_s / k * args.n / fast_s:.1f}x ({args.workers} processes vs 1); "
        f"CPU work {naive_cpu / fast_cpu:.1f}x (vs the shared-call loop {shared_cpu / fast_cpu:.1f}x); results identical on the {k} maps: {same}"
    )


if __name__ == "__main__":
    main()
