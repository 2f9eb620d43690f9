"""The "Evaluating WSOL Right" protocol's own metadata (clovaai/wsolevaluation) as a data set.

Layout, one folder per split (``train``, ``val`` = *train-fullsup*, ``test``)::

    metadata/<CUB|ILSVRC|OpenImages>/<split>/
        image_ids.txt      one image id per line (a path relative to the images root)
        class_labels.txt   <image id>,<class index>          (0-based)
        image_sizes.txt    <image id>,<width>,<height>       (optional)
        localization.txt   <image id>,<x0>,<y0>,<x1>,<y1>    one line per box (CUB, ILSVRC)
                           <image id>,<mask path>,<ignore path>   (OpenImages: masks)

Images live at ``<images root>/<image id>``; in wsolevaluation's own checkout that is
``dataset/<NAME>`` beside ``metadata/<NAME>``, which is the default here. Boxes are
``x0, y0, x1, y1`` in original-image pixels, as every :class:`Sample` holds them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import DataSet, Sample, parse_float, parse_int, safe_relpath

SPLIT_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")
_LAYOUT = (
    "expected wsolevaluation metadata: <split>/image_ids.txt, class_labels.txt, "
    "localization.txt (and optionally image_sizes.txt) under the metadata folder"
)


def is_wsol_metadata(path: Path) -> bool:
    """True when ``path`` holds split folders with an ``image_ids.txt`` (or is one)."""
    if (path / "image_ids.txt").is_file():
        return True
    return path.is_dir() and any((d / "image_ids.txt").is_file() for d in path.iterdir() if d.is_dir())


def _rows(path: Path, fields: tuple[int, ...], what: str) -> list[tuple[int, list[str]]]:
    """Comma-separated rows ``[(1-based line, fields), ...]`` with a field count in ``fields``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found ({what}; {_LAYOUT})")
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = [t.strip() for t in line.split(",")]
        if len(parts) not in fields:
            want = " or ".join(str(f) for f in fields)
            raise DataError(f"{path}:{i}: expected {want} comma-separated fields ({what}), found {len(parts)}")
        out.append((i, parts))
    return out


def _load_split(d: Path, images_root: Path) -> tuple[list[tuple[str, int, np.ndarray, Path | None, tuple[int, int] | None]], str]:
    ids_path = d / "image_ids.txt"
    ids = []
    seen: set[str] = set()
    for line, parts in _rows(ids_path, (1,), "image id"):
        iid = safe_relpath(parts[0], ids_path, line)
        if iid in seen:
            raise DataError(f"{ids_path}:{line}: image id {iid!r} is listed twice")
        seen.add(iid)
        ids.append(iid)
    if not ids:
        raise DataError(f"{ids_path}: no image ids")

    def unknown(path: Path, line: int, iid: str) -> DataError:
        return DataError(f"{path}:{line}: image id {iid!r} is not in {ids_path.name}")

    lab_path = d / "class_labels.txt"
    labels: dict[str, int] = {}
    for line, (iid, tok) in _rows(lab_path, (2,), "image id,class index"):
        if iid not in seen:
            raise unknown(lab_path, line, iid)
        k = parse_int(tok, lab_path, line, "class index")
        if k < 0:
            raise DataError(f"{lab_path}:{line}: class index {k} is negative")
        labels[iid] = k
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError(f"{lab_path}: no class label for {len(missing)} image(s), e.g. {missing[0]!r}")

    sizes: dict[str, tuple[int, int]] = {}
    size_path = d / "image_sizes.txt"
    if size_path.exists():
        for line, (iid, w, h) in _rows(size_path, (3,), "image id,width,height"):
            if iid not in seen:
                raise unknown(size_path, line, iid)
            wh = (parse_int(w, size_path, line, "width"), parse_int(h, size_path, line, "height"))
            if min(wh) < 1:
                raise DataError(f"{size_path}:{line}: image size {wh} must be positive")
            sizes[iid] = wh

    boxes: dict[str, list[list[float]]] = defaultdict(list)
    masks: dict[str, Path] = {}
    loc_path = d / "localization.txt"
    kind = "none"
    if loc_path.exists():
        for line, parts in _rows(loc_path, (3, 5), "image id,x0,y0,x1,y1 or image id,mask,ignore"):
            iid = parts[0]
            if iid not in seen:
                raise unknown(loc_path, line, iid)
            if len(parts) == 3:
                kind = "masks"
                masks.setdefault(iid, images_root.parent / "mask" / safe_relpath(parts[1], loc_path, line))
                continue
            kind = "boxes"
            x0, y0, x1, y1 = (parse_float(t, loc_path, line, "box coordinate") for t in parts[1:])
            if x1 <= x0 or y1 <= y0:
                raise DataError(f"{loc_path}:{line}: box {x0:g},{y0:g},{x1:g},{y1:g} is empty (need x1 > x0 and y1 > y0)")
            if iid in sizes:
                w, h = sizes[iid]
                if x0 < -1 or y0 < -1 or x0 > w or y0 > h:
                    raise DataError(f"{loc_path}:{line}: box starts at ({x0:g}, {y0:g}), outside the {w}x{h} image")
            boxes[iid].append([x0, y0, x1, y1])
    rows = [
        (iid, labels[iid], np.asarray(boxes.get(iid, []), np.float64).reshape(-1, 4), masks.get(iid), sizes.get(iid))
        for iid in ids
    ]
    return rows, kind


