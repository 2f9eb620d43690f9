"""``locloc predict`` and the Python API: boxes in original-image pixels, overlays, JSON lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from locloc import LocLoc
from locloc.cli import main

TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3)


class Brightness(nn.Module):
    """A stand-in network whose map is the input's brightness: the box must land on the
    bright rectangle, which tests the geometry alone."""

    classifier = None
    num_classes = None

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": None, "maps": x.mean(1, keepdim=True)}


def _image(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    return Image.fromarray(a)


@pytest.mark.parametrize("view", ["full", "crop"])
@pytest.mark.parametrize(
    "size,box",
    [((320, 180), (40, 30, 200, 150)), ((150, 400), (20, 120, 130, 300)), ((97, 211), (10, 60, 80, 190))],
)
def test_box_round_trip_to_original_pixels(view, size, box):
    cfg = {"input": {"resize": 73, "crop": 64}, "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]}}
    model = LocLoc(Brightness(), cfg, device="cpu", view=view, threshold=0.5)
    pred = model.predict(_image(*size, box))
    w, h = size
    assert pred.image_size == (w, h)
    assert pred.heatmap.shape == (h, w)
    expected = np.array(box, dtype=float)
    if view == "crop":
        # torchvision Resize(73) + CenterCrop(64), computed here independently: only the
        # centre crop is seen, so the box is the object's part inside it
        rw, rh = (73, int(73 * h / w)) if w <= h else (int(73 * w / h), 73)
        ox, oy = round((rw - 64) / 2), round((rh - 64) / 2)
        vis = np.array([ox * w / rw, oy * h / rh, (ox + 64) * w / rw, (oy + 64) * h / rh])
        expected = np.clip(expected, vis[[0, 1, 0, 1]], vis[[2, 3, 2, 3]])
    # one input pixel spans up to size/64 original pixels; allow that plus resampling blur
    tol = [2 + w / 64 * 1.5, 2 + h / 64 * 1.5] * 2
    assert np.all(np.abs(np.array(pred.box) - expected) <= tol), (pred.box, expected)
    assert 0 <= pred.box[0] < pred.box[2] <= w and 0 <= pred.box[1] < pred.box[3] <= h


def test_crop_view_box_stays_inside_centre_crop():
    # the object spans the whole width: in crop view only the centre crop can be boxed
    cfg = {"input": {"resize": 73, "crop": 64}, "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]}}
    model = LocLoc(Brightness(), cfg, device="cpu", view="crop", threshold=0.5)
    pred = model.predict(_image(300, 100, (0, 30, 300, 70)))
    assert abs(pred.box[1] - 30) < 4 and abs(pred.box[3] - 70) < 4
    assert pred.box[0] > 50 and pred.box[2] < 250  # long side cut to the centre crop


@pytest.fixture(scope="module")
def model_dir(tiny_rgb_model_dir):
    return tiny_rgb_model_dir


def test_predict_cli_folder(model_dir, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    _image(120, 80, (10, 10, 60, 50)).save(imgs / "a.png")
    _image(50, 90, (5, 5, 40, 60)).save(imgs / "sub" / "b.jpg")
    (imgs / "notes.txt").write_text("not an image")
    out = tmp_path / "pred.jsonl"
    vis = tmp_path / "vis"
    rc = main(["predict", str(imgs), "--model-dir", str(model_dir), "--out", str(out),
               "--save-vis", str(vis), "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "predicted 2 image(s)" in err and "skipped 1 non-image" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image_size"] for r in rows] == [[120, 80], [50, 90]]
    for r in rows:
        w, h = r["image_size"]
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        assert r["class_name"] in ("red", "green", "blue")
        assert len(r["top5"]) == 3 and abs(sum(t["score"] for t in r["top5"]) - 1) < 1e-4
    pngs = sorted(p.name for p in vis.iterdir())
    assert pngs == ["a.png", "b.png"]
    assert Image.open(vis / "a.png").size == (120, 80)


def test_predict_api_matches_cli_and_accepts_pil(model_dir, tmp_path):
    img = _image(90, 70, (20, 10, 70, 60))
    m = LocLoc.from_pretrained(model_dir, device="cpu")
    a = m.predict(img)
    img.save(tmp_path / "x.png")
    b = m.predict(tmp_path / "x.png")
    assert a.box == b.box and a.class_id == b.class_id
    assert a.to_json()["path"] is None and b.to_json()["path"].endswith("x.png")


def test_predict_errors(model_dir, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.png"), "--model-dir", str(model_dir)]) == 2
    assert "missing.png" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is text")
    assert main(["predict", str(bad), "--model-dir", str(model_dir)]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert main(["predict", str(bad), "--model-dir", str(tmp_path / "nomodel")]) == 2
    assert "nomodel" in capsys.readouterr().err
