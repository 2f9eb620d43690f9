"""Reduced-scale JPEG decoding (``open_image_reduced``) and its use by predict and evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from locloc.data.datasets import WSOLDataset
from locloc.data.records import Sample
from locloc.data.transforms import EvalTransform
from locloc.errors import DataError
from locloc.fileio import open_image, open_image_reduced


def _photo(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A smooth test picture: grey gradient background, one red ellipse inside ``box``."""
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    a = (90 + 60 * x + 40 * y) * np.ones((1, 1, 3), np.float32)
    im = Image.fromarray(a.astype(np.uint8), "RGB")
    ImageDraw.Draw(im).ellipse(box, fill=(220, 30, 30))
    return im


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("decode") / "big.jpg"
    _photo(2000, 1500, (500, 400, 1400, 1200)).save(p, quality=92)
    return p


def test_big_jpeg_is_decoded_at_the_largest_reduction_that_stays_above_the_target(big_jpeg):
    img, size = open_image_reduced(big_jpeg, 256)
    assert size == (2000, 1500)  # the header's size, not the decoded one
    assert img.mode == "RGB"
    # 1500 // 256 = 5 -> DCT scale 1/4: 500 x 375, both sides >= 256, and no smaller scale fits
    assert img.size == (500, 375)
    img8, _ = open_image_reduced(big_jpeg, 100)
    assert img8.size == (250, 188)  # 1/8, rounded up by libjpeg


def test_reduced_decode_matches_full_decode_after_the_resize(big_jpeg):
    tf = EvalTransform(resize=256, crop=224)
    full = tf.image(open_image(big_jpeg))
    reduced = tf.image(open_image_reduced(big_jpeg, 256)[0])
    assert full.shape == reduced.shape == (3, 224, 224)
    # normalized units (std ~0.22): 0.05 is about 3 grey levels on average
    assert float((full - reduced).abs().mean()) < 0.05


def test_small_jpeg_and_other_formats_are_read_in_full(tmp_path):
    small = tmp_path / "small.jpg"
    _photo(500, 375, (100, 80, 300, 300)).save(small)
    img, size = open_image_reduced(small, 256)
    assert img.size == size == (500, 375)  # short side < 2 x 256: nothing to gain
    png = tmp_path / "big.png"
    _photo(1200, 900, (100, 80, 800, 700)).save(png)
    img, size = open_image_reduced(png, 100)
    assert img.size == size == (1200, 900)


def test_truncated_big_jpeg_still_fails_with_the_file_name(big_jpeg, tmp_path):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(big_jpeg.read_bytes()[: big_jpeg.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        open_image_reduced(bad, 256)
    with pytest.raises(ValueError, match="min_short_side"):
        open_image_reduced(big_jpeg, 0)


def test_dataset_maps_boxes_with_the_original_size(big_jpeg):
    box = np.array([[500.0, 400.0, 1400.0, 1200.0]])
    sample = Sample(image_id="1", path=big_jpeg, relpath="big.jpg", label=0, boxes=box)
    item = WSOLDataset([sample], EvalTransform(256, 224))[0]
    assert tuple(item["orig_size"]) == (2000, 1500)
    assert tuple(item["image"].shape) == (3, 224, 224)
    # by hand, the reference's arithmetic on the header size: scale 256/1500, resized width
    # 341.33, crop offsets round(118.33/2) = 59 and round(33/2) = 16 (half-even)
    s = 256 / 1500
    expected = [500 * s - 59, 400 * s - 16, 500 * s - 59 + 900 * s, 400 * s - 16 + 800 * s]
    np.testing.assert_allclose(item["boxes"].numpy()[0], expected, atol=1e-9)


@pytest.mark.parametrize("view", ["full", "crop"])
def test_predict_on_a_big_jpeg_path_matches_the_full_decode(tiny_rgb_model_dir, big_jpeg, view):
    from locloc.api import LocLoc

    model = LocLoc.from_pretrained(tiny_rgb_model_dir, view=view)
    by_path = model.predict(big_jpeg)  # reduced decode
    by_pil = model.predict(open_image(big_jpeg))  # full decode
    assert by_path.image_size == by_pil.image_size == (2000, 1500)
    assert by_path.heatmap.shape == by_pil.heatmap.shape == (1500, 2000)
    assert float(np.abs(by_path.heatmap - by_pil.heatmap).mean()) < 0.02
    # one input pixel of the 64-px model is ~31 original pixels on this image
    px = 2000 / model.crop
    np.testing.assert_allclose(by_path.box, by_pil.box, atol=1.5 * px)
    assert by_path.class_id == by_pil.class_id
