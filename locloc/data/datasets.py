"""Torch data sets over :class:`~locloc.data.records.Sample` lists, and their collate."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import LocLocError
from ..fileio import open_image, open_image_reduced
from .records import Sample
from .transforms import EvalTransform, _as_boxes


class WSOLDataset(Dataset):
    """Evaluation items: the transformed image, its label and its GT boxes in crop pixels.

    ``ds[i]`` is ``{"image": 3 x H x W float32, "label": int, "boxes": (K, 4) float64
    x0,y0,x1,y1 in crop pixels, "index": i, "orig_size": (w, h)}``.
    """

    def __init__(self, samples: Sequence[Sample], transform: EvalTransform | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform if transform is not None else EvalTransform()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        # Large JPEGs are decoded at a reduced scale (never below the resize); boxes are
        # mapped with the original size from the file's header.
        img, orig_size = open_image_reduced(s.path, self.transform.resize)
        image = self.transform.image(img)
        boxes = self.transform.boxes(_as_boxes([] if s.boxes is None else s.boxes), orig_size)
        return {
            "image": image,
            "label": int(s.label),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float64)),
            "index": int(index),
            "orig_size": orig_size,
        }


def collate_wsol(batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack :class:`WSOLDataset` items.

    Returns ``image`` (B x 3 x H x W), ``label`` (B,) long, ``boxes`` (B x Kmax x 4) float64
    padded with NaN rows, ``index`` (B,) long and ``orig_size`` (B x 2) long ``(w, h)``.
    """
    kmax = max((len(item["boxes"]) for item in batch), default=0)
    boxes = torch.full((len(batch), kmax, 4), float("nan"), dtype=torch.float64)
    for i, item in enumerate(batch):
        k = len(item["boxes"])
        if k:
            boxes[i, :k] = torch.as_tensor(item["boxes"], dtype=torch.float64)
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),
        "boxes": boxes,
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
        "orig_size": torch.tensor([tuple(item["orig_size"]) for item in batch], dtype=torch.long),
    }


def nan_padded_to_list(boxes: torch.Tensor) -> list[np.ndarray]:
    """The ``boxes`` of :func:`collate_wsol` (``B x Kmax x 4``, NaN rows as padding) -> a
    list of ``(K, 4)`` float64 arrays, one per image."""
    return [b[~np.isnan(b).any(axis=1)] for b in boxes.cpu().numpy().astype(np.float64)]


def _read_error(sample: Sample) -> str | None:
    try:
        open_image(sample.path)
    except LocLocError as e:
        return str(e)
    return None


def check_images(samples: Sequence[Sample], workers: int = 4) -> tuple[list[Sample], list[str]]:
    """Decode every image once: ``(readable samples, messages for the unreadable ones)``.

    For ``--skip-bad``: a missing, empty, truncated or undecodable file, or one whose header
    declares more than :data:`~locloc.fileio.MAX_IMAGE_PIXELS` pixels, is left out; each
    message names the file and the reason. Both lists keep the input order.
    """
    samples = list(samples)
    if workers > 1 and len(samples) > 1:
        # PIL decoders release the GIL: threads are enough
        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = list(pool.map(_read_error, samples))
    else:
        errors = [_read_error(s) for s in samples]
    good = [s for s, e in zip(samples, errors) if e is None]
    bad = [e for e in errors if e is not None]
    return good, bad


def skipped_message(bad: Sequence[str]) -> str:
    """``"skipped N unreadable image(s): first <path>: <reason>"`` (empty when none)."""
    if not bad:
        return ""
    return f"skipped {len(bad)} unreadable image(s): first {bad[0]}"


# torch re-raises an exception from a DataLoader worker as the same class, with the worker's
# whole traceback as its message; the original one-line message is the traceback's last line.
_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.", re.S)


def original_message(e: BaseException) -> str:
    """The message of ``e`` without the DataLoader worker's traceback around it."""
    text = str(e)
    if not _WRAPPED.match(text):
        return text
    last = text.rstrip().splitlines()[-1]
    name = type(e).__name__
    for prefix in (f"{type(e).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """Re-raise a :class:`LocLocError` from a DataLoader worker with its one-line message."""
    try:
        yield
    except LocLocError as e:
        msg = original_message(e)
        if msg == str(e):
            raise
        raise type(e)(msg) from None
