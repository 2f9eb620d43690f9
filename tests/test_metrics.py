"""Metrics: IoU conventions, map -> box rules, accumulators, and the fast sweep against the
plain one-OpenCV-call-per-threshold loop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from locloc.errors import ConfigError, DataError
from locloc.metrics import (
    LocalizationAccumulator,
    MaxBoxAccV2Accumulator,
    PxAPAccumulator,
    box_from_map,
    box_iou,
    boxes_from_maps,
    choose_threshold,
    contour_boxes,
    heldout_protocol,
    iou_reference,
    normalize_map,
    sweep_maps,
    to_uint8,
)

THRESHOLDS = np.arange(0, 1, 0.01)


def smooth_maps(n: int, seed: int, grid: int = 14, size: int = 56, noise: float = 0.1) -> np.ndarray:
    """Random smooth maps n x size x size: Gaussian blobs + noise on a coarse grid, upsampled."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        m = noise * rng.random((grid, grid), dtype=np.float32)
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(0, grid, 2)
            s = rng.uniform(0.6, grid / 4)
            m += rng.uniform(0.3, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        out[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def random_boxes(n: int, seed: int, size: int = 224) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = rng.integers(1, 3)
        xy = rng.uniform(0, size * 0.6, (k, 2))
        wh = rng.uniform(10, size * 0.4, (k, 2))
        out.append(np.concatenate([xy, np.minimum(xy + wh, size)], axis=1))
    return out


def naive_v2_best_iou(u8: np.ndarray, gt: np.ndarray, thresholds) -> np.ndarray:
    """wsolevaluation's rule written out plainly: per threshold, all contours, +1 IoU."""
    h, w = u8.shape
    out = []
    for t in thresholds:
        _, thr = cv2.threshold(u8, int(t * u8.max()), 255, cv2.THRESH_BINARY)
        contours, _ = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            boxes.append((x, y, min(x + bw, w - 1), min(y + bh, h - 1)))
        if not boxes:
            boxes = [(0, 0, 0, 0)]
        best = 0.0
        for b in boxes:
            for g in gt:
                iw = max(0.0, min(b[2], g[2]) - max(b[0], g[0]) + 1)
                ih = max(0.0, min(b[3], g[3]) - max(b[1], g[1]) + 1)
                inter = iw * ih
                union = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
                best = max(best, inter / union if union > 0 else 0.0)
        out.append(best)
    return np.array(out)


# ----------------------------------------------------------------------------------- IoU


def test_iou_conventions_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [10, 10, 20, 20], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b)[0], [25 / 175, 0.0, 0.0])
    # +1: [0..10] is 11 px wide; the touching box shares one pixel.
    np.testing.assert_allclose(box_iou(a, b, plus_one=True)[0], [36 / (121 + 121 - 36), 1 / 241, 0.0])
    assert iou_reference([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    # Degenerate boxes: zero union gives 0, never NaN.
    assert box_iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0.0
    assert box_iou(np.zeros((1, 4)), np.zeros((1, 4)), plus_one=True)[0, 0] == 1.0
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_iou_reference_example_full_crop():
    # README item 24: a full-crop prediction against a 182.857 x 137.143 GT box -> 0.49979.
    gt = [0.0, 40.0, 182.857142857, 177.142857143]
    assert iou_reference([0, 0, 224, 224], gt) == pytest.approx(182.857142857 * 137.142857143 / 224**2)
    assert iou_reference([0, 0, 224, 224], gt) < 0.5


box_st = st.tuples(*[st.floats(0, 300, allow_nan=False)] * 4).map(
    lambda v: (min(v[0], v[2]), min(v[1], v[3]), max(v[0], v[2]), max(v[1], v[3]))
)


@settings(max_examples=200, deadline=None)
@given(box_st, box_st, st.booleans())
def test_iou_symmetric_and_bounded(a, b, plus_one):
    ab = box_iou(np.array([a]), np.array([b]), plus_one)[0, 0]
    ba = box_iou(np.array([b]), np.array([a]), plus_one)[0, 0]
    assert ab == pytest.approx(ba, abs=1e-12)
    assert 0.0 <= ab <= 1.0 + 1e-12
    if (a[2] - a[0]) * (a[3] - a[1]) > 0:
        assert box_iou(np.array([a]), np.array([a]), plus_one)[0, 0] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ maps, boxes


def test_normalize_map_shapes_and_degenerate_maps():
    m = np.zeros((4, 1, 7, 7), np.float32)
    m[0, 0, 3, 3] = 5.0
    m[1, 0] = 2.0  # constant
    m[2, 0, 1, 1] = np.nan
    m[3, 0, 2, 2] = np.inf
    out = normalize_map(m, size=(14, 21))
    assert out.shape == (4, 14, 21) and out.dtype == np.float32
    assert out[0].max() == 1.0 and out[0].min() == 0.0
    assert not out[1:].any()  # constant / NaN / inf -> all zeros
    t = normalize_map(torch.from_numpy(m[:1, 0]).to(torch.bfloat16), size=14)
    assert t.shape == (1, 14, 14) and t.max() == 1.0
    same = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(normalize_map(same, 8), (same - same.min((1, 2), keepdims=True)) / np.ptp(same, (1, 2), keepdims=True))


def test_to_uint8_truncates():
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 0.999, 0.5, 1.0], np.float32)), [0, 254, 127, 255])


