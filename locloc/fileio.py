"""Atomic file writes and safe image reading shared by every stage."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile

from .errors import DataError, LocLocError

# Largest image we agree to decode (pixels). A header declaring more is refused before any
# pixel is read; this stops decompression bombs. 120 MP covers every real photo data set.
MAX_IMAGE_PIXELS = 120_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    Readers never see a half-written file: on any exception the temporary file is removed
    and ``path`` keeps its previous content (if any).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(path: str | Path, writer: Any) -> None:
    """Call ``writer(tmp_path)`` to produce a file, then rename it to ``path``.

    For libraries that want a file name rather than a file object (torch.save,
    safetensors, cv2.imwrite, h5py). The temporary name keeps the final suffix so that
    writers choosing a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only on success.

    ``path`` must not exist or be an empty folder, unless ``replace`` (then a non-empty
    ``path`` is swapped out and removed after the rename). The folder gets the usual
    permissions (not ``mkdtemp``'s 0700). On any exception the temporary folder is removed
    and ``path`` is left as it was.
    """
    import shutil
    import uuid

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path} already exists and is not a folder; remove it or choose another path")
    if not replace and path.exists() and any(path.iterdir()):
        raise DataError(f"{path} already exists and is not an empty folder; remove it or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    tmp.mkdir()
    try:
        yield tmp
        if path.exists() and any(path.iterdir()):
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def dir_lock(
    directory: str | Path, exclusive: bool = True, busy: str | None = None, error: type[Exception] | None = None
) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``directory/.lock`` for the duration of the block.

    Runs that write into one directory take it exclusively (or shared, for cooperating
    shards). If an incompatible holder exists, ``error`` (default
    :class:`~locloc.errors.LocLocError`) is raised at once with ``busy`` as the message,
    instead of two runs overwriting each other's files. The OS drops the lock when its holder
    exits or is killed, so no stale lock is ever left. POSIX only (a no-op elsewhere).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise (error or LocLocError)(busy or f"{directory}: another run is writing into this directory") from None
        yield
    finally:
        os.close(fd)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def open_image(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB.

    Grayscale, 16-bit, palette (with or without transparency), RGBA and CMYK images are
    converted to RGB. A missing, empty, truncated, undecodable or implausibly large file
    raises :class:`DataError` naming the file.
    """
    return _open(path, None)[0]


def open_image_reduced(path: str | Path, min_short_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """Read an image as 8-bit RGB for a consumer that shrinks it to ``min_short_side`` anyway.

    A JPEG whose short side is at least twice ``min_short_side`` is decoded at 1/2, 1/4 or
    1/8 scale in the DCT domain (Pillow's draft mode: the largest reduction that keeps the
    short side >= ``min_short_side``), which is several times faster for large photos (see
    ``benchmarks/bench_decode.py``); other files are read in full, as by :func:`open_image`.
    Returns ``(image, (width, height))`` with the *original* size from the file's header,
    which box and heat-map mapping must use. Errors as :func:`open_image`.
    """
    if min_short_side < 1:
        raise ValueError(f"min_short_side must be >= 1, got {min_short_side}")
    return _open(path, int(min_short_side))


def _open(path: str | Path, min_short_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if path.is_dir():
        raise DataError(f"{path}: expected an image file, found a directory")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow's own bomb guard at our limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{path}: image header declares {w}x{h} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} allowed (possible decompression bomb)"
                    )
                if min_short_side is not None and im.format == "JPEG" and min(w, h) >= 2 * min_short_side:
                    # Pillow picks scale = min(w // s, h // s) rounded down to 8/4/2/1, so
                    # both sides stay >= s after the DCT-domain reduction.
                    im.draft(im.mode, (min_short_side, min_short_side))
                im.load()
                return _to_rgb(im), (w, h)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused, image too large ({e})") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a)
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        # Composite on white rather than dropping alpha, so transparent areas are not black noise.
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def is_image_file(path: str | Path) -> bool:
    """True when the file name has an image extension we read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
