"""ILSVRC-2012: the validation set (list file or official XML annotations) and train trees.

List file (the reference's format), one line per image, 0-based label, one or more boxes::

    n01751748/ILSVRC2012_val_00000001.JPEG 65 111 108 441 193 [x1 y1 x2 y2 ...]

Every box on a line is kept; an image's GT-known IoU is later the best over its boxes (the
reference only uses the first one).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import find_classes, make_dataset

from ..errors import DataError
from ..fileio import IMAGE_EXTENSIONS
from .records import DataSet, Sample, parse_float, parse_int, read_lines, safe_relpath

_TREE = "expected <class>/<image> folders"
_LIST_FORMAT = "expected lines 'relpath label x1 y1 x2 y2 [x1 y1 x2 y2 ...]'"


def _check_box(box: tuple[float, ...], path: Path, line: int | None, k: int) -> None:
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        at = f"{path}:{line}" if line is not None else str(path)
        raise DataError(
            f"{at}: box {k + 1} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero or negative size "
            "(need x2 > x1 and y2 > y1)"
        )


def _check_all_boxes(samples: list[Sample], lines: list[int], path: Path) -> None:
    """Validate every box at once (fast on 50k lines); report the first bad line."""
    if not samples:
        return
    counts = np.array([len(s.boxes) for s in samples])
    b = np.concatenate([s.boxes for s in samples])
    bad = ~np.isfinite(b).all(axis=1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        j = int(np.argmax(bad))
        i = int(np.searchsorted(np.cumsum(counts), j, side="right"))
        k = j - int(counts[:i].sum())
        if not np.isfinite(b[j]).all():
            raise DataError(f"{path}:{lines[i]}: box {k + 1} coordinates must be finite numbers")
        _check_box(tuple(b[j]), path, lines[i], k)


def load_ilsvrc_val_list(
    list_file: str | Path, images_root: str | Path, class_names: list[str] | None = None
) -> DataSet:
    """Load the validation list file into a :class:`DataSet` with split ``"val"``.

    ``class_names`` (index = label) defaults to the image folder names when each label's
    images share one folder (``n01751748/...``), else to ``"0", "1", ...``.
    """
    path = Path(list_file).expanduser().absolute()
    images_root = Path(images_root).expanduser().absolute()
    samples: list[Sample] = []
    lines: list[int] = []
    folder_of: dict[int, set[str]] = {}
    for line, tokens in read_lines(path, "an ILSVRC validation list: " + _LIST_FORMAT):
        n = len(tokens)
        if n < 2 or (n - 2) % 4:
            raise DataError(
                f"{path}:{line}: {_LIST_FORMAT}; found {n} fields "
                f"({n - 2} numbers after the label is not a multiple of 4)"
            )
        rel = tokens[0]
        if rel.startswith(("/", "\\")) or ".." in rel.replace("\\", "/").split("/"):
            safe_relpath(rel, path, line)
        label = parse_int(tokens[1], path, line, "label")
        if label < 0 or (class_names is not None and label >= len(class_names)):
            top = f"0..{len(class_names) - 1}" if class_names is not None else ">= 0"
            raise DataError(f"{path}:{line}: label {label} out of range {top}")
        try:
            vals = [float(t) for t in tokens[2:]]
        except ValueError:
            vals = [parse_float(t, path, line, "box coordinate") for t in tokens[2:]]
        folder_of.setdefault(label, set()).add(rel.rsplit("/", 1)[0] if "/" in rel else "")
        lines.append(line)
        samples.append(
            Sample(
                image_id=rel,
                path=images_root / rel,
                relpath=rel,
                label=label,
                boxes=np.array(vals, dtype=np.float64).reshape(-1, 4),
            )
        )
    _check_all_boxes(samples, lines, path)
    if not samples:
        raise DataError(f"{path}: no images listed ({_LIST_FORMAT})")
    if class_names is None:
        n_classes = max(folder_of) + 1
        names = [next(iter(folder_of.get(i, {""}))) for i in range(n_classes)]
        unique = all(len(folder_of.get(i, ())) == 1 for i in range(n_classes))
        if unique and all(names) and len(set(names)) == n_classes:
            class_names = names
        else:
            class_names = [str(i) for i in range(n_classes)]
    return DataSet(
        name="ilsvrc",
        root=path.parent,
        images_root=images_root,
        classes=list(class_names),
        splits={"val": samples},
    )


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{path}: missing <{tag}> in <{node.tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    s = _text(node, tag, path)
    try:
        v = float(s)
    except ValueError:
        raise DataError(f"{path}: <{tag}> {s!r} is not a number") from None
    if not np.isfinite(v):
        raise DataError(f"{path}: <{tag}> {s!r} is not a finite number")
    return v


def _parse_xml(path: Path) -> tuple[str, tuple[int, int] | None, list[tuple[str, list[float]]]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}:{e.position[0]}: malformed XML ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror})") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: expected an <annotation> root element, found <{root.tag}>")
    filename = _text(root, "filename", path)
    size = None
    size_node = root.find("size")
    if size_node is not None:
        size = (int(_number(size_node, "width", path)), int(_number(size_node, "height", path)))
    objects = []
    for obj in root.iter("object"):
        wnid = _text(obj, "name", path)
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{path}: <object> {wnid} has no <bndbox>")
        objects.append((wnid, [_number(bb, t, path) for t in ("xmin", "ymin", "xmax", "ymax")]))
    if not objects:
        raise DataError(f"{path}: no <object> annotated")
    return filename, size, objects


def _image_relpath(images_root: Path, filename: str, wnid: str) -> str:
    names = [filename] if Path(filename).suffix else [filename + ".JPEG", filename + ".jpg"]
    for name in names:
        for rel in (name, f"{wnid}/{name}"):
            if (images_root / rel).is_file():
                return rel
    return names[0]


def load_ilsvrc_val_xml(
    xml_dir: str | Path, images_root: str | Path, wnids: list[str] | None = None
) -> DataSet:
    """Load official per-image XML annotations (``xml_dir/*.xml``) as split ``"val"``.

    The label is the index in ``wnids`` of the first object's ``<name>`` (sorted wnids of
    all XMLs when ``wnids`` is None; pass the train tree's classes to match a classifier);
    the boxes are those of every object of that wnid, ``xmin ymin xmax ymax`` as written.
    The image is ``images_root/<filename>[.JPEG]`` or ``images_root/<wnid>/<filename>[.JPEG]``.
    """
    xml_dir = Path(xml_dir).expanduser().absolute()
    images_root = Path(images_root).expanduser().absolute()
    if not xml_dir.is_dir():
        raise DataError(f"{xml_dir}: XML annotation directory not found")
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise DataError(f"{xml_dir}: no *.xml annotation files found")
    parsed = [(f, *_parse_xml(f)) for f in files]
    if wnids is None:
        wnids = sorted({w for *_, objs in parsed for w, _ in objs})
    index = {w: i for i, w in enumerate(wnids)}
    samples = []
    for f, filename, size, objs in parsed:
        wnid = objs[0][0]
        if wnid not in index:
            raise DataError(
                f"{f}: object class {wnid!r} is not among the {len(wnids)} known classes"
            )
        boxes = np.array([b for w, b in objs if w == wnid], dtype=np.float64)
        for k, box in enumerate(boxes):
            _check_box(tuple(box), f, None, k)
        rel = safe_relpath(_image_relpath(images_root, filename, wnid), f, 1)
        samples.append(
            Sample(
                image_id=Path(filename).stem,
                path=images_root / rel,
                relpath=rel,
                label=index[wnid],
                boxes=boxes,
                size=size,
            )
        )
    return DataSet(
        name="ilsvrc",
        root=xml_dir,
        images_root=images_root,
        classes=list(wnids),
        splits={"val": samples},
    )


def load_image_tree(train_root: str | Path, split: str = "train") -> DataSet:
    """A ``<class>/<image>`` tree, classes indexed exactly as torchvision's ``ImageFolder``.

    No boxes. Image files are those with an extension in :data:`locloc.fileio.IMAGE_EXTENSIONS`.
    """
    root = Path(train_root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root}: image tree directory not found ({_TREE})")
    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise DataError(f"{root}: no class folders found ({_TREE})") from None
    items = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    if not items:
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise DataError(f"{root}: class folders hold no image files ({exts})")
    samples = []
    for p, label in items:
        rel = Path(p).relative_to(root).as_posix()
        samples.append(Sample(image_id=rel, path=Path(p), relpath=rel, label=label))
    return DataSet(
        name="tree", root=root, images_root=root, classes=classes, splits={split: samples}
    )