def test_box_from_map_rules():
    u8 = np.zeros((20, 30), np.uint8)
    u8[2:6, 3:9] = 200  # small blob
    u8[10:18, 12:28] = 128  # large blob
    np.testing.assert_array_equal(box_from_map(u8, 0.3), [12, 10, 28, 18])  # largest contour
    # int(0.5 * 255) = 127 < 128 keeps the large blob; int(0.51 * 255) = 130 drops it.
    np.testing.assert_array_equal(box_from_map(u8, 0.5), [12, 10, 28, 18])
    np.testing.assert_array_equal(box_from_map(u8, 0.51), [3, 2, 9, 6])
    np.testing.assert_array_equal(box_from_map(u8, 0.99), [0, 0, 1, 1])  # nothing above: no contour
    assert sorted(contour_boxes(u8, 0.3).tolist()) == [[3, 2, 9, 6], [12, 10, 28, 18]]
    assert contour_boxes(u8, 0.99).shape == (0, 4)
    with pytest.raises(ConfigError):
        box_from_map(u8, 1.5)


def test_hole_contours_are_candidates():
    # A thick ring: RETR_TREE also returns the hole's contour, whose box is inside the ring's.
    u8 = np.zeros((40, 40), np.uint8)
    u8[5:35, 5:35] = 255
    u8[12:28, 12:28] = 0
    boxes = sorted(contour_boxes(u8, 0.5).tolist())
    assert boxes == [[5, 5, 35, 35], [11, 11, 29, 29]]


@pytest.mark.parametrize("seed,noise,grid", [(0, 0.1, 14), (1, 0.6, 14), (2, 0.3, 28)])
def test_fast_sweep_equals_naive_loop(seed, noise, grid):
    maps = smooth_maps(17, seed, grid=grid, noise=noise)
    # Symmetric maps make equal-area contours: the first in OpenCV's order must win.
    sym = np.zeros((56, 56), np.float32)
    sym[10:20, 10:20] = sym[10:20, 36:46] = sym[36:46, 10:20] = 1.0
    maps = np.concatenate([maps, sym[None], np.zeros((1, 56, 56), np.float32)])
    assert_sweep_equals_naive_loop(maps, random_boxes(len(maps), seed))


def assert_sweep_equals_naive_loop(maps: np.ndarray, gts: list) -> None:
    """Boxes, MaxBoxAccV2 IoUs and contour counts of the sweep equal one findContours per
    map and threshold."""
    u8 = to_uint8(normalize_map(maps))
    boxes = boxes_from_maps(maps, THRESHOLDS)
    naive = np.stack([[box_from_map(m, t) for m in u8] for t in THRESHOLDS])
    np.testing.assert_array_equal(boxes, naive)
    sweep = sweep_maps(maps, THRESHOLDS, gts)
    cols = sweep.columns(THRESHOLDS)
    for i, m in enumerate(u8):
        np.testing.assert_array_equal(sweep.v2_iou[i, cols], naive_v2_best_iou(m, gts[i], THRESHOLDS))
        np.testing.assert_array_equal(sweep.counts[i, cols], [len(contour_boxes(m, t)) for t in THRESHOLDS])


