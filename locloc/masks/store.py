"""Where stage-1 masks live: a PNG per image, an HDF5 pack, and the reference's ``.h5`` files.

Keys are image relative paths (``Sample.relpath``); the file suffix is ignored, so
``"001.Bird/a.jpg"`` and ``"001.Bird/a.png"`` name the same mask. Every store returns masks
as ``H x W`` uint8 in {0, 1}.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import DataError
from ..fileio import atomic_save, dir_lock

# The reference binarises its min-max normalised masks at this value before use.
REFERENCE_BINARIZE_AT = 0.05


def _key(relpath: str | os.PathLike) -> str:
    p = PurePosixPath(str(relpath).replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DataError(f"{relpath}: mask key must be a relative path inside the data set")
    return str(p.with_suffix(""))


def _check_mask(mask: np.ndarray, relpath: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"{relpath}: mask must be a non-empty H x W array, got shape {m.shape}")
    return (m > 0).astype(np.uint8)


class MaskStore:
    """A folder of 8-bit PNG masks (0/255) mirroring the image tree.

    The mask of image ``images/<relpath>`` is ``root/<relpath with suffix .png>``. Writes go
    through a hidden temporary file and an atomic rename, so a visible PNG is always
    complete (a killed run leaves at most a hidden ``.*.tmp.png``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, relpath: str) -> Path:
        """File of the mask for image ``relpath``."""
        return self.root / (_key(relpath) + ".png")

    def has(self, relpath: str) -> bool:
        return self.path(relpath).is_file()

    def __contains__(self, relpath: object) -> bool:
        return isinstance(relpath, str) and self.has(relpath)

    def read(self, relpath: str) -> np.ndarray:
        """``H x W`` uint8 mask in {0, 1}; DataError if missing or unreadable."""
        p = self.path(relpath)
        if not p.is_file():
            raise DataError(f"{p}: no mask for image {relpath!r}; run `locloc masks` first")
        m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise DataError(f"{p}: cannot decode mask PNG (corrupt file?); delete it and rerun")
        return (m > 127).astype(np.uint8)

    def write(self, relpath: str, mask: np.ndarray) -> Path:
        """Store ``mask`` (``H x W``, nonzero = object) as a 0/255 PNG, atomically."""
        m = _check_mask(mask, relpath) * np.uint8(255)
        p = self.path(relpath)

        def _write(tmp: str) -> None:
            if not cv2.imwrite(tmp, m):
                raise OSError(f"{p}: cv2.imwrite failed")

        atomic_save(p, _write)
        return p

    def __iter__(self) -> Iterator[str]:
        """Keys (relative paths ending in ``.png``) of the stored masks, sorted; hidden files
        and folders (temporary files, a class-seeded run's ``.round1``) are not masks of the store."""
        if not self.root.is_dir():
            return iter(())
        keys = [
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*.png")
            if not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        ]
        return iter(sorted(keys))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @contextlib.contextmanager
    def writer_lock(self, exclusive: bool) -> Iterator[None]:
        """Hold an advisory lock on the store while a run writes into it.

        A single-process run takes it exclusively (it may then remove every temporary
        file); the shards of a sharded run share it. An incompatible holder raises
        :class:`DataError` at once instead of two runs pulling files from under each other.
        The OS drops the lock when the holder exits or is killed. POSIX only (no-op elsewhere).
        """
        msg = (f"{self.root}: another run is writing masks into this directory; wait for it to "
               "finish, or split the work with --shard i/n (shards may run together)")
        with dir_lock(self.root, exclusive, busy=msg, error=DataError):
            yield

    def clean_temp(self, older_than_s: float = 0.0) -> int:
        """Remove temporary files left by killed writers; returns how many were removed.

        With several processes writing into one store, pass ``older_than_s`` so that a
        live writer's temporary file is not pulled away from under it.
        """
        if not self.root.is_dir():
            return 0
        now, n = time.time(), 0
        for p in self.root.rglob(".*.tmp.png"):
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n


def _image_hw(sample: Any) -> tuple[int, int]:
    try:
        with Image.open(sample.path) as im:
            w, h = im.size
    except (OSError, ValueError) as e:
        raise DataError(f"{sample.path}: cannot read image size ({e})") from None
    return h, w


def pack_hdf5(store: MaskStore, samples: Sequence[Any], out_h5: str | Path, chunk: int = 1 << 20) -> Path:
    """Pack the masks of ``samples`` (in order) from ``store`` into one HDF5 file, atomically.

    Layout (ragged, one row per sample):

    - ``masks``: 1-D uint8, all masks flattened (C order) and concatenated, values {0, 1};
      chunked (``chunk`` bytes) and gzip-compressed;
    - ``offsets``: ``(N + 1,)`` int64 start of each mask in ``masks``;
    - ``shapes``: ``(N, 2)`` int32 ``H, W``;
    - ``relpaths``: ``(N,)`` UTF-8 strings, the samples' relative paths.

    Masks are streamed one at a time; memory stays flat. A missing mask raises DataError.
    """
    import h5py

    samples = list(samples)
    missing = [s.relpath for s in samples if not store.has(s.relpath)]
    if missing:
        raise DataError(
            f"{store.root}: {len(missing)} of {len(samples)} masks missing (first: {missing[0]}); "
            "run `locloc masks` to finish the store before packing"
        )
    shapes = np.zeros((len(samples), 2), np.int32)
    for i, s in enumerate(samples):
        with Image.open(store.path(s.relpath)) as im:
            shapes[i] = (im.size[1], im.size[0])
    offsets = np.zeros(len(samples) + 1, np.int64)
    np.cumsum(shapes[:, 0].astype(np.int64) * shapes[:, 1], out=offsets[1:])
    total = int(offsets[-1])

    def _write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "locloc-masks-ragged-v1"
            data = f.create_dataset(
                "masks",
                shape=(total,),
                dtype=np.uint8,
                chunks=(max(1, min(chunk, total)),),
                compression="gzip",
                compression_opts=4,
                shuffle=False,
            )
            for i, s in enumerate(samples):
                m = store.read(s.relpath)
                if m.shape != tuple(shapes[i]):
                    raise DataError(f"{store.path(s.relpath)}: mask changed while packing")
                data[offsets[i] : offsets[i + 1]] = m.reshape(-1)
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("shapes", data=shapes)
            f.create_dataset("relpaths", data=[s.relpath for s in samples], dtype=h5py.string_dtype())

    atomic_save(out_h5, _write)
    return Path(out_h5)


