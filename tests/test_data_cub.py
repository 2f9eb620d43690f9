"""CUB-layout loading: the real annotation files, the golden mini set, and bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from locloc.data import (
    DataSet,
    WSOLDataset,
    collate_wsol,
    heldout_split,
    load_cub,
    load_dataset,
)
from locloc.data.transforms import EvalTransform
from locloc.errors import DataError

GOOD = {
    "images.txt": "1 001.A/a1.jpg\n2 001.A/a2.jpg\n3 002.B/b1.jpg\n",
    "image_class_labels.txt": "1 1\n2 1\n3 2\n",
    "train_test_split.txt": "1 1\n2 0\n3 1\n",
    "bounding_boxes.txt": "1 10.0 20.0 30.0 40.0\n2 0.5 1.5 2.5 3.5\n3 5 6 7 8\n",
    "classes.txt": "1 001.A\n2 002.B\n",
}


def make_cub(root: Path, **override: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in {**GOOD, **override}.items():
        (root / name).write_text(text)
    return root


# --- real files -----------------------------------------------------------------------


def test_real_cub_counts(real_cub_root: Path) -> None:
    ds = load_cub(real_cub_root)
    train, test = ds.split("train"), ds.split("test")
    assert len(ds.classes) == 200
    assert (len(train), len(test), len(train) + len(test)) == (5994, 5794, 11788)
    assert ds.classes[0] == "001.Black_footed_Albatross"
    labels = np.array([s.label for s in train + test])
    assert labels.min() == 0 and labels.max() == 199
    assert np.bincount(labels).min() >= 41
    # id 1 is a test image: "60.0 27.0 325.0 304.0", size 500x335 from sizes.txt
    first = {s.image_id: s for s in test}["1"]
    assert first.relpath == "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    assert first.path == ds.images_root / first.relpath
    np.testing.assert_array_equal(first.boxes, [[60.0, 27.0, 385.0, 331.0]])
    assert first.size == (500, 335)
    assert first.mask_path is None


def test_real_cub_loads_without_sizes(real_cub_root: Path, tmp_path: Path) -> None:
    for f in real_cub_root.iterdir():
        if f.name != "sizes.txt":
            shutil.copy(f, tmp_path / f.name)
    ds = load_cub(tmp_path)
    assert all(s.size is None for s in ds.split("train"))
    assert len(ds.split("test")) == 5794


def test_golden_mini(golden_dir: Path) -> None:
    ds = load_cub(golden_dir / "cub_mini", check_images=True)
    test = ds.split("test")
    assert ds.split("train") == []
    assert [s.size for s in test] == [(300, 200), (250, 380), (224, 224), (500, 333), (640, 480), (180, 260)]
    expected = np.load(golden_dir / "expected.npz")
    assert [s.relpath for s in test] == list(expected["names"])
    assert [s.label for s in test] == list(expected["labels"])
    np.testing.assert_allclose(test[3].boxes, [[90.5, 49.7, 430.9, 290.9]])


# --- layout variations that must work -------------------------------------------------


def test_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    crlf = {k: v.replace("\n", "\r\n") for k, v in GOOD.items()}
    crlf["classes.txt"] = "1 001.A\r\n2 002.B"  # no final newline
    ds = load_cub(make_cub(tmp_path, **crlf))
    assert [s.relpath for s in ds.split("train")] == ["001.A/a1.jpg", "002.B/b1.jpg"]
    assert ds.classes == ["001.A", "002.B"]
    np.testing.assert_array_equal(ds.split("test")[0].boxes, [[0.5, 1.5, 3.0, 5.0]])


def test_split_lookup_names_available(tmp_path: Path) -> None:
    ds = load_cub(make_cub(tmp_path))
    with pytest.raises(DataError, match="available: test, train"):
        ds.split("val")


def test_mask_paths_from_segmentations(synthetic_root: Path) -> None:
    ds = load_cub(synthetic_root)
    for s in ds.split("train") + ds.split("test"):
        assert s.mask_path is not None and s.mask_path.is_file()
        assert s.mask_path.relative_to(synthetic_root / "segmentations").with_suffix("") == Path(
            s.relpath
        ).with_suffix("")


# --- bad inputs -----------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*CUB-200-2011") as e:
        load_cub(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="found a file"):
        load_cub(tmp_path / "f")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_missing_file(tmp_path: Path, name: str) -> None:
    make_cub(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(DataError, match="file not found.*CUB-200-2011 layout") as e:
        load_cub(tmp_path)
    assert str(tmp_path / name) in str(e.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    make_cub(tmp_path)
    (tmp_path / "bounding_boxes.txt").unlink()
    (tmp_path / "bounding_boxes.txt").mkdir()
    with pytest.raises(DataError, match="bounding_boxes.txt: expected a file, found a directory"):
        load_cub(tmp_path)


BAD = [
    ("images.txt", "1 001.A/a1.jpg\n2 001.A/a2.jpg extra\n3 002.B/b1.jpg\n", 2, "expected 2 columns"),
    ("bounding_boxes.txt", "1 10.0 20.0 30.0\n2 0.5 1.5 2.5 3.5\n3 5 6 7 8\n", 1, "expected 5 columns"),
    ("image_class_labels.txt", "1 1\n2 one\n3 2\n", 2, "label 'one' is not an integer"),
    ("images.txt", "1 001.A/a1.jpg\nx 001.A/a2.jpg\n3 002.B/b1.jpg\n", 2, "id 'x' is not an integer"),
    ("bounding_boxes.txt", "1 10.0 20.0 30.0 40.0\n2 0.5 abc 2.5 3.5\n3 5 6 7 8\n", 2, "box y 'abc' is not a number"),
    ("train_test_split.txt", "1 1\n2 0\n\n2 1\n", 4, "duplicate id 2 \\(first on line 2\\)"),
    ("image_class_labels.txt", "1 1\n2 1\n3 2\n4 1\n", 4, "id 4 is not in images.txt"),
    ("image_class_labels.txt", "1 1\n2 1\n3 3\n", 3, "label 3 out of range 1..2 of classes.txt"),
    ("image_class_labels.txt", "1 1\n2 0\n3 2\n", 2, "label 0 out of range"),
    ("bounding_boxes.txt", "1 10.0 20.0 0.0 40.0\n2 0.5 1.5 2.5 3.5\n3 5 6 7 8\n", 1, "must be > 0"),
    ("bounding_boxes.txt", "1 10.0 20.0 30.0 40.0\n2 0.5 1.5 2.5 3.5\n3 5 6 7 -8\n", 3, "must be > 0"),
    ("bounding_boxes.txt", "1 10.0 20.0 30.0 40.0\n2 0.5 nan 2.5 3.5\n3 5 6 7 8\n", 2, "must be finite"),
    ("bounding_boxes.txt", "1 10.0 20.0 inf 40.0\n2 0.5 1.5 2.5 3.5\n3 5 6 7 8\n", 1, "must be finite"),
    ("train_test_split.txt", "1 1\n2 2\n3 1\n", 2, "split flag must be 1"),
    ("images.txt", "1 001.A/a1.jpg\n2 ../../etc/passwd\n3 002.B/b1.jpg\n", 2, "without '..'"),
    ("images.txt", "1 001.A/a1.jpg\n2 /abs/a2.jpg\n3 002.B/b1.jpg\n", 2, "must be relative"),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), BAD)
def test_bad_file_names_file_and_line(tmp_path: Path, name: str, text: str, line: int, message: str) -> None:
    make_cub(tmp_path, **{name: text})
    with pytest.raises(DataError, match=message) as e:
        load_cub(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / name}:{line}: ")


def test_id_missing_from_other_file(tmp_path: Path) -> None:
    make_cub(tmp_path, **{"bounding_boxes.txt": "1 10.0 20.0 30.0 40.0\n3 5 6 7 8\n"})
    with pytest.raises(DataError, match=r"bounding_boxes.txt: no line for id 2 \(listed in images.txt line 2\)"):
        load_cub(tmp_path)


def test_class_ids_with_gap(tmp_path: Path) -> None:
    make_cub(tmp_path, **{"classes.txt": "1 001.A\n3 003.C\n"})
    with pytest.raises(DataError, match="classes.txt: class ids must be 1..N"):
        load_cub(tmp_path)


def test_box_outside_image_when_size_known(tmp_path: Path) -> None:
    make_cub(tmp_path, **{"sizes.txt": "1 100 100\n2 50 50\n3 4 100\n"})
    with pytest.raises(DataError, match=r"bounding_boxes.txt:3: .*outside the 4x100 image 002.B/b1.jpg"):
        load_cub(tmp_path)
    # A far edge past the border is accepted (the official file has such boxes).
    (tmp_path / "sizes.txt").write_text("1 100 100\n2 3 3\n3 10 100\n")
    ds = load_cub(tmp_path)
    assert ds.split("test")[0].size == (3, 3)


def test_check_images_missing_image(tmp_path: Path) -> None:
    make_cub(tmp_path)
    with pytest.raises(DataError, match="a1.jpg: image file not found"):
        load_cub(tmp_path, check_images=True)


def test_check_images_reads_sizes(tmp_path: Path) -> None:
    make_cub(tmp_path)
    for rel, size in (("001.A/a1.jpg", (64, 80)), ("001.A/a2.jpg", (9, 9)), ("002.B/b1.jpg", (20, 30))):
        (tmp_path / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(tmp_path / "images" / rel)
    ds = load_cub(tmp_path, check_images=True)
    assert [s.size for s in ds.split("train")] == [(64, 80), (20, 30)]


# --- dispatcher, held-out split, torch data set ---------------------------------------


def test_load_dataset_dispatch(synthetic_root: Path, tmp_path: Path) -> None:
    a = load_dataset(synthetic_root)
    b = load_dataset(synthetic_root / "images")  # the seed README's form
    assert isinstance(a, DataSet) and a.name == "cub" and b.root == a.root == synthetic_root
    assert len(a.split("train")) == 24 and len(a.split("test")) == 12
    with pytest.raises(DataError, match="images.txt: file not found"):
        load_dataset(tmp_path, kind="cub")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="not a recognised data set.*accepted layouts"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "absent")
    with pytest.raises(DataError, match="unknown data set kind"):
        load_dataset(synthetic_root, kind="coco")


def test_heldout_split(synthetic_root: Path) -> None:
    train = load_cub(synthetic_root).split("train")
    rest, held = heldout_split(train, per_class=2, seed=0)
    assert len(held) == 8 and len(rest) == 16
    assert sorted(s.label for s in held) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {s.image_id for s in rest}.isdisjoint(s.image_id for s in held)
    assert heldout_split(train, 2, 0) == (rest, held)
    assert heldout_split(train, 2, 1)[1] != held
    # A class keeps at least half its images for training.
    small = [s for s in train if s.label == 0][:2] + [s for s in train if s.label == 1][:1] + \
        [s for s in train if s.label == 2][:5]
    rest2, held2 = heldout_split(small, per_class=5)
    assert sorted(s.label for s in held2) == [0, 2, 2] and sorted(s.label for s in rest2) == [0, 1, 2, 2, 2]


def test_wsol_dataset_and_collate(synthetic_root: Path) -> None:
    samples = load_cub(synthetic_root).split("test")[:3]
    ds = WSOLDataset(samples, EvalTransform(resize=80, crop=64))
    item = ds[1]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["boxes"].shape == (1, 4) and item["boxes"].dtype == torch.float64
    assert item["orig_size"] == (96, 96) and item["index"] == 1 and item["label"] == samples[1].label
    items = [ds[0], ds[1], dict(ds[2], boxes=torch.zeros((0, 4), dtype=torch.float64))]
    items[0]["boxes"] = torch.cat([items[0]["boxes"], items[0]["boxes"] + 1])
    batch = collate_wsol(items)
    assert batch["image"].shape == (3, 3, 64, 64)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [s.label for s in samples]
    assert batch["boxes"].shape == (3, 2, 4) and batch["boxes"].dtype == torch.float64
    assert torch.isnan(batch["boxes"][1, 1]).all() and torch.isnan(batch["boxes"][2]).all()
    assert not torch.isnan(batch["boxes"][0]).any()
    assert batch["orig_size"].tolist() == [[96, 96]] * 3 and batch["index"].tolist() == [0, 1, 2]