def test_fast_sweep_equals_naive_loop_with_many_contours():
    """Pixel noise gives hundreds of contours per level: the all-at-once box/area path."""
    from locloc.metrics.sweep import _FEW_CONTOURS

    rng = np.random.default_rng(7)
    maps = rng.random((5, 56, 56)).astype(np.float32)
    grid = np.zeros((56, 56), np.float32)  # 100 equal squares: the first in OpenCV's order wins
    for y in range(2, 52, 5):
        for x in range(2, 52, 5):
            grid[y : y + 3, x : x + 3] = 1.0
    maps = np.concatenate([maps, grid[None]])
    u8 = to_uint8(normalize_map(maps))
    assert max(len(contour_boxes(m, 0.5)) for m in u8) > _FEW_CONTOURS
    assert_sweep_equals_naive_loop(maps, random_boxes(len(maps), 7))


def test_duplicate_levels_and_unsorted_thresholds():
    maps = smooth_maps(3, 5)
    ts = [0.5, 0.45, 0.451, 0.5, 0.0]  # 0.45 and 0.451 share the level 114
    out = boxes_from_maps(maps, ts)
    u8 = to_uint8(normalize_map(maps))
    for j, t in enumerate(ts):
        for i in range(3):
            np.testing.assert_array_equal(out[j, i], box_from_map(u8[i], t))


# ------------------------------------------------------------------------------ accumulators


def box_map(box, size=224):
    m = np.zeros((size, size), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1.0
    return m


def test_perfect_map_scores_100():
    gts = [(20, 30, 120, 200), (0, 0, 224, 200), (100, 50, 101, 60), (5, 5, 223, 223)]
    maps = np.stack([box_map(b) for b in gts])
    gt_boxes = np.array(gts, np.float64)
    v2 = MaxBoxAccV2Accumulator()
    loc = LocalizationAccumulator([0.3, 0.5, 0.7], maxboxacc_v2=v2)
    loc.update(maps, gt_boxes, np.array([[1, 2, 3, 4, 5]] * 4), np.array([1, 1, 1, 1]))
    res = loc.compute()
    for row in res["per_threshold"]:
        assert row["gt_known_loc"] == row["top1_loc"] == row["top5_loc"] == 100.0
    assert res["maxboxacc_v2"]["maxboxacc_v2"] == 100.0
    np.testing.assert_array_equal(loc.boxes[0], gts)
    np.testing.assert_array_equal(loc.ious, 1.0)


def test_nan_and_constant_maps_have_defined_results():
    maps = np.stack([np.full((14, 14), np.nan, np.float32), np.full((14, 14), 0.7, np.float32)])
    gt = np.array([[0, 0, 10, 10], [0, 0, 224, 224]], np.float64)
    v2 = MaxBoxAccV2Accumulator()
    loc = LocalizationAccumulator([0.5], maxboxacc_v2=v2)
    loc.update(maps, gt)
    np.testing.assert_array_equal(loc.boxes[0], [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_allclose(loc.ious[0], [0.01, 1 / 224**2])
    assert loc.compute()["top1_cls"] is None
    # MaxBoxAccV2: no contour -> [0, 0, 0, 0] with +1 IoU against [0, 0, 10, 10] = 1/121.
    np.testing.assert_allclose(v2.best_ious[0], 1 / 121)
    assert v2.compute()["maxboxacc_v2"] == 0.0


def test_maxboxacc_v2_uses_every_contour_and_every_gt_box():
    m = np.zeros((224, 224), np.float32)
    m[10:110, 10:110] = 1.0  # large distractor
    m[150:190, 150:200] = 0.9  # the object
    gt = [np.array([[150, 150, 200, 190.0], [0, 200, 20, 224]])]
    loc = LocalizationAccumulator([0.5], maxboxacc_v2=MaxBoxAccV2Accumulator(iou_thresholds=(0.5,)))
    loc.update(m[None], gt)
    res = loc.compute()
    assert res["per_threshold"][0]["gt_known_loc"] == 0.0  # reference rule: the largest blob
    assert res["maxboxacc_v2"]["maxboxacc_v2"] == 100.0
    assert len(res["maxboxacc_v2"]["curves"][0]) == 100


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 11), min_size=1, max_size=4), st.integers(0, 3))
def test_batch_splitting_does_not_change_results(splits, seed):
    n = 12
    maps = smooth_maps(n, seed, size=28)
    gts = random_boxes(n, seed)
    rng = np.random.default_rng(seed)
    logits = rng.random((n, 10)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    ts = [0.2, 0.45, 0.5, 0.8]

    def run(cuts):
        v2 = MaxBoxAccV2Accumulator(step=0.05)
        px = PxAPAccumulator(step=0.01)
        acc = LocalizationAccumulator(ts, maxboxacc_v2=v2)
        edges = [0, *sorted(set(c for c in cuts if c < n)), n]
        for a, b in zip(edges[:-1], edges[1:]):
            acc.update(maps[a:b], gts[a:b], logits[a:b], labels[a:b])
            px.update(maps[a:b], (maps[a:b] > 0.5).astype(np.uint8))
        return acc.compute(), px.compute()["pxap"], acc.ious

    whole, pieces = run([]), run(splits)
    assert whole[0] == pieces[0] and whole[1] == pieces[1]
    np.testing.assert_array_equal(whole[2], pieces[2])


def test_classification_from_logits_indices_and_tensors():
    logits = np.array([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4, 0.5], [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.0]], np.float32)
    labels = np.array([1, 6])  # image 0: top-1; image 1: rank 7 (outside top 5)
    maps = smooth_maps(2, 0)
    gts = random_boxes(2, 0)
    results = []
    for topk in (logits, np.argsort(-logits, 1)[:, :5], torch.from_numpy(logits)):
        acc = LocalizationAccumulator([0.5])
        acc.update(maps, gts, topk, labels)
        results.append(acc.compute())
    assert results[0] == results[1] == results[2]
    assert results[0]["top1_cls"] == 50.0 and results[0]["top5_cls"] == 50.0


