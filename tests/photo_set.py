"""The real-photo set of ``tests/data/photos``: scikit-image's photos with hand-drawn boxes."""

from __future__ import annotations

import shutil
from pathlib import Path

ANNOTATIONS = Path(__file__).parent / "data" / "photos"
CUB_FILES = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")


def build_photo_set(out: str | Path) -> Path:
    """Write the CUB-layout photo set into ``out`` (files copied from scikit-image's wheel)."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    out = Path(out)
    for name in CUB_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ANNOTATIONS / name, out / name)
    for line in (ANNOTATIONS / "images.txt").read_text().splitlines():
        rel = line.split()[1]
        dst = out / "images" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / Path(rel).name, dst)
    return out
