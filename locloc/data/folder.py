"""Images named on the command line: one file, a directory (recursive) or a glob pattern."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import NamedTuple

from ..errors import DataError
from ..fileio import IMAGE_EXTENSIONS, is_image_file

_GLOB_CHARS = set("*?[")


class ImageListing(NamedTuple):
    """Image files found (sorted) and how many other files were passed over."""

    paths: list[Path]
    skipped: int


def _is_hidden(p: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(base).parts)


def list_images(spec: str | Path) -> ImageListing:
    """Resolve ``spec`` to image files.

    - an existing file: that file (it must have an image extension);
    - a directory: every image below it, recursively, sorted by relative path; other files
      and hidden files/folders are skipped and counted;
    - otherwise a glob pattern (``**`` recurses), non-images among the matches counted.

    Raises :class:`DataError` when nothing usable matches.
    """
    text = str(spec)
    p = Path(text).expanduser()
    exts = ", ".join(IMAGE_EXTENSIONS)
    if p.is_file():
        if not is_image_file(p):
            raise DataError(f"{p}: not an image file (expected one of {exts})")
        return ImageListing([p.absolute()], 0)
    if p.is_dir():
        base = p.absolute()
        files = sorted(
            (f for f in base.rglob("*") if f.is_file()),
            key=lambda f: f.relative_to(base).as_posix(),
        )
        paths = [f for f in files if is_image_file(f) and not _is_hidden(f, base)]
        if not paths:
            raise DataError(
                f"{p}: no image files in this directory ({len(files)} other files; expected {exts})"
            )
        return ImageListing(paths, len(files) - len(paths))
    if not _GLOB_CHARS & set(text):
        raise DataError(f"{p}: no such file or directory")
    matches = sorted(Path(m).absolute() for m in glob.glob(str(p), recursive=True))
    files = [m for m in matches if m.is_file()]
    paths = [m for m in files if is_image_file(m)]
    if not paths:
        raise DataError(f"{text}: the pattern matches no image files ({len(files)} other files)")
    return ImageListing(paths, len(files) - len(paths))
