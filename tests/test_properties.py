"""Property tests (hypothesis) for boxes, IoU, box mapping, map->box rules, metrics and the
local-area guide box. They extend tests/test_metrics.py (IoU symmetric and in [0, 1], batch
splitting) and tests/test_transforms.py (exact original -> crop -> original round trip)
without repeating them."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from locloc.data.transforms import EvalTransform, crop_to_original, map_boxes_exact, map_boxes_reference, resized_size
from locloc.engine.train_classifier import guide_box
from locloc.metrics import (
    LocalizationAccumulator,
    MaxBoxAccV2Accumulator,
    box_from_map,
    box_iou,
    contour_boxes,
    normalize_map,
    to_uint8,
)

SETTINGS = settings(max_examples=60, deadline=None)
coord = st.floats(-50, 300, allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw, min_side: float = 0.5) -> np.ndarray:
    """One box ``x0, y0, x1, y1`` with positive width and height."""
    x0, y0 = draw(coord), draw(coord)
    w = draw(st.floats(min_side, 200))
    h = draw(st.floats(min_side, 200))
    return np.array([x0, y0, x0 + w, y0 + h])


@st.composite
def image_sizes(draw) -> tuple[int, int]:
    return draw(st.integers(1, 700)), draw(st.integers(1, 700))


geometries = st.sampled_from([(256, 224), (73, 64), (64, 64), (300, 100)])


# ------------------------------------------------------------------------------------ IoU


@SETTINGS
@given(boxes(), st.booleans())
def test_iou_of_a_box_with_itself_is_one(b, plus_one):
    assert box_iou(b, b, plus_one)[0, 0] == 1.0


@SETTINGS
@given(boxes(), boxes(), st.floats(-100, 100), st.floats(-100, 100), st.booleans())
def test_iou_is_translation_invariant(a, b, dx, dy, plus_one):
    shift = np.array([dx, dy, dx, dy])
    np.testing.assert_allclose(box_iou(a + shift, b + shift, plus_one), box_iou(a, b, plus_one), atol=1e-9)


@SETTINGS
@given(boxes(), boxes(), st.floats(0.1, 10))
def test_reference_iou_is_scale_invariant(a, b, s):
    np.testing.assert_allclose(box_iou(a * s, b * s), box_iou(a, b), atol=1e-9)


@SETTINGS
@given(boxes(min_side=2), st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1), st.floats(0.01, 1))
def test_iou_of_a_nested_box_is_the_area_ratio(outer, fx, fy, fw, fh):
    w, h = outer[2] - outer[0], outer[3] - outer[1]
    iw, ih = w * fw, h * fh
    x0, y0 = outer[0] + (w - iw) * fx, outer[1] + (h - ih) * fy
    inner = np.array([x0, y0, x0 + iw, y0 + ih])
    np.testing.assert_allclose(box_iou(inner, outer)[0, 0], fw * fh, rtol=1e-6, atol=1e-9)


@SETTINGS
@given(st.lists(boxes(), min_size=1, max_size=5), st.lists(boxes(), min_size=1, max_size=5), st.booleans())
def test_iou_matrix_matches_pairwise_and_is_in_unit_interval(a, b, plus_one):
    m = box_iou(np.array(a), np.array(b), plus_one)
    assert m.shape == (len(a), len(b))
    assert ((m >= 0) & (m <= 1)).all()
    for i, bi in enumerate(a):
        for j, bj in enumerate(b):
            assert m[i, j] == box_iou(bi, bj, plus_one)[0, 0]


# ------------------------------------------------------------------------- box mapping


@SETTINGS
@given(image_sizes(), boxes(), geometries)
def test_reference_mapping_stays_inside_the_crop(size, box, geometry):
    resize, crop = geometry
    w, h = size
    # a GT box starts inside its image (the loader checks that)
    box = box.copy()
    box[[0, 2]] -= box[0] - min(max(box[0], 0), w - 1)
    box[[1, 3]] -= box[1] - min(max(box[1], 0), h - 1)
    out = map_boxes_reference(box, size, resize, crop)
    assert out.shape == (1, 4)
    assert ((out >= 0) & (out <= crop)).all()
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()


@SETTINGS
@given(image_sizes(), boxes(min_side=1), geometries)
def test_reference_mapping_is_close_to_the_exact_one(size, box, geometry):
    resize, crop = geometry
    w, h = size
    assume(min(w, h) >= 8)
    box = np.clip(box, 0, [w, h, w, h])
    assume((box[2:] - box[:2] >= 1).all())
    ref = map_boxes_reference(box, size, resize, crop)
    exact = map_boxes_exact(box, size, resize, crop)
    # integer truncation of x, y, w, h (< 1 original px each, so x1 < 2 px) plus a 1 px offset quirk
    scale = max(resized_size(size, resize)[0] / w, resized_size(size, resize)[1] / h)
    assert np.abs(ref - exact).max() <= 2 * scale + 1.5


@SETTINGS
@given(image_sizes(), st.lists(st.floats(0, 1), min_size=4, max_size=4), geometries)
def test_crop_box_to_original_and_back_is_identity(size, fr, geometry):
    resize, crop = geometry
    x0, x1 = sorted(fr[:2])
    y0, y1 = sorted(fr[2:])
    box = np.array([[x0, y0, x1, y1]]) * crop
    back = crop_to_original(box, size, resize, crop)
    w, h = size
    assert (back >= 0).all() and (back[:, [0, 2]] <= w + 1e-9).all() and (back[:, [1, 3]] <= h + 1e-9).all()
    again = EvalTransform(resize, crop, box_mapping="exact").boxes(back, size)
    np.testing.assert_allclose(again, box, atol=1e-6)


# ------------------------------------------------------------------------- maps -> boxes


@st.composite
def u8_maps(draw) -> np.ndarray:
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["noise", "blobs", "zeros", "full"]))
    if kind == "noise":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "zeros":
        return np.zeros((h, w), np.uint8)
    if kind == "full":
        return np.full((h, w), 255, np.uint8)
    m = np.zeros((h, w), np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = rng.integers(1, 256)
    return m


@SETTINGS
@given(u8_maps(), st.floats(0, 1))
def test_boxes_from_a_map_lie_inside_it(m, t):
    h, w = m.shape
    b = box_from_map(m, t)
    assert b.shape == (4,)
    assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h
    for x0, y0, x1, y1 in contour_boxes(m, t):
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from([(1, 1), (7, 3), (20, 20)]))
def test_normalized_maps_are_in_unit_interval(seed, hw):
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(2, *hw)).astype(np.float32) * rng.uniform(0.001, 1000)
    out = normalize_map(raw, size=(16, 24))
    assert out.shape == (2, 16, 24) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    u8 = to_uint8(out)
    assert u8.dtype == np.uint8


# ----------------------------------------------------------------------------- metrics

SIZE = 64


@st.composite
def int_boxes(draw) -> tuple[int, int, int, int]:
    x0, y0 = draw(st.integers(0, SIZE - 2)), draw(st.integers(0, SIZE - 2))
    return x0, y0, draw(st.integers(x0 + 1, SIZE)), draw(st.integers(y0 + 1, SIZE))


@SETTINGS
@given(st.lists(int_boxes(), min_size=1, max_size=6), st.lists(st.floats(0.05, 0.95), min_size=1, max_size=4))
def test_a_perfect_map_scores_100(gts, thresholds):
    maps = np.zeros((len(gts), SIZE, SIZE), np.float32)
    for m, (x0, y0, x1, y1) in zip(maps, gts):
        m[:] = 0.0
        m[y0:y1, x0:x1] = 1.0
    # a full-image box gives a constant map; normalisation turns that into zeros, so an
    # all-ones map needs one dim pixel elsewhere, which only exists when the box is not full
    assume(all((x1 - x0) * (y1 - y0) < SIZE * SIZE for x0, y0, x1, y1 in gts))
    labels = np.arange(len(gts)) % 3
    v2 = MaxBoxAccV2Accumulator(step=0.1, size=SIZE)
    acc = LocalizationAccumulator(thresholds, size=SIZE, maxboxacc_v2=v2)
    acc.update(maps, [np.array([g], np.float64) for g in gts], np.eye(3)[labels], labels)
    res = acc.compute()
    for row in res["per_threshold"]:
        assert row["gt_known_loc"] == row["top1_loc"] == row["top5_loc"] == 100.0
    assert res["top1_cls"] == 100.0
    # MaxBoxAccV2 follows wsolevaluation (+1 IoU, boxes clipped to W-1, H-1): a box touching
    # the border loses a pixel row, which only tiny boxes feel at IoU 0.9
    if all(min(x1 - x0, y1 - y0) >= 20 for x0, y0, x1, y1 in gts):
        assert res["maxboxacc_v2"]["maxboxacc_v2"] == 100.0
    acc.close()


@settings(max_examples=15, deadline=None)
@given(st.permutations(list(range(8))), st.integers(0, 3))
def test_metrics_do_not_depend_on_image_order(order, seed):
    rng = np.random.default_rng(seed)
    maps = rng.random((8, 12, 12)).astype(np.float32)
    gts = [np.array([[rng.integers(0, 30), rng.integers(0, 30), rng.integers(32, 64), rng.integers(32, 64)]], float)
           for _ in range(8)]
    logits = rng.random((8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 8)

    def run(idx):
        v2 = MaxBoxAccV2Accumulator(step=0.1, size=SIZE)
        acc = LocalizationAccumulator([0.3, 0.5], size=SIZE, maxboxacc_v2=v2)
        acc.update(maps[idx], [gts[i] for i in idx], logits[idx], labels[idx])
        res = acc.compute()
        ious = acc.ious
        acc.close()
        return res, ious

    a, ious_a = run(list(range(8)))
    b, ious_b = run(list(order))
    assert a["per_threshold"] == b["per_threshold"]
    assert a["maxboxacc_v2"]["maxboxacc_v2"] == b["maxboxacc_v2"]["maxboxacc_v2"]
    assert (a["top1_cls"], a["top5_cls"]) == (b["top1_cls"], b["top5_cls"])
    np.testing.assert_array_equal(ious_a[:, list(order)], ious_b)  # thresholds x images


# ------------------------------------------------------------------- local-area guide box


class _Centre:
    """An rng stand-in that puts the guide box's centre in the middle of the image."""

    def randint(self, n: int) -> int:
        return n // 2


@SETTINGS
@given(st.integers(2, 512), st.integers(2, 512), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_guide_box_lies_inside_the_image(h, w, lam, seed):
    x0, y0, x1, y1 = guide_box(h, w, lam, np.random.RandomState(seed))
    assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
    assert (x1 - x0) * (y1 - y0) <= (1 - lam) * h * w + 1e-6


@SETTINGS
@given(st.integers(8, 512), st.integers(8, 512), st.floats(0, 1))
def test_guide_box_area_fraction_is_one_minus_lambda(h, w, lam):
    x0, y0, x1, y1 = guide_box(h, w, lam, _Centre())
    frac = (x1 - x0) * (y1 - y0) / (h * w)
    # sides are int(side * sqrt(1 - lam)) rounded down to even: at most 2 px short each
    assert frac <= 1 - lam + 1e-9
    assert frac >= 1 - lam - 2 / w - 2 / h - 1e-9
