"""CUB-200-2011 and any folder in its layout.

Layout (all ids 1-based, space-separated columns)::

    root/images.txt              id relpath            (relative to root/images/)
    root/image_class_labels.txt  id label              (1-based, into classes.txt)
    root/train_test_split.txt    id 1|0                (1 = train, 0 = test)
    root/bounding_boxes.txt      id x y w h            (floats, original pixels)
    root/classes.txt             id name
    root/images/<relpath>
    root/segmentations/<relpath with .png>   optional GT masks
    root/sizes.txt               id w h                optional (a LocLoc extension)

Boxes become ``x0, y0, x1, y1 = x, y, x + w, y + h`` (float64, the file's values unrounded).
The reference evaluation truncates x, y, w, h to integers;
:class:`~locloc.data.transforms.EvalTransform` does that when it maps boxes, so the records
keep the exact values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .records import DataSet, Sample, parse_float, parse_int, read_lines, safe_relpath

CUB_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)
_LAYOUT = "a CUB-200-2011 layout needs " + ", ".join(CUB_FILES) + " and images/"
# A box's origin may lie this far (pixels) outside the image before it is an error. Its far
# edge is not checked: 8 boxes of the official CUB file end past the image border (by up to
# 32 px); the transforms clip them, as the reference does.
BOX_TOLERANCE = 1.0


def _table(
    path: Path, ncols: int, columns: str
) -> dict[int, tuple[int, list[str]]]:
    """``{id: (line, other tokens)}`` for a file whose lines are ``id`` + ``ncols - 1`` fields."""
    out: dict[int, tuple[int, list[str]]] = {}
    for line, tokens in read_lines(path, _LAYOUT):
        if len(tokens) != ncols:
            raise DataError(
                f"{path}:{line}: expected {ncols} columns ({columns}), found {len(tokens)}"
            )
        i = parse_int(tokens[0], path, line, "id")
        if i in out:
            raise DataError(f"{path}:{line}: duplicate id {i} (first on line {out[i][0]})")
        out[i] = (line, tokens[1:])
    return out


def _same_ids(ref: dict, ref_path: Path, other: dict, other_path: Path) -> None:
    for i, (line, _) in other.items():
        if i not in ref:
            raise DataError(f"{other_path}:{line}: id {i} is not in {ref_path.name}")
    for i, (line, _) in ref.items():
        if i not in other:
            raise DataError(
                f"{other_path}: no line for id {i} (listed in {ref_path.name} line {line})"
            )


def _read_classes(path: Path) -> list[str]:
    table = _table(path, 2, "id name")
    ids = sorted(table)
    if ids != list(range(1, len(ids) + 1)):
        missing = sorted(set(range(1, max(ids, default=0) + 1)) - set(ids))
        first = missing[0] if missing else ids[0]
        raise DataError(
            f"{path}: class ids must be 1..N without gaps; id {first} is missing or out of order"
        )
    if not ids:
        raise DataError(f"{path}: no classes listed")
    return [table[i][1][0] for i in ids]


def _image_size(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def load_cub(root: str | Path, *, check_images: bool = False) -> DataSet:
    """Load a CUB-layout data set with splits ``"train"`` and ``"test"``.

    Every annotation file is validated; any problem raises :class:`DataError` naming the
    file and line. Image sizes come from the optional ``sizes.txt`` or, with
    ``check_images=True``, from the image headers (which also checks every image exists);
    boxes must then start inside their image (within ``BOX_TOLERANCE`` px); a far edge
    past the border is accepted, as the official files have a few.
    """
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DataError(f"{root}: data set directory not found ({_LAYOUT})")
    if not root.is_dir():
        raise DataError(f"{root}: expected a data set directory, found a file ({_LAYOUT})")
    for name in CUB_FILES:
        p = root / name
        if not p.exists():
            raise DataError(f"{p}: file not found; {_LAYOUT}")
    p_img, p_lab, p_split, p_box, p_cls = (root / n for n in CUB_FILES)

    classes = _read_classes(p_cls)
    images = _table(p_img, 2, "id relpath")
    labels = _table(p_lab, 2, "id label")
    split = _table(p_split, 2, "id is_training_image")
    boxes = _table(p_box, 5, "id x y w h")
    for path, table in ((p_lab, labels), (p_split, split), (p_box, boxes)):
        _same_ids(images, p_img, table, path)
    sizes: dict[int, tuple[int, list[str]]] = {}
    p_sizes = root / "sizes.txt"
    if p_sizes.exists():
        sizes = _table(p_sizes, 3, "id w h")
        _same_ids(images, p_img, sizes, p_sizes)

    images_root = root / "images"
    seg_root = root / "segmentations"
    has_seg = seg_root.is_dir()
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for i in sorted(images):
        line, (rel,) = images[i]
        safe_relpath(rel, p_img, line)
        lline, (ltok,) = labels[i]
        label = parse_int(ltok, p_lab, lline, "label")
        if not 1 <= label <= len(classes):
            raise DataError(
                f"{p_lab}:{lline}: label {label} out of range 1..{len(classes)} of {p_cls.name}"
            )
        sline, (stok,) = split[i]
        if stok not in ("0", "1"):
            raise DataError(
                f"{p_split}:{sline}: split flag must be 1 (train) or 0 (test), found {stok!r}"
            )
        bline, btok = boxes[i]
        x, y, w, h = (parse_float(t, p_box, bline, f"box {n}") for t, n in zip(btok, "xywh"))
        if w <= 0 or h <= 0:
            raise DataError(
                f"{p_box}:{bline}: box width and height must be > 0, found w={w:g} h={h:g}"
            )
        size = None
        if i in sizes:
            zline, ztok = sizes[i]
            size = (
                parse_int(ztok[0], p_sizes, zline, "width"),
                parse_int(ztok[1], p_sizes, zline, "height"),
            )
            if size[0] <= 0 or size[1] <= 0:
                raise DataError(f"{p_sizes}:{zline}: image size must be positive, found {size}")
        path = images_root / rel
        if check_images:
            real = _image_size(path)
            if size is not None and real != size:
                raise DataError(
                    f"{p_sizes}:{sizes[i][0]}: size {size[0]}x{size[1]} but {path} is "
                    f"{real[0]}x{real[1]}"
                )
            size = real
        if size is not None:
            t = BOX_TOLERANCE
            if x < -t or y < -t or x >= size[0] or y >= size[1]:
                raise DataError(
                    f"{p_box}:{bline}: box x={x:g} y={y:g} w={w:g} h={h:g} lies outside the "
                    f"{size[0]}x{size[1]} image {rel}"
                )
        mask = None
        if has_seg:
            m = (seg_root / rel).with_suffix(".png")
            mask = m if m.is_file() else None
        sample = Sample(
            image_id=str(i),
            path=path,
            relpath=rel,
            label=label - 1,
            boxes=np.array([[x, y, x + w, y + h]], dtype=np.float64),
            mask_path=mask,
            size=size,
        )
        splits["train" if stok == "1" else "test"].append(sample)
    return DataSet(name="cub", root=root, images_root=images_root, classes=classes, splits=splits)