def _class_names(rows_by_split: dict[str, list], n: int) -> list[str]:
    """Names from the ids' first folder (``001.Black_footed_Albatross/x.jpg``) when each class
    has exactly one such folder, else ``class_<k>``."""
    folders: dict[int, set[str]] = defaultdict(set)
    for rows in rows_by_split.values():
        for iid, label, *_ in rows:
            parts = Path(iid).parts
            # ILSVRC ids are train/<wnid>/x.JPEG, val/x.JPEG: skip a split prefix
            folder = parts[1] if len(parts) > 2 and parts[0] in ("train", "val", "test") else (parts[0] if len(parts) > 1 else "")
            folders[label].add(folder)
    names = []
    for k in range(n):
        f = folders.get(k, set())
        names.append(next(iter(f)) if len(f) == 1 and "" not in f else f"class_{k}")
    if len(set(names)) != len(names):
        return [f"class_{k}" for k in range(n)]
    return names


def load_wsol_metadata(metadata: str | Path, images_root: str | Path | None = None) -> DataSet:
    """Load wsolevaluation metadata (``metadata/<NAME>`` with split folders) as a :class:`DataSet`.

    ``images_root`` defaults to ``<checkout>/dataset/<NAME>`` for ``<checkout>/metadata/<NAME>``.
    Every file is validated; a problem raises :class:`DataError` naming file and line.
    """
    meta = Path(metadata).expanduser().absolute()
    if not meta.is_dir():
        raise DataError(f"{meta}: metadata folder not found ({_LAYOUT})")
    split_dirs = [meta] if (meta / "image_ids.txt").is_file() else sorted(
        d for d in meta.iterdir() if d.is_dir() and (d / "image_ids.txt").is_file()
    )
    if not split_dirs:
        raise DataError(f"{meta}: no split folder with image_ids.txt ({_LAYOUT})")
    name = (meta.parent.name if meta in split_dirs else meta.name) or "wsol"
    if images_root is None:
        base = meta.parent if meta in split_dirs else meta
        guess = base.parent.parent / "dataset" / base.name
        if not guess.is_dir():
            raise DataError(
                f"{meta}: where are the images? {guess} does not exist (wsolevaluation keeps them in "
                "dataset/<NAME> beside metadata/<NAME>); pass --images-root DIR"
            )
        images_root = guess
    root = Path(images_root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root}: images folder not found (the image ids are paths relative to it)")
    rows_by_split = {}
    for d in split_dirs:
        rows, _kind = _load_split(d, root)
        rows_by_split[d.name] = rows
    n = 1 + max(label for rows in rows_by_split.values() for _, label, *_ in rows)
    classes = _class_names(rows_by_split, n)
    splits = {
        s: [Sample(image_id=iid, path=root / iid, relpath=iid, label=label, boxes=b, mask_path=m, size=size)
            for iid, label, b, m, size in rows]
        for s, rows in rows_by_split.items()
    }
    return DataSet(name=name, root=meta, images_root=root, classes=classes, splits=splits)


def write_wsol_metadata(splits: dict[str, list[Sample]], out_dir: str | Path, integer_boxes: bool = True) -> Path:
    """Write ``splits`` (name -> samples) as wsolevaluation metadata under ``out_dir``.

    Image ids are the samples' ``relpath``; boxes are written as ``int()`` of each coordinate
    when ``integer_boxes`` (wsolevaluation's CUB files: ``x0, y0, x + w, y + h`` of CUB's
    floats, truncated), else with up to 2 decimals. Each file is written atomically.
    """
    from ..fileio import atomic_write

    out = Path(out_dir)
    for name, samples in splits.items():
        d = out / name
        ids, labels, sizes, locs = [], [], [], []
        for s in samples:
            ids.append(f"{s.relpath}\n")
            labels.append(f"{s.relpath},{s.label}\n")
            if s.size is not None:
                sizes.append(f"{s.relpath},{s.size[0]},{s.size[1]}\n")
            for b in s.boxes:
                vals = [str(int(v)) for v in b] if integer_boxes else [f"{v:.2f}".rstrip("0").rstrip(".") for v in b]
                locs.append(f"{s.relpath},{','.join(vals)}\n")
        files = {"image_ids.txt": ids, "class_labels.txt": labels, "localization.txt": locs}
        if sizes:
            files["image_sizes.txt"] = sizes
        for fname, lines in files.items():
            with atomic_write(d / fname, "w") as f:
                f.write("".join(lines))
    return out