def test_wsol_box_rule():
    m = np.zeros((1, 224, 224), np.float32)
    m[0, 100:224, 0:224] = 1.0
    acc = LocalizationAccumulator([0.5], box_rule="wsol")
    acc.update(m, [np.array([[0, 100, 223, 223.0]])])
    np.testing.assert_array_equal(acc.boxes[0, 0], [0, 100, 223, 223])  # clipped to W-1, H-1
    assert acc.ious[0, 0] == 1.0
    with pytest.raises(ConfigError):
        LocalizationAccumulator([0.5], box_rule="nope")


def test_threshold_protocol_and_fixed_threshold():
    ts = [0.2, 0.4, 0.6]
    held, test = LocalizationAccumulator(ts), LocalizationAccumulator(ts)
    held.update(smooth_maps(8, 1), random_boxes(8, 1))
    test.update(smooth_maps(8, 2), random_boxes(8, 2))
    h = held.compute()
    t = choose_threshold(h)
    assert t == h["best"]["threshold"]
    assert h["best"]["gt_known_loc"] == max(r["gt_known_loc"] for r in h["per_threshold"])
    rep = heldout_protocol(h, test)
    assert rep["threshold"] == t and rep["threshold_chosen_on"] == "held-out split"
    assert rep["test_at_heldout_threshold"] == test.compute_at(t)
    assert rep["test_sweep_best_optimistic"] == test.compute()["best"]
    assert heldout_protocol(h, test.compute()) == rep
    boxes, ious = test.per_image(0.4)
    assert boxes.shape == (8, 4) and ious.shape == (8,)
    with pytest.raises(ConfigError):
        test.compute_at(0.5)
    with pytest.raises(ConfigError):
        choose_threshold(h, "top1_loc")  # no classifier in these results


