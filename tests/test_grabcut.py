"""Stage-1 GrabCut masker: trimap rules, degenerate inputs, mask quality on a synthetic disc."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from locloc.errors import ConfigError
from locloc.masks.grabcut import FALLBACK_REASONS, GrabCutMasker, TrimapConfig, attention_mask
from locloc.masks.quality import box_iou, grid_search_trimap, mask_box, mask_iou


def disc_case(seed: int = 0, h: int = 120, w: int = 144):
    """A red disc on a noisy blue-grey background; a blurry attention blob offset from it."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 140, (h, w, 3)).astype(np.uint8)
    img[..., 2] = np.clip(img[..., 2].astype(int) + 40, 0, 255)
    gt = np.zeros((h, w), np.uint8)
    cx, cy, r = int(0.55 * w), int(0.5 * h), int(0.25 * h)
    cv2.circle(gt, (cx, cy), r, 1, -1)
    img[gt == 1] = (rng.normal(0, 10, (int(gt.sum()), 3)) + [220, 60, 40]).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:14, 0:14]
    ax, ay = cx / w * 14 + 0.8, cy / h * 14 - 0.6
    att = np.exp(-((xx + 0.5 - ax) ** 2 + (yy + 0.5 - ay) ** 2) / (2 * 2.6**2)) + rng.uniform(0, 0.15, (14, 14))
    return img, att.astype(np.float32), gt


def test_trimap_fraction_rule_on_hand_built_attention():
    att = np.zeros((4, 4), np.float32)
    att[1, 1], att[1, 2], att[2, 1] = 1.0, 0.5, 0.3  # normalised: 1.0, 0.5, 0.3, rest 0
    m = GrabCutMasker(TrimapConfig(fg_frac=0.6, bg_frac=0.2, mid_frac=0.4, border_frac=0.0), work_size=None)
    # 4x4 image: no upsampling beyond identity, so labels follow the cell values exactly.
    t = m.trimap((4, 4, 3), att)
    assert t[1, 1] == cv2.GC_FGD
    assert t[1, 2] == cv2.GC_PR_FGD  # 0.5 >= mid 0.4
    assert t[2, 1] == cv2.GC_PR_BGD  # 0.2 < 0.3 < 0.4
    assert t[0, 0] == cv2.GC_BGD
    assert t.dtype == np.uint8 and t.shape == (4, 4)


def test_trimap_border_band_is_sure_background():
    att = np.ones((14, 14), np.float32)
    att[0, 0] = 0.0  # not constant
    m = GrabCutMasker(TrimapConfig(border_frac=0.05))
    t = m.trimap((100, 80), att)
    b = max(1, round(0.05 * 80))
    assert (t[:b] == cv2.GC_BGD).all() and (t[-b:] == cv2.GC_BGD).all()
    assert (t[:, :b] == cv2.GC_BGD).all() and (t[:, -b:] == cv2.GC_BGD).all()
    assert (t[b:-b, b:-b][20:, 20:] == cv2.GC_FGD).all()


def test_trimap_quantile_rule():
    att = np.arange(100, dtype=np.float32).reshape(10, 10)
    m = GrabCutMasker(TrimapConfig(rule="quantile", fg_frac=0.9, bg_frac=0.5, mid_frac=0.7, border_frac=0.0))
    t = m.trimap((10, 10), att)
    assert (t == cv2.GC_FGD).sum() == 10  # top 10 % of pixels
    assert (t == cv2.GC_BGD).sum() == 50  # values <= the median (49.5)


@pytest.mark.parametrize(
    "kw",
    [dict(fg_frac=0.2, bg_frac=0.3), dict(rule="otsu"), dict(border_frac=0.6), dict(mid_frac=0.9)],
)
def test_trimap_config_validation(kw):
    with pytest.raises(ConfigError):
        TrimapConfig(**kw)


def test_grabcut_beats_thresholded_attention_on_disc():
    img, att, gt = disc_case()
    m = GrabCutMasker(iterations=5)
    mask = m.generate(img, att)
    assert mask.shape == gt.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert m.stats["grabcut"] == 1 and m.last_reason is None
    iou_gc = mask_iou(mask, gt)
    iou_att = mask_iou(attention_mask(att, gt.shape, 0.5), gt)
    assert iou_gc > 0.8
    assert iou_gc > iou_att + 0.1


def test_repeatable_and_work_size_resizes_back():
    img, att, gt = disc_case(seed=3, h=300, w=360)
    m = GrabCutMasker(iterations=2, work_size=128, seed=7)
    a, b = m.generate(img, att), m.generate(img, att)
    assert np.array_equal(a, b)
    assert a.shape == (300, 360)
    assert mask_iou(a, gt) > 0.7


def _run(m, img, att):
    mask = m.generate(img, att)
    assert mask.shape == img.shape[:2] and mask.dtype == np.uint8
    return mask


