"""ILSVRC val (list file, XML), image trees in ImageFolder order, and image listings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from locloc.data import (
    list_images,
    load_dataset,
    load_ilsvrc_val_list,
    load_ilsvrc_val_xml,
    load_image_tree,
)
from locloc.errors import DataError

# --- list file ------------------------------------------------------------------------


def test_real_val_list(real_ilsvrc_list: Path, tmp_path: Path) -> None:
    ds = load_ilsvrc_val_list(real_ilsvrc_list, tmp_path / "val")
    val = ds.split("val")
    assert len(val) == 50_000
    n_boxes = np.array([len(s.boxes) for s in val])
    assert (n_boxes > 1).sum() == 11_715  # multi-box lines keep every box
    assert n_boxes.max() == 20 and n_boxes.sum() == 80_477
    assert len(ds.classes) == 1000 and ds.classes[:2] == ["n01440764", "n01443537"]
    assert all(s.relpath.split("/")[0] == ds.classes[s.label] for s in val[:2000])
    second = val[1]
    assert second.relpath == "n09193705/ILSVRC2012_val_00000002.JPEG" and second.label == 970
    np.testing.assert_array_equal(second.boxes, [[45, 49, 499, 162], [2, 69, 437, 207]])
    assert second.path == tmp_path / "val" / second.relpath


def test_list_class_names_and_fallback(tmp_path: Path) -> None:
    f = tmp_path / "list.txt"
    f.write_text("a.JPEG 1 0 0 5 5\nb.JPEG 0 1 1 4 4 2 2 3 3")
    ds = load_ilsvrc_val_list(f, tmp_path)
    assert ds.classes == ["0", "1"]
    assert [len(s.boxes) for s in ds.split("val")] == [1, 2]
    ds = load_ilsvrc_val_list(f, tmp_path, class_names=["cat", "dog"])
    assert ds.classes == ["cat", "dog"]


BAD_LINES = [
    ("a.JPEG 0 1 2 3 4 5\n", "found 7 fields"),
    ("a.JPEG\n", "found 1 fields"),
    ("a.JPEG x 1 2 3 4\n", "label 'x' is not an integer"),
    ("a.JPEG 0 1 2 three 4\n", "box coordinate 'three' is not a number"),
    ("a.JPEG 0 1 2 3 4 5 5 5 9\n", "box 2 .* zero or negative size"),
    ("a.JPEG 0 1 nan 3 4\n", "must be finite"),
    ("a.JPEG 5 1 2 3 4\n", "label 5 out of range 0..1"),
    ("../a.JPEG 0 1 2 3 4\n", "without '..'"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_malformed_list_line(tmp_path: Path, bad: str, message: str) -> None:
    f = tmp_path / "list.txt"
    f.write_text("ok.JPEG 0 1 2 3 4\n\n" + bad + "ok2.JPEG 1 1 2 3 4\n")
    with pytest.raises(DataError, match=message) as e:
        load_ilsvrc_val_list(f, tmp_path, class_names=["a", "b"])
    assert str(e.value).startswith(f"{f}:3: ")


def test_empty_or_missing_list(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="no images listed"):
        load_ilsvrc_val_list(tmp_path / "empty.txt", tmp_path)
    with pytest.raises(DataError, match="nope.txt: file not found"):
        load_ilsvrc_val_list(tmp_path / "nope.txt", tmp_path)


# --- XML ------------------------------------------------------------------------------


def xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int]]], size=(500, 375)) -> str:
    objs = "".join(
        f"<object><name>{w}</name><pose>Unspecified</pose><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for w, b in objects
    )
    return (
        f"<annotation><folder>val</folder><filename>{filename}</filename><size><width>{size[0]}"
        f"</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>\n"
    )


@pytest.fixture
def xml_dir(tmp_path: Path) -> Path:
    d = tmp_path / "xml"
    d.mkdir()
    (d / "ILSVRC2012_val_00000001.xml").write_text(
        xml("ILSVRC2012_val_00000001", [("n02", (10, 20, 30, 40)), ("n02", (1, 2, 3, 4))])
    )
    (d / "ILSVRC2012_val_00000002.xml").write_text(xml("ILSVRC2012_val_00000002", [("n01", (5, 5, 50, 60))]))
    return d


def test_xml_annotations(xml_dir: Path, tmp_path: Path) -> None:
    ds = load_ilsvrc_val_xml(xml_dir, tmp_path / "val")
    a, b = ds.split("val")
    assert ds.classes == ["n01", "n02"]
    assert (a.label, b.label) == (1, 0)
    np.testing.assert_array_equal(a.boxes, [[10, 20, 30, 40], [1, 2, 3, 4]])
    assert a.size == (500, 375) and a.image_id == "ILSVRC2012_val_00000001"
    assert a.path == tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG"
    # given wnids fix the label order; images in wnid folders are found
    (tmp_path / "val" / "n02").mkdir(parents=True)
    (tmp_path / "val" / "n02" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    ds = load_ilsvrc_val_xml(xml_dir, tmp_path / "val", wnids=["n00", "n01", "n02"])
    assert [s.label for s in ds.split("val")] == [2, 1]
    assert ds.split("val")[0].relpath == "n02/ILSVRC2012_val_00000001.JPEG"
    with pytest.raises(DataError, match="'n02' is not among the 1 known classes"):
        load_ilsvrc_val_xml(xml_dir, tmp_path, wnids=["n01"])


def test_malformed_xml(xml_dir: Path, tmp_path: Path) -> None:
    bad = xml_dir / "ILSVRC2012_val_00000003.xml"
    bad.write_text("<annotation>\n<filename>x</filename>\n<object><name>n01</name>\n</annotation>\n")
    with pytest.raises(DataError, match="malformed XML") as e:
        load_ilsvrc_val_xml(xml_dir, tmp_path)
    assert str(e.value).startswith(f"{bad}:4: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation><filename>x</filename></annotation>", "no <object> annotated"),
        ("<annotation><object><name>n01</name></object></annotation>", "missing <filename>"),
        ("<annotation><filename>x</filename><object><name>n01</name></object></annotation>", "has no <bndbox>"),
        (xml("x", [("n01", (5, 5, 5, 9))]), "zero or negative size"),
        (xml("x", [("n01", (5, 5, 9, 9))]).replace("<xmin>5", "<xmin>five"), "<xmin> 'five' is not a number"),
        ("<root/>", "expected an <annotation> root element"),
    ],
)
def test_bad_xml_content(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "a.xml").write_text(text)
    with pytest.raises(DataError, match=message) as e:
        load_ilsvrc_val_xml(tmp_path, tmp_path)
    assert str(tmp_path / "a.xml") in str(e.value)


def test_xml_dir_without_xml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no \\*.xml annotation files"):
        load_ilsvrc_val_xml(tmp_path, tmp_path)


# --- image trees and listings ---------------------------------------------------------


def make_tree(root: Path) -> Path:
    for cls, names in {"n02": ["b.JPEG", "a.png", "notes.txt"], "n01": ["z.jpg", "y.JPEG"], "n10": ["c.jpeg"]}.items():
        (root / cls).mkdir(parents=True)
        for n in names:
            if n.endswith(".txt"):
                (root / cls / n).write_text("x")
            else:
                Image.new("RGB", (8, 6)).save(root / cls / n, format="PNG")
    (root / "n02" / "sub").mkdir()
    Image.new("RGB", (8, 6)).save(root / "n02" / "sub" / "d.png")
    return root


def test_image_tree_matches_imagefolder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "train")
    ds = load_image_tree(root)
    ref = ImageFolder(str(root))
    assert ds.classes == ref.classes == ["n01", "n02", "n10"]
    assert [(str(s.path), s.label) for s in ds.split("train")] == ref.samples
    assert all(len(s.boxes) == 0 for s in ds.split("train"))
    assert load_dataset(root).name == "tree"


def test_image_tree_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_image_tree(tmp_path / "x")
    with pytest.raises(DataError, match="no class folders"):
        load_image_tree(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="hold no image files"):
        load_image_tree(tmp_path)


def test_load_dataset_ilsvrc_layouts(tmp_path: Path, xml_dir: Path) -> None:
    root = tmp_path / "ilsvrc"
    make_tree(root / "train")
    (root / "val").mkdir()
    (root / "val_list.txt").write_text("n01/a.JPEG 2 1 1 5 5\n")
    ds = load_dataset(root)
    assert ds.name == "ilsvrc" and ds.classes == ["n01", "n02", "n10"]
    assert ds.split("val")[0].path == root / "val" / "n01" / "a.JPEG"
    assert load_dataset(root / "val_list.txt", kind="ilsvrc").split("val")[0].label == 2
    ds = load_dataset(xml_dir)
    assert ds.classes == ["n01", "n02"] and len(ds.split("val")) == 2
    with pytest.raises(DataError, match="not an ILSVRC val list"):
        load_dataset(root / "train", kind="ilsvrc")


def test_list_images_directory_counts_skipped(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "imgs")
    (root / ".hidden.png").write_bytes(b"")
    found = list_images(root)
    rel = [p.relative_to(root).as_posix() for p in found.paths]
    assert rel == ["n01/y.JPEG", "n01/z.jpg", "n02/a.png", "n02/b.JPEG", "n02/sub/d.png", "n10/c.jpeg"]
    assert found.skipped == 2  # notes.txt and the hidden file
    assert all(p.is_absolute() for p in found.paths)


def test_list_images_file_and_glob(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "imgs")
    one = list_images(root / "n02" / "a.png")
    assert one.paths == [(root / "n02" / "a.png").absolute()] and one.skipped == 0
    g = list_images(str(root / "n02" / "*"))
    assert [p.name for p in g.paths] == ["a.png", "b.JPEG"] and g.skipped == 1
    assert len(list_images(str(root / "**" / "*.png")).paths) == 2


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        list_images(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="not an image file"):
        list_images(tmp_path / "a.txt")
    with pytest.raises(DataError, match=r"no image files in this directory \(1 other files"):
        list_images(tmp_path)
    with pytest.raises(DataError, match="matches no image files"):
        list_images(str(tmp_path / "*.jpg"))
