"""Eval transform parity with the reference, box mappings, and the joint train transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from locloc.data import load_cub
from locloc.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    JointTrainTransform,
    crop_offset,
    crop_to_original,
    map_boxes_exact,
    map_boxes_reference,
    resized_size,
)
from locloc.fileio import open_image


@pytest.fixture(scope="module")
def golden(golden_dir: Path):
    ds = load_cub(golden_dir / "cub_mini")
    return ds.split("test"), np.load(golden_dir / "expected.npz")


def test_golden_images_exact(golden) -> None:
    samples, expected = golden
    t = EvalTransform()
    for k, s in enumerate(samples):
        image, _ = t(open_image(s.path), s.boxes)
        assert image.dtype == torch.float32 and image.shape == (3, 224, 224)
        np.testing.assert_array_equal(image.numpy(), expected["input_images"][k])


def test_golden_boxes_exact(golden) -> None:
    samples, expected = golden
    t = EvalTransform(box_mapping="reference")
    for k, s in enumerate(samples):
        _, boxes = t(open_image(s.path), s.boxes)
        assert boxes.dtype == np.float64 and boxes.shape == (1, 4)
        np.testing.assert_array_equal(boxes[0], expected["gt_boxes"][k])


def test_reference_quirks_on_500x333() -> None:
    # x, y, w, h = 90.5 49.7 340.4 241.2 -> truncated to 90 49 340 241; box offset 81, not 80
    ref = map_boxes_reference(np.array([[90.5, 49.7, 430.9, 290.9]]), (500, 333))
    s = 256 / 333
    np.testing.assert_allclose(ref, [[0.0, 49 * s - 16, 224.0, 49 * s - 16 + 241 * s]])
    assert crop_offset(resized_size((500, 333), 256), 224) == (80, 16)
    exact = map_boxes_exact(np.array([[90.5, 49.7, 430.9, 290.9]]), (500, 333))
    sx = 384 / 500
    assert 90.5 * sx - 80 < 0  # clipped to the crop
    np.testing.assert_allclose(exact, [[0.0, 49.7 * s - 16, 224.0, 290.9 * s - 16]])


def test_reference_truncates_widths_read_back_from_corners() -> None:
    # 0.1 + 0.2 != 0.3 in floats: w = x1 - x0 must still truncate to the file's integer
    x0, w = 0.1, 160.0
    box = np.array([[x0, 0.0, x0 + w, 10.0]])
    out = map_boxes_reference(box, (224, 224), resize=224, crop=224)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 160.0, 10.0]])


def test_exact_mapping_matches_image_geometry() -> None:
    # A white rectangle: its bright area in the transformed image is the mapped box.
    img = np.zeros((333, 500, 3), np.uint8)
    img[100:250, 120:400] = 255
    t = EvalTransform(box_mapping="exact")
    x, boxes = t(Image.fromarray(img), np.array([[120, 100, 400, 250]]))
    bright = (x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).numpy() > 0.5
    ys, xs = np.nonzero(bright)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], boxes[0], atol=1.0)


def test_empty_boxes_and_bad_arguments() -> None:
    t = EvalTransform(resize=64, crop=32)
    img = Image.new("RGB", (50, 80))
    x, b = t(img, None)
    assert x.shape == (3, 32, 32) and b.shape == (0, 4)
    with pytest.raises(ValueError, match="box_mapping"):
        EvalTransform(box_mapping="nearest")
    with pytest.raises(ValueError, match="must not exceed"):
        EvalTransform(resize=200, crop=224)


sizes = st.tuples(st.integers(20, 900), st.integers(20, 900))


@st.composite
def image_and_box(draw):
    w, h = draw(sizes)
    x0 = draw(st.floats(0, w - 1))
    y0 = draw(st.floats(0, h - 1))
    x1 = draw(st.floats(x0 + 0.5, w))
    y1 = draw(st.floats(y0 + 0.5, h))
    return (w, h), np.array([[x0, y0, x1, y1]])


@settings(max_examples=200, deadline=None)
@given(image_and_box(), st.sampled_from([(256, 224), (64, 48), (224, 224)]))
def test_exact_round_trip(case, geometry) -> None:
    (w, h), box = case
    resize, crop = geometry
    in_crop = map_boxes_exact(box, (w, h), resize, crop)
    assert ((in_crop >= 0) & (in_crop <= crop)).all()
    back = crop_to_original(in_crop, (w, h), resize, crop)
    assert (back >= 0).all() and (back[:, [0, 2]] <= w).all() and (back[:, [1, 3]] <= h).all()
    # The part of the box visible in the crop comes back exactly.
    window = crop_to_original(np.array([[0, 0, crop, crop]]), (w, h), resize, crop)[0]
    visible = np.concatenate([np.maximum(box[0, :2], window[:2]), np.minimum(box[0, 2:], window[2:])])
    if (visible[2:] > visible[:2]).all():
        np.testing.assert_allclose(back[0], visible, atol=1e-6)
    assert np.array_equal(EvalTransform(resize, crop).to_original(in_crop, (w, h)), back)


# --- joint train transform ------------------------------------------------------------


def scene(w: int = 90, h: int = 70, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """An image whose red channel is high exactly on the mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 15:50] = 1
    mask[45:65, 60:85] = 1
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.where(mask > 0, 230, 20)
    img[..., 1] = rng.integers(0, 255, (h, w))
    img[..., 2] = rng.integers(0, 255, (h, w))
    return Image.fromarray(img), mask