@pytest.mark.parametrize(
    "case,reason",
    [
        ("constant_image", "fallback_constant_image"),
        ("nan_attention", "fallback_bad_attention"),
        ("flat_attention", "fallback_flat_attention"),
        ("tiny_image", "fallback_small_image"),
        ("one_pixel", "fallback_small_image"),
        ("no_fg", "fallback_no_fg"),
        ("no_bg", "fallback_no_bg"),
    ],
)
def test_degenerate_inputs_fall_back_and_are_counted(case, reason):
    img, att, _ = disc_case()
    cfg = TrimapConfig()
    if case == "constant_image":
        img = np.full_like(img, 77)
    elif case == "nan_attention":
        att = att.copy()
        att[3, 3] = np.nan
    elif case == "flat_attention":
        att = np.full_like(att, 0.2)
    elif case == "tiny_image":
        img = img[:6, :6]
    elif case == "one_pixel":
        img = img[:1, :1]
    elif case == "no_fg":
        # Quantile levels of 1.0 put the fg threshold at the max; a 1-px border covers it.
        cfg = TrimapConfig(rule="quantile", fg_frac=1.0, bg_frac=0.5, border_frac=0.2)
        att = np.zeros((14, 14), np.float32)
        att[0, 0] = 1.0
    m = GrabCutMasker(cfg)
    if case == "no_bg":
        # Min-max normalisation always leaves a pixel at 0 <= bg_frac, so a trimap without
        # background only comes from a custom rule: simulate one.
        m.trimap = lambda shape, a: np.full(shape[:2], cv2.GC_FGD, np.uint8)
    mask = _run(m, img, att)
    assert m.stats[reason] == 1, m.stats
    assert m.stats["total"] == 1 and m.stats["grabcut"] == 0
    assert m.last_reason == reason
    if case in ("nan_attention", "flat_attention"):
        assert mask.all()  # no information: the whole image


def test_cv2_error_is_a_counted_fallback(monkeypatch):
    img, att, _ = disc_case()

    def boom(*a, **k):
        raise cv2.error("synthetic failure")

    monkeypatch.setattr(cv2, "grabCut", boom)
    m = GrabCutMasker()
    mask = m.generate(img, att)
    assert m.stats["fallback_error"] == 1
    assert np.array_equal(mask, m.fallback_mask(att, img.shape[:2]))
    assert set(m.stats) == {"total", "grabcut", *FALLBACK_REASONS}


def test_attention_mask_threshold_and_shape():
    att = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    m = attention_mask(att, (2, 2), 0.5)
    assert m.tolist() == [[0, 1], [1, 0]]
    assert attention_mask(att, (50, 30), 0.5).shape == (50, 30)


def test_mask_box_uses_largest_component_and_iou_has_no_plus_one():
    m = np.zeros((20, 20), np.uint8)
    m[2:4, 2:4] = 1
    m[10:18, 5:15] = 1
    assert mask_box(m).tolist() == [5, 10, 15, 18]
    assert mask_box(np.zeros((5, 5))).tolist() == [0, 0, 0, 0]
    iou = box_iou(np.array([0, 0, 10, 10.0]), np.array([[0, 0, 10, 10.0], [5, 0, 15, 10]]))
    assert iou.tolist() == pytest.approx([1.0, 50 / 150])


def test_grid_search_rows_sorted():
    cases = [disc_case(seed=s, h=64, w=72) for s in range(2)]
    rows = grid_search_trimap(cases, fg_fracs=(0.5, 0.7), bg_fracs=(0.2,), border_fracs=(0.03,), iterations=1)
    assert len(rows) == 2
    assert rows[0]["mask_iou"] >= rows[1]["mask_iou"]


def line_case(h: int = 128, w: int = 128):
    """A red disc with a thin dark line glued to it that runs to the far corner, on grey noise;
    attention on the disc and, weaker, along the line (as a ViT's attention on clutter)."""
    rng = np.random.default_rng(3)
    img = rng.integers(150, 190, (h, w, 3)).astype(np.uint8)
    gt = np.zeros((h, w), np.uint8)
    cv2.circle(gt, (40, 40), 22, 1, -1)
    img[gt == 1] = (220, 40, 40)
    cv2.line(img, (55, 55), (118, 118), (200, 40, 40), 2)  # the object's colour: GrabCut keeps it
    att = np.zeros((16, 16), np.float32)
    att[2:8, 2:8] = 1.0
    for k in range(7, 15):
        att[k, k] = 0.3
    return img, att, gt


def test_opening_cuts_a_glued_line_off_the_mask():
    from locloc.masks.grabcut import open_mask

    img, att, gt = line_case()
    trimap = TrimapConfig(fg_frac=0.6, bg_frac=0.0, mid_frac=0.1, border_frac=0.03)
    plain = GrabCutMasker(trimap, work_size=None).generate(img, att)
    opened = GrabCutMasker(trimap, work_size=None, open_frac=0.04).generate(img, att)
    gt_box = mask_box(gt)
    # without the opening the line stretches the box far past the disc
    assert mask_box(plain)[2] > 100 and box_iou(mask_box(plain), gt_box[None])[0] < 0.5
    assert box_iou(mask_box(opened), gt_box[None])[0] > 0.85
    assert plain[90:120, 90:120].any() and not opened[90:120, 90:120].any()  # the line's far end
    assert (opened <= plain).all()  # the opening only removes
    # a mask the opening would empty (only thin parts) is returned as it was
    thin = np.zeros((64, 64), np.uint8)
    thin[10:50, 30:32] = 1
    assert (open_mask(thin, 0.1) == thin).all()
    assert open_mask(thin, 0.0) is thin


def test_opening_kernel_scales_with_the_image():
    from locloc.masks.grabcut import open_mask

    sq = np.zeros((200, 200), np.uint8)
    sq[50:150, 50:150] = 1
    sq[100:104, 150:190] = 1  # a 4-px spur
    assert open_mask(sq, 0.01)[101, 170] == 1  # 3-px kernel: the spur stays
    assert open_mask(sq, 0.03)[101, 170] == 0  # 7-px kernel: gone
    assert open_mask(sq, 0.03)[100, 100] == 1 and open_mask(sq, 0.03)[52:148, 52:148].all()  # only corners round off


def test_opening_fraction_is_checked_and_recorded():
    with pytest.raises(ConfigError, match="opening"):
        GrabCutMasker(open_frac=0.6)
    m = GrabCutMasker(open_frac=0.02)
    assert GrabCutMasker.from_config(m.config()).open_frac == 0.02
