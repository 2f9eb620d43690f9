"""Data sets, records and transforms.

:func:`load_dataset` picks the loader from what a path holds:

- ``"cub"``: ``path/images.txt`` exists, or ``path`` is a folder named ``images`` whose parent
  holds ``images.txt`` (the seed README passes ``.../CUB_200_2011/images``);
- ``"ilsvrc"``: ``path`` is a ``.txt`` list file, or a folder holding one of
  :data:`ILSVRC_LIST_NAMES` (images under ``path/val`` when it exists, else ``path``), or a
  folder holding ``*.xml`` annotations directly or in one of :data:`ILSVRC_XML_DIRS` (images
  under ``path/val`` when it exists, else ``path``); classes are the wnids of
  ``path/train`` when that tree exists, so labels match a classifier trained on it;
- ``"wsol"``: wsolevaluation metadata, ``metadata/<NAME>`` with ``<split>/image_ids.txt``
  (images under ``images_root``, default ``dataset/<NAME>`` beside it);
- ``"tree"``: a folder of ``<class>/<image>`` folders (torchvision ``ImageFolder`` order),
  split ``"train"``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..fileio import is_image_file
from .cub import load_cub
from .datasets import WSOLDataset, collate_wsol
from .folder import ImageListing, list_images
from .ilsvrc import load_ilsvrc_val_list, load_ilsvrc_val_xml, load_image_tree
from .records import DataSet, Sample, heldout_split
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    JointTrainTransform,
    crop_to_original,
)
from .wsolmeta import is_wsol_metadata, load_wsol_metadata

ILSVRC_LIST_NAMES = ("val_list.txt", "ilsvrc_val_list.txt", "ILSVRC2012_val_list.txt")
ILSVRC_XML_DIRS = ("val_xml", "annotations", "Annotations", "bbox_val")
KINDS = ("auto", "cub", "ilsvrc", "wsol", "tree")
_ACCEPTED = (
    "accepted layouts: a CUB-200-2011 folder (images.txt, ...), an ILSVRC val list file or "
    "folder (" + ", ".join(ILSVRC_LIST_NAMES) + ", or *.xml annotations), wsolevaluation "
    "metadata (<split>/image_ids.txt, class_labels.txt, localization.txt), or a "
    "<class>/<image> tree"
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataSet",
    "EvalTransform",
    "ImageListing",
    "JointTrainTransform",
    "Sample",
    "WSOLDataset",
    "collate_wsol",
    "crop_to_original",
    "heldout_split",
    "list_images",
    "load_cub",
    "load_dataset",
    "load_ilsvrc_val_list",
    "load_ilsvrc_val_xml",
    "load_image_tree",
    "load_wsol_metadata",
]


def _cub_root(p: Path) -> Path | None:
    if (p / "images.txt").is_file():
        return p
    if p.name == "images" and (p.parent / "images.txt").is_file():
        return p.parent
    return None


def _xml_dir(p: Path) -> Path | None:
    for d in (p, *(p / n for n in ILSVRC_XML_DIRS)):
        if d.is_dir() and next(d.glob("*.xml"), None) is not None:
            return d
    return None


def _is_tree(p: Path) -> bool:
    for d in p.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            if any(f.is_file() and is_image_file(f) for f in d.iterdir()):
                return True
    return False


def _ilsvrc_classes(p: Path) -> list[str] | None:
    train = p / "train"
    if train.is_dir() and any(d.is_dir() for d in train.iterdir()):
        return sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    return None


def _load_ilsvrc(p: Path) -> DataSet | None:
    if p.is_file():
        images = p.parent / "val" if (p.parent / "val").is_dir() else p.parent
        return load_ilsvrc_val_list(p, images, _ilsvrc_classes(p.parent))
    images = p / "val" if (p / "val").is_dir() else p
    for name in ILSVRC_LIST_NAMES:
        if (p / name).is_file():
            return load_ilsvrc_val_list(p / name, images, _ilsvrc_classes(p))
    xml_dir = _xml_dir(p)
    if xml_dir is not None:
        return load_ilsvrc_val_xml(xml_dir, images, _ilsvrc_classes(p))
    return None


def load_dataset(path: str | Path, kind: str = "auto", images_root: str | Path | None = None) -> DataSet:
    """Load the data set at ``path``; ``kind`` is one of :data:`KINDS`.

    See the module docstring for how each layout is recognised. ``images_root`` is where the
    images of a wsolevaluation metadata folder live (other layouts hold their own images).
    """
    if kind not in KINDS:
        raise DataError(f"unknown data set kind {kind!r} (choose from {', '.join(KINDS)})")
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise DataError(f"{p}: data set path not found ({_ACCEPTED})")
    if kind == "wsol" or (kind == "auto" and p.is_dir() and is_wsol_metadata(p)):
        return load_wsol_metadata(p, images_root)
    if images_root is not None:
        raise DataError(f"{p}: --images-root is for wsolevaluation metadata folders; this data set holds its own images")
    if kind in ("auto", "cub"):
        root = _cub_root(p) if p.is_dir() else None
        if root is not None:
            return load_cub(root)
        if kind == "cub":
            return load_cub(p)  # raises naming the missing file
    if kind in ("auto", "ilsvrc"):
        if p.is_dir() or p.suffix == ".txt":
            ds = _load_ilsvrc(p)
            if ds is not None:
                return ds
        if kind == "ilsvrc":
            raise DataError(f"{p}: not an ILSVRC val list file or folder ({_ACCEPTED})")
    if p.is_dir() and _is_tree(p):
        return load_image_tree(p)
    if kind == "tree":
        return load_image_tree(p)
    raise DataError(f"{p}: not a recognised data set ({_ACCEPTED})")
