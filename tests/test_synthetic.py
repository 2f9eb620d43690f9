"""The synthetic CUB-layout data set and the make-synthetic command."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from locloc.cli import main
from locloc.data import load_cub
from locloc.data.synthetic import (
    MAX_CLASSES,
    centre_box_baseline,
    class_names,
    class_spec,
    make_synthetic,
    mask_box_xywh,
    render,
)
from locloc.errors import DataError


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_loads_with_counts(synthetic_root: Path) -> None:
    ds = load_cub(synthetic_root, check_images=True)
    assert ds.classes == class_names(4)
    train, test = ds.split("train"), ds.split("test")
    assert len(train) == 24 and len(test) == 12
    assert np.bincount([s.label for s in train]).tolist() == [6] * 4
    assert np.bincount([s.label for s in test]).tolist() == [3] * 4
    assert all(s.size == (96, 96) for s in train + test)


def test_masks_match_boxes(synthetic_root: Path) -> None:
    ds = load_cub(synthetic_root)
    for s in ds.split("train") + ds.split("test"):
        img = Image.open(s.path)
        assert img.mode == "RGB" and img.size == (96, 96)
        m = np.asarray(Image.open(s.mask_path))
        assert m.shape == (96, 96) and set(np.unique(m)) == {0, 255}
        x, y, w, h = mask_box_xywh(m)
        np.testing.assert_array_equal(s.boxes, [[x, y, x + w, y + h]])
        # The object is neither tiny nor the whole image.
        side = max(w, h) / 96
        assert 0.1 <= side <= 0.9


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", classes=3, train=2, test=1, size=48, seed=5)
    b = make_synthetic(tmp_path / "b", classes=3, train=2, test=1, size=48, seed=5)
    c = make_synthetic(tmp_path / "c", classes=3, train=2, test=1, size=48, seed=6)
    ta, tb, tc = tree_bytes(a), tree_bytes(b), tree_bytes(c)
    assert len(ta) == 6 + 9 * 2 and ta == tb
    assert ta["images.txt"] == tc["images.txt"]
    assert ta["bounding_boxes.txt"] != tc["bounding_boxes.txt"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


def test_centre_box_baseline_is_low(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "d", classes=6, train=12, test=6, size=64, seed=1)
    ds = load_cub(root)
    result = centre_box_baseline(ds.split("train") + ds.split("test"))
    assert result["centre_50"] < 40.0
    assert result["best_centre"] < 40.0
    assert result["best_centre"] >= result["centre_50"]
    print(f"centre-box GT-known Loc on synthetic: {result}")


def test_centre_box_baseline_counts_hits(synthetic_root: Path) -> None:
    s = load_cub(synthetic_root).split("test")[0]
    centred = replace(s, boxes=np.array([[24.0, 24.0, 72.0, 72.0]]))  # side 0.5 of 96
    far = replace(s, boxes=np.array([[0.0, 0.0, 10.0, 10.0]]))
    r = centre_box_baseline([centred, far])
    # IoU >= 0.5 needs a centred side fraction in [0.5 / sqrt(2), 0.5 * sqrt(2)]
    assert r["best_centre"] == 50.0 and 0.35 <= r["best_fraction"] <= 0.71


def test_classes_differ_by_shape_and_texture() -> None:
    specs = [class_spec(k) for k in range(MAX_CLASSES)]
    assert len(set(specs)) == MAX_CLASSES
    for k in range(5):  # the first classes differ in both shape and texture
        assert specs[k][0] != specs[k + 1][0] and specs[k][1] != specs[k + 1][1]
    with pytest.raises(ValueError):
        class_spec(MAX_CLASSES)


def test_colour_and_position_vary_within_a_class() -> None:
    means, centres = [], []
    for i in range(12):
        img, mask = render(0, np.random.default_rng(i), 96)
        means.append(img[mask > 0].mean(0))
        ys, xs = np.nonzero(mask)
        centres.append((xs.mean(), ys.mean()))
    assert np.std(np.array(means), axis=0).min() > 15  # colour is not the class
    assert np.std(np.array(centres), axis=0).min() > 8  # not always centred


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty.*--force"):
        make_synthetic(out, classes=1, train=1, test=0, size=32)
    with pytest.raises(DataError, match="refusing to replace"):
        make_synthetic(out, classes=1, train=1, test=0, size=32, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    make_synthetic(empty, classes=1, train=1, test=0, size=32)
    make_synthetic(empty, classes=2, train=1, test=1, size=32, force=True)
    assert len(load_cub(empty).classes) == 2
    with pytest.raises(DataError, match="--classes"):
        make_synthetic(tmp_path / "x", classes=0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["make-synthetic", str(out), "--classes", "2", "--train", "2", "--test", "1", "--size", "40", "--seed", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "6 images" in printed and "4 train" in printed
    assert len(load_cub(out).split("test")) == 2
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
