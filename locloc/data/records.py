"""Records shared by every data source: one :class:`Sample` per image, one :class:`DataSet`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float64)


@dataclass(frozen=True)
class Sample:
    """One image and its annotations.

    ``boxes`` is ``(K, 4)`` float64 ``x0, y0, x1, y1`` in original-image pixels (``(0, 4)``
    when the image has none); for CUB ``x1 = x + w`` and ``y1 = y + h`` of the file's floats.
    ``label`` is 0-based (-1 when unknown); ``size`` is ``(w, h)`` when known.
    """

    image_id: str
    path: Path
    relpath: str
    label: int = -1
    boxes: np.ndarray = field(default_factory=_no_boxes)
    mask_path: Path | None = None
    size: tuple[int, int] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (
            self.image_id == other.image_id
            and self.path == other.path
            and self.relpath == other.relpath
            and self.label == other.label
            and self.mask_path == other.mask_path
            and self.size == other.size
            and np.array_equal(self.boxes, other.boxes)
        )

    def __hash__(self) -> int:
        return hash((self.image_id, self.path, self.label))


@dataclass
class DataSet:
    """A data set: class names and named splits of :class:`Sample` records."""

    name: str
    root: Path
    images_root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``name``; :class:`DataError` lists the splits there are."""
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise DataError(f"{self.root}: data set has no split {name!r} (available: {have})")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def heldout_split(
    samples: list[Sample], per_class: int = 2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Carve ``per_class`` images per class out of a training split: ``(train, heldout)``.

    The held-out images are for choosing the box threshold (as wsolevaluation's ``train-fullsup``
    split does). The choice is deterministic for a seed; each class keeps at least half its
    images for training (so a tiny data set still trains). Both lists keep the input order.
    """
    if per_class < 0:
        raise ValueError("per_class must be >= 0")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_class[s.label].append(i)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for label in sorted(by_class):
        idx = by_class[label]
        k = min(per_class, len(idx) // 2)
        if k <= 0:
            continue
        held.update(int(i) for i in rng.choice(idx, size=k, replace=False))
    train = [s for i, s in enumerate(samples) if i not in held]
    heldout = [s for i, s in enumerate(samples) if i in held]
    return train, heldout


def read_lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """Read a whitespace-separated text file as ``[(1-based line, tokens), ...]``.

    Blank lines are skipped; ``\\r\\n`` endings, a UTF-8 BOM and a missing final newline are
    tolerated. ``what`` describes the layout expected, for the "not found" message.
    """
    if not path.exists():
        raise DataError(f"{path}: file not found ({what})")
    if path.is_dir():
        raise DataError(f"{path}: expected a file, found a directory ({what})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror})") from None
    text = text.removeprefix("\ufeff")
    rows = []
    for i, line in enumerate(text.split("\n"), start=1):
        tokens = line.split()
        if tokens:
            rows.append((i, tokens))
    return rows


def parse_int(token: str, path: Path, line: int, what: str) -> int:
    """``int(token)`` or a :class:`DataError` naming ``path:line`` and the field."""
    try:
        return int(token)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} {token!r} is not an integer") from None


def parse_float(token: str, path: Path, line: int, what: str) -> float:
    """A finite ``float(token)`` or a :class:`DataError` naming ``path:line`` and the field."""
    try:
        v = float(token)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} {token!r} is not a number") from None
    if not np.isfinite(v):
        raise DataError(f"{path}:{line}: {what} is {token!r}; boxes must be finite numbers")
    return v


def safe_relpath(rel: str, path: Path, line: int) -> str:
    """Refuse absolute image paths and ``..`` components (they would leave the images root)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise DataError(
            f"{path}:{line}: image path {rel!r} must be relative to the images folder, "
            "without '..'"
        )
    return rel
