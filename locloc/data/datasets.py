"""Torch data sets over :class:`~locloc.data.records.Sample` lists, and their collate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..fileio import open_image
from .records import Sample
from .transforms import EvalTransform


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
        img = open_image(s.path)
        image, boxes = self.transform(img, s.boxes)
        return {
            "image": image,
            "label": int(s.label),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float64)),
            "index": int(index),
            "orig_size": img.size,
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