def red_mask(x: torch.Tensor) -> np.ndarray:
    return ((x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) > 0.5).numpy()


@pytest.mark.parametrize("seed", range(6))
def test_joint_keeps_image_and_mask_aligned(seed: int) -> None:
    img, mask = scene(seed=seed)
    t = JointTrainTransform(resize=64, crop=48, generator=torch.Generator().manual_seed(seed))
    x, m = t(img, mask * 255)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert m.shape == (1, 48, 48) and m.dtype == torch.float32
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    agree = (red_mask(x) == (m[0].numpy() > 0.5)).mean()
    assert agree > 0.97


def test_joint_flip_and_seeding() -> None:
    img, mask = scene()

    def run(flip_p: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        return JointTrainTransform(resize=64, crop=48, flip_p=flip_p, generator=g)(img, mask)

    x0, m0 = run(0.0, 3)
    x1, m1 = run(1.0, 3)
    torch.testing.assert_close(x1, x0.flip(-1))
    torch.testing.assert_close(m1, m0.flip(-1))
    xa, ma = run(0.5, 7)
    xb, mb = run(0.5, 7)
    assert torch.equal(xa, xb) and torch.equal(ma, mb)
    crops = {run(0.0, s)[0].sum().item() for s in range(5)}
    assert len(crops) > 1  # different seeds, different crops
    torch.manual_seed(11)
    xg, _ = JointTrainTransform(resize=64, crop=48)(img, mask)
    torch.manual_seed(11)
    assert torch.equal(JointTrainTransform(resize=64, crop=48)(img, mask)[0], xg)


def test_joint_mask_formats_and_resolution() -> None:
    img, mask = scene()

    def run(m):
        return JointTrainTransform(resize=64, crop=48, generator=torch.Generator().manual_seed(1))(img, m)[1]

    ref = run(mask)
    assert torch.equal(run(Image.fromarray(mask * 255)), ref)
    assert torch.equal(run(mask.astype(bool)), ref)
    assert torch.equal(run(torch.from_numpy(mask)[None]), ref)
    # A mask at half resolution is resized on its own and still lines up.
    small = np.array(Image.fromarray(mask * 255).resize((45, 35), Image.NEAREST))
    assert (run(small) == ref).float().mean() > 0.95
    with pytest.raises(ValueError, match="H x W"):
        run(np.zeros((2, 3, 4, 5), np.uint8))