def test_pxap_perfect_inverted_and_by_hand():
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 8:24, 8:24] = 1
    perfect = PxAPAccumulator()
    perfect.update(mask.astype(np.float32), mask)
    assert perfect.compute()["pxap"] == pytest.approx(100.0)
    inverted = PxAPAccumulator()
    inverted.update(1.0 - mask.astype(np.float32), mask)
    assert inverted.compute()["pxap"] < 30.0
    # By hand: scores 1.0 (pos), 0.6 (neg), 0.3 (pos), 0.0 (neg) -> AP = 0.5*1 + 0.5*2/3.
    m = np.array([[[1.0, 0.6, 0.3, 0.0]]], np.float32)
    g = np.array([[[1, 0, 1, 0]]], np.uint8)
    acc = PxAPAccumulator(step=0.1)
    acc.update(m, g)
    assert acc.compute()["pxap"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    ign = PxAPAccumulator(step=0.1, ignore_value=255)
    ign.update(m, np.array([[[1, 255, 1, 0]]], np.uint8))
    assert ign.compute()["pxap"] == pytest.approx(100.0)
    with pytest.raises(DataError):
        empty = PxAPAccumulator()
        empty.update(m, np.zeros_like(g))
        empty.compute()


@pytest.mark.slow
def test_process_pool_gives_same_results():
    maps = smooth_maps(130, 3, size=28)
    gts = random_boxes(130, 3)
    res = []
    for workers in (1, 2):
        with LocalizationAccumulator(THRESHOLDS[::10], workers=workers, maxboxacc_v2=MaxBoxAccV2Accumulator(step=0.1)) as acc:
            acc.update(maps, gts)
            assert acc.workers == workers  # the pool really ran (no fallback to 1 process)
            res.append((acc.compute(), acc.boxes))
    assert res[0][0] == res[1][0]
    np.testing.assert_array_equal(res[0][1], res[1][1])


# ------------------------------------------- float64 score maps: wsolevaluation's precision


def _wsol_u8(m: np.ndarray) -> np.ndarray:
    """wsolevaluation's normalize_scoremap + uint8 cast, written out here in float64."""
    cam = m.astype(np.float64).copy()
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros(cam.shape, np.uint8)
    cam -= cam.min()
    cam /= cam.max()
    return (cam * 255).astype(np.uint8)


@pytest.mark.parametrize("scale,base", [(1e-9, 0.5), (1e-50, 0.0), (1e-6, 0.5)])
def test_near_constant_float64_maps_keep_their_levels(scale, base):
    yy, xx = np.mgrid[:32, :32]
    blob = np.clip(1.0 - np.hypot(xx - 20, yy - 12) / 9.0, 0, None)  # a cone at (20, 12)
    m = base + scale * blob
    u8 = to_uint8(normalize_map(m[None], size=32))[0]
    np.testing.assert_array_equal(u8, _wsol_u8(m))
    assert u8.max() == 255 and len(np.unique(u8)) > 30  # the cone's levels survive
    box = box_from_map(u8, 0.5)
    assert 12 <= box[0] < 20 < box[2] <= 29 and 4 <= box[1] < 12 < box[3] <= 21
    # the same map through float32 loses it (1e-9, 1e-50: constant; 1e-6: coarse steps)
    u8_32 = to_uint8(normalize_map(m[None].astype(np.float32), size=32))[0]
    assert len(np.unique(u8_32)) < len(np.unique(u8))


def test_float64_pxap_bins_match_wsolevaluation_rule():
    rng = np.random.default_rng(3)
    m = rng.integers(0, 1001, (1, 24, 24)).astype(np.float64) / 1000.0  # pixels on the bin edges
    m[0, 0, 0], m[0, 0, 1] = 0.0, 1.0
    mask = (rng.random((1, 24, 24)) > 0.6).astype(np.uint8)
    acc = PxAPAccumulator()
    acc.update(m, mask)
    cam = m[0]  # already spans [0, 1]: normalisation is the identity in float64
    edges = np.append(np.arange(0, 1, 0.001), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(acc.pos_hist, np.histogram(cam[mask[0] == 1], bins=edges)[0])
    np.testing.assert_array_equal(acc.neg_hist, np.histogram(cam[mask[0] == 0], bins=edges)[0])


def test_infinite_pixel_is_a_counted_miss():
    m = np.zeros((1, 16, 16))
    m[0, 4:9, 4:9] = 1.0
    m[0, 0, 0] = np.inf  # wsolevaluation raises here; LocLoc scores the map as empty
    acc = LocalizationAccumulator([0.5], size=16)
    acc.update(m, [np.array([[4.0, 4.0, 9.0, 9.0]])])
    assert acc.compute()["best"]["gt_known_loc"] == 0.0
    assert len(acc) == 1