class HDF5Store:
    """Read-only store over a file written by :func:`pack_hdf5` (same ``has``/``read``)."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.h5_path = Path(path)
        try:
            self._f = h5py.File(self.h5_path, "r")
        except (OSError, ValueError) as e:
            raise DataError(f"{self.h5_path}: cannot open HDF5 mask file ({e})") from None
        if not all(k in self._f for k in ("masks", "offsets", "shapes", "relpaths")):
            self._f.close()
            raise DataError(
                f"{self.h5_path}: not a LocLoc mask pack (needs masks/offsets/shapes/relpaths); "
                "for the reference release's .h5 files use `locloc masks --import-h5`"
            )
        self._offsets = self._f["offsets"][()]
        self._shapes = self._f["shapes"][()]
        self._relpaths = [r.decode() if isinstance(r, bytes) else str(r) for r in self._f["relpaths"][()]]
        self._index = {_key(r): i for i, r in enumerate(self._relpaths)}

    def has(self, relpath: str) -> bool:
        return _key(relpath) in self._index

    def __contains__(self, relpath: object) -> bool:
        return isinstance(relpath, str) and self.has(relpath)

    def read(self, relpath: str) -> np.ndarray:
        i = self._index.get(_key(relpath))
        if i is None:
            raise DataError(f"{self.h5_path}: no mask for image {relpath!r}")
        h, w = (int(v) for v in self._shapes[i])
        flat = self._f["masks"][self._offsets[i] : self._offsets[i + 1]]
        return flat.reshape(h, w).astype(np.uint8)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._relpaths))

    def __len__(self) -> int:
        return len(self._relpaths)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> HDF5Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reference_binarize(mask: np.ndarray) -> np.ndarray:
    """The reference's use of a stored mask: min-max normalise, keep ``> 0.05``.

    A constant mask (where min-max is undefined) is kept where it is nonzero.
    Returns uint8 in {0, 1}, same shape.
    """
    m = np.nan_to_num(np.asarray(mask, dtype=np.float64))
    lo, hi = float(m.min()), float(m.max())
    if hi > lo:
        return ((m - lo) / (hi - lo) > REFERENCE_BINARIZE_AT).astype(np.uint8)
    return (m > 0).astype(np.uint8)


def import_reference_h5(
    h5_path: str | Path,
    samples: Sequence[Any],
    store: MaskStore,
    resize_to_image: bool = True,
    key: str = "dataset",
) -> int:
    """Import a reference release mask file into a PNG :class:`MaskStore`.

    The file holds ``key`` = ``N x H x W`` (or ``N x 1 x H x W``) masks in split order, at a
    fixed size, values 0..1 or 0..255. Mask ``i`` belongs to ``samples[i]``; it is
    binarised like the reference does (:func:`reference_binarize`) and, with
    ``resize_to_image``, resized (nearest) to the image's original size. Returns the number
    of masks written. DataError when the key is missing or ``N != len(samples)``.
    """
    import h5py

    h5_path = Path(h5_path)
    try:
        f = h5py.File(h5_path, "r")
    except (OSError, ValueError) as e:
        raise DataError(f"{h5_path}: cannot open HDF5 file ({e})") from None
    with f:
        if key not in f:
            found = ", ".join(sorted(f.keys())) or "nothing"
            raise DataError(f"{h5_path}: no {key!r} array (found: {found})")
        d = f[key]
        if d.ndim == 4 and d.shape[1] == 1:
            squeeze = True
        elif d.ndim == 3:
            squeeze = False
        else:
            raise DataError(f"{h5_path}: {key!r} must be N x H x W masks, got shape {d.shape}")
        if d.shape[0] != len(samples):
            raise DataError(
                f"{h5_path}: holds {d.shape[0]} masks but the split has {len(samples)} images; "
                "use the file that matches this split (train/test) and data set"
            )
        for i, s in enumerate(samples):
            m = d[i, 0] if squeeze else d[i]
            m = reference_binarize(m)
            if resize_to_image:
                h, w = _image_hw(s)
                if m.shape != (h, w):
                    m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            store.write(s.relpath, m)
    return len(samples)


def open_store(path: str | Path) -> MaskStore | HDF5Store:
    """A PNG store for a folder, an :class:`HDF5Store` for an ``.h5``/``.hdf5`` file."""
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5") and not p.is_dir():
        if not p.is_file():
            raise DataError(f"{p}: mask file not found")
        return HDF5Store(p)
    return MaskStore(p)


def missing(store: MaskStore | HDF5Store, relpaths: Iterable[str]) -> list[str]:
    """The relpaths that have no mask in ``store``."""
    return [r for r in relpaths if not store.has(r)]
