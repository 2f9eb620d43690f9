"""Parity of the metrics with the reference LocLoc evaluation (tests/data/golden)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from locloc.metrics import (
    LocalizationAccumulator,
    MaxBoxAccV2Accumulator,
    box_from_map,
    boxes_from_maps,
    normalize_map,
    to_uint8,
)

GOLDEN = Path(__file__).parent / "data" / "golden"
GENERATORS = ("unet", "deconv")


@pytest.fixture(scope="module")
def npz():
    with np.load(GOLDEN / "expected.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def expected():
    return json.loads((GOLDEN / "expected_metrics.json").read_text())


@pytest.mark.parametrize("gen", GENERATORS)
def test_cam224_and_uint8_exact(npz, gen):
    cams = normalize_map(npz[f"{gen}_maps"])
    np.testing.assert_array_equal(cams, npz[f"{gen}_cam224"])
    np.testing.assert_array_equal(to_uint8(cams), npz[f"{gen}_cam224_u8"])


@pytest.mark.parametrize("gen", GENERATORS)
def test_boxes_exact(npz, gen):
    boxes = boxes_from_maps(npz[f"{gen}_maps"], npz["thresholds"])
    stable = npz[f"{gen}_box_stable"]
    np.testing.assert_array_equal(boxes[stable], npz[f"{gen}_boxes"][stable])
    # The single-call reference path on the golden uint8 maps gives the same boxes.
    u8 = npz[f"{gen}_cam224_u8"]
    plain = np.stack([[box_from_map(m, t) for m in u8] for t in npz["thresholds"]])
    np.testing.assert_array_equal(plain[stable], npz[f"{gen}_boxes"][stable])


@pytest.mark.parametrize("gen", GENERATORS)
def test_accumulator_matches_engine_evaluate(npz, expected, gen):
    acc = LocalizationAccumulator(npz["thresholds"])
    # Two batches, logits in: top-5 is taken here as the reference does.
    for sl in (slice(0, 4), slice(4, 6)):
        gts = [b[None] for b in npz["gt_boxes"][sl]]
        acc.update(npz[f"{gen}_maps"][sl], gts, npz["logits"][sl], npz["labels"][sl])
    res = acc.compute()
    stable = npz[f"{gen}_box_stable"]
    np.testing.assert_array_equal(acc.boxes[stable], npz[f"{gen}_boxes"][stable])
    np.testing.assert_allclose(acc.ious, npz[f"{gen}_iou"], rtol=1e-12, atol=0)
    ref = expected["engine_evaluate_return_values"][gen]
    assert len(res["per_threshold"]) == len(ref)
    for row, want in zip(res["per_threshold"], ref):
        assert row["threshold"] == want["threshold"]
        assert row["gt_known_loc"] == want["gt_loc"]  # exact float64, as eval returns them
        assert row["top1_loc"] == want["top1_loc"]
        assert row["top5_loc"] == want["top5_loc"]
    # The reference's Cls numbers are float32 (33.33333206...); ours are float64.
    assert round(res["top1_cls"], 3) == 33.333 and round(res["top5_cls"], 3) == 66.667
    assert res["top1_cls"] == pytest.approx(ref[0]["top1_cls"], abs=1e-5)
    np.testing.assert_array_equal(npz[f"{gen}_top1_loc"], [r["top1_loc"] for r in res["per_threshold"]])
    np.testing.assert_array_equal(npz[f"{gen}_gt_known_loc"], [r["gt_known_loc"] for r in res["per_threshold"]])
    best = res["best"]
    assert best["gt_known_loc"] == max(w["gt_loc"] for w in ref)
    assert best["threshold"] == next(w["threshold"] for w in ref if w["gt_loc"] == best["gt_known_loc"])


def test_per_image_json_and_printed_text(npz, expected):
    per = expected["per_image"]
    acc = LocalizationAccumulator(npz["thresholds"])
    acc.update(npz["unet_maps"], np.asarray(per["gt_boxes_xyxy"]), np.asarray(per["top5_pred"]), np.asarray(per["labels_0based"]))
    stable = np.asarray(per["unet_box_stable_[threshold][image]"])
    np.testing.assert_array_equal(acc.boxes[stable], np.asarray(per["unet_boxes_xyxy_[threshold][image]"])[stable])
    res = acc.compute()
    for row, text in zip(res["per_threshold"], expected["main_eval_printed_text"]["unet"]):
        assert f"Loc GT:{row['gt_known_loc']:.3f}" in text
        assert f"Loc Top1:{row['top1_loc']:.3f} Loc Top5:{row['top5_loc']:.3f}" in text
        assert f"Cls Top1: {res['top1_cls']:.3f} Cls Top5:{res['top5_cls']:.3f}" in text


@pytest.mark.parametrize("gen", GENERATORS)
def test_maxboxacc_v2_on_golden_maps_runs_and_bounds_gt_known(npz, gen):
    # No reference number exists for MaxBoxAccV2 here; check its internal consistency:
    # at IoU 0.5 with all contours it is at least the single-box accuracy at the same level.
    v2 = MaxBoxAccV2Accumulator(cam_thresholds=npz["thresholds"], iou_thresholds=(0.5,))
    v2.update(npz[f"{gen}_maps"], npz["gt_boxes"])
    res = v2.compute()
    single = LocalizationAccumulator(npz["thresholds"], box_rule="wsol")
    single.update(npz[f"{gen}_maps"], npz["gt_boxes"])
    curve = np.asarray(res["curves"][0])
    assert (curve >= [r["gt_known_loc"] for r in single.compute()["per_threshold"]]).all()
    assert res["maxboxacc_v2"] == curve.max()
