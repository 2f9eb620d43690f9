"""Predictions as box files a detector can train on: JSON lines, CSV, COCO, YOLO.

Boxes are ``x0, y0, x1, y1`` in original-image pixels (the :class:`~locloc.api.Prediction`
convention); COCO writes ``[x, y, w, h]`` with ``w = x1 - x0``; YOLO writes ``cx cy w h``
normalized by the image size. When the images' true classes are known (pseudo-labels from
image-level labels, the PSOL route to a detector), the box carries the *known* class and the
predicted one is kept beside it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from .api import Prediction

FORMATS = ("jsonl", "csv", "coco", "yolo")

__all__ = [
    "FORMATS",
    "image_ids_for",
    "labels_from_tree",
    "to_coco",
    "to_csv",
    "to_jsonl",
    "yolo_lines",
]


def image_ids_for(paths: Sequence[str | Path]) -> list[str]:
    """A unique id per image: its path relative to the images' deepest common folder.

    ``a/x/1.jpg, a/y/1.jpg`` -> ``x/1.jpg, y/1.jpg`` (the ``<class>/<image>`` tree stays in
    the id, so two files with the same name never collide). Posix separators.
    """
    if not paths:
        return []
    resolved = [Path(p).resolve() for p in paths]
    if len(resolved) == 1:
        return [resolved[0].name]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [p.relative_to(root).as_posix() for p in resolved]


_PREFIX = re.compile(r"^\d+[._\-\s]+")


def _bare(name: str) -> str:
    """``'001.Black_footed_Albatross'`` -> ``'black_footed_albatross'``."""
    return _PREFIX.sub("", name).strip().lower()


def labels_from_tree(paths: Sequence[str | Path], class_names: Sequence[str]) -> list[int]:
    """Each image's known class from its folder name (``<class>/<image>``; CUB's ``images/``
    tree is one), matched to the model's ``class_names`` exactly, else ignoring case and a
    leading number (``001.``). Raises :class:`ConfigError` naming the first folder that
    matches no class."""
    if not class_names:
        raise ConfigError("the model has no class names: known labels cannot be matched to its classes")
    exact = {n: i for i, n in enumerate(class_names)}
    bare: dict[str, int] = {}
    for i, n in enumerate(class_names):
        bare.setdefault(_bare(n), i)
    out = []
    for p in paths:
        folder = Path(p).parent.name
        if folder in exact:
            out.append(exact[folder])
        elif _bare(folder) in bare:
            out.append(bare[_bare(folder)])
        else:
            shown = ", ".join(list(class_names)[:3]) + (", ..." if len(class_names) > 3 else "")
            raise ConfigError(
                f"--labels-from-tree: the folder {folder!r} of {p} is not one of the model's "
                f"{len(class_names)} classes ({shown}); put each image in a folder named after its class"
            )
    return out


def _check(preds: Sequence[Prediction], labels: Sequence[int] | None, ids: Sequence[str] | None) -> None:
    if labels is not None and len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels for {len(preds)} predictions")
    if ids is not None and len(ids) != len(preds):
        raise ValueError(f"{len(ids)} image ids for {len(preds)} predictions")


def _ids(preds: Sequence[Prediction], ids: Sequence[str] | None) -> list[str]:
    if ids is not None:
        return list(ids)
    if all(p.path for p in preds):
        return image_ids_for([p.path for p in preds])  # type: ignore[misc]
    return [p.path or f"image_{i}" for i, p in enumerate(preds)]


def to_jsonl(preds: Sequence[Prediction], labels: Sequence[int] | None = None, class_names: Sequence[str] = ()) -> str:
    """One JSON object per line (the heatmap left out); ``label`` / ``label_name`` when known."""
    _check(preds, labels, None)
    lines = []
    for i, p in enumerate(preds):
        d = p.to_json()
        if labels is not None:
            d["label"] = int(labels[i])
            d["label_name"] = class_names[labels[i]] if labels[i] < len(class_names) else None
        lines.append(json.dumps(d))
    return "".join(line + "\n" for line in lines)


CSV_COLUMNS = (
    "image_id", "path", "width", "height", "x0", "y0", "x1", "y1",
    "class_id", "class_name", "score", "label", "label_name", "threshold",
)


def to_csv(
    preds: Sequence[Prediction],
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] = (),
    image_ids: Sequence[str] | None = None,
) -> str:
    """A header and one row per image (columns :data:`CSV_COLUMNS`; empty cells for unknowns)."""
    _check(preds, labels, image_ids)
    ids = _ids(preds, image_ids)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, p in enumerate(preds):
        lab = int(labels[i]) if labels is not None else None
        w.writerow([
            ids[i], p.path or "", p.image_size[0], p.image_size[1], *p.box,
            "" if p.class_id is None else p.class_id, p.class_name or "",
            "" if p.score is None else f"{p.score:.6f}",
            "" if lab is None else lab, "" if lab is None or lab >= len(class_names) else class_names[lab],
            p.threshold,
        ])
    return buf.getvalue()


def to_coco(
    preds: Sequence[Prediction],
    class_names: Sequence[str],
    image_ids: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
) -> dict:
    """A COCO annotation dict: ``images`` (id from 1, ``file_name`` = image id, width,
    height), ``categories`` (id = class index + 1, the model's class names) and one
    ``annotations`` entry per image: ``bbox [x, y, w, h]``, ``area``, ``iscrowd 0``,
    ``score`` (the top-1 probability, 1.0 for a boxes-only model) and ``category_id`` = the
    known class when ``labels`` is given, else the predicted one. Loads with
    ``pycocotools.coco.COCO``; its ``annotations`` list also loads with ``COCO.loadRes``.
    """
    _check(preds, labels, image_ids)
    ids = _ids(preds, image_ids)
    n_cls = len(class_names)
    if labels is None and any(p.class_id is None for p in preds):
        if n_cls > 1:
            raise ConfigError(
                "COCO boxes need a class: this model predicts boxes only; give the images' "
                "known classes (--labels-from-tree) or use a model with a classifier"
            )
    categories = [{"id": i + 1, "name": str(n), "supercategory": "object"} for i, n in enumerate(class_names)]
    if not categories:
        categories = [{"id": 1, "name": "object", "supercategory": "object"}]
    images, anns = [], []
    for i, p in enumerate(preds):
        w, h = p.image_size
        images.append({"id": i + 1, "file_name": ids[i], "width": int(w), "height": int(h)})
        x0, y0, x1, y1 = (float(v) for v in p.box)
        bw, bh = max(0.0, x1 - x0), max(0.0, y1 - y0)
        if labels is not None:
            cat = int(labels[i]) + 1
        elif p.class_id is not None:
            cat = int(p.class_id) + 1
        else:
            cat = 1
        ann = {
            "id": i + 1,
            "image_id": i + 1,
            "category_id": cat,
            "bbox": [round(x0, 2), round(y0, 2), round(bw, 2), round(bh, 2)],
            "area": round(bw * bh, 2),
            "iscrowd": 0,
            "score": 1.0 if p.score is None else round(float(p.score), 6),
        }
        if labels is not None and p.class_id is not None:
            ann["predicted_category_id"] = int(p.class_id) + 1
        anns.append(ann)
    return {
        "info": {"description": "LocLoc pseudo-labels: one box per image", "box_threshold": preds[0].threshold if preds else None},
        "images": images,
        "annotations": anns,
        "categories": categories,
    }


def yolo_lines(pred: Prediction, label: int | None = None) -> str:
    """One YOLO label line ``class cx cy w h`` (normalized to [0, 1]); class = the known
    ``label`` when given, else the predicted class, else 0."""
    w, h = pred.image_size
    x0, y0, x1, y1 = (float(v) for v in pred.box)
    cls = label if label is not None else (pred.class_id if pred.class_id is not None else 0)
    cx, cy = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h
    bw, bh = (x1 - x0) / w, (y1 - y0) / h
    return f"{int(cls)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n"


def check_out_dir(path: str | Path, what: str) -> Path:
    """``path``'s parent must exist and be writable (one readable error otherwise)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"{what}: the folder {parent} does not exist; create it first or choose another path")
    if not os.access(parent, os.W_OK):
        raise DataError(f"{what}: the folder {parent} is not writable; choose another path")
    return p
