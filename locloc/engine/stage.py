"""Set-up shared by the two training stages (2 and 3): data set and splits, mask store,
frozen backbone, input sizes; the validation loader; the model-dir config they write."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.records import DataSet, Sample
from ..data.transforms import resize_for
from ..errors import ConfigError, DataError
from ..models.backbone import FrozenViT
from .config import TrainConfig
from .distributed import DistInfo, init_distributed


class MaskSource(Protocol):
    """A stage-1 mask store (:class:`~locloc.masks.store.MaskStore` or ``HDF5Store``)."""

    root: Path

    def has(self, relpath: str) -> bool: ...

    def read(self, relpath: str) -> np.ndarray: ...


@dataclass
class StageSetup:
    """What both stage trainers need before the loop: data, backbone, sizes, splits."""

    dist: DistInfo
    dataset: DataSet
    train: list[Sample]
    val: list[Sample]
    backbone: FrozenViT  # on dist.device
    crop: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    store: MaskSource
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (skip_bad)
    backbone_source: dict[str, str] = field(default_factory=dict)  # weights file and its SHA-256


def _require(cfg: TrainConfig, *keys: str) -> None:
    for k in keys:
        if getattr(cfg, k) in (None, ""):
            raise ConfigError(f"--{k.replace('_', '-')} is required (or set {k!r} in the --config file)")


def check_masks(store: MaskSource, samples: Sequence[Sample], root: str | Path) -> None:
    """:class:`DataError` if some training images have no mask (count and first path)."""
    from ..masks.store import missing

    gone = missing(store, [s.relpath for s in samples])
    if gone:
        first = store.path(gone[0]) if hasattr(store, "path") else gone[0]
        raise DataError(
            f"{root}: {len(gone)} of {len(samples)} training images have no mask (first: {first}); "
            "run `locloc masks` for this data set or point --masks at its mask store"
        )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def prepare_stage(cfg: TrainConfig, dist: DistInfo | None = None, log: Callable[[str], None] | None = None) -> StageSetup:
    """Load the data set, the mask store and the frozen backbone; resolve sizes and splits."""
    from ..data import load_dataset
    from ..data.records import heldout_split
    from ..masks.store import open_store
    from ..models.backbone import build_backbone

    _require(cfg, "data_path", "masks", "out")
    dist = dist or init_distributed(cfg.device)
    ds = load_dataset(cfg.data_path)
    train = list(ds.split("train"))
    val: list = []
    if cfg.val_split == "heldout":
        train, val = heldout_split(train, cfg.heldout_per_class, cfg.seed)
    elif cfg.val_split == "test":
        val = list(ds.split("test"))
        if dist.is_main:
            (log or _stderr)("val_split: test (the reference protocol): the best checkpoint and box threshold are chosen "
                "on the test images, so test results are optimistic; val_split: heldout chooses them on "
                "held-out training images")
    skipped: list[str] = []
    if cfg.skip_bad:
        from ..data.datasets import check_images, skipped_message

        train, bad_train = check_images(train, workers=max(1, loader_workers(cfg)))
        val, bad_val = check_images(val, workers=max(1, loader_workers(cfg)))
        skipped = bad_train + bad_val
        if not train:
            raise DataError(f"{cfg.data_path}: no readable training images ({skipped_message(skipped)})")
    masks = Path(cfg.masks)
    if not masks.exists():
        raise DataError(f"{masks}: mask store not found; run `locloc masks --out {masks}` first")
    store = open_store(masks)
    check_masks(store, train, masks)
    torch.manual_seed(cfg.seed)  # same random init of anything the backbone leaves random
    backbone = build_backbone(cfg.backbone, cfg.weights, **cfg.backbone_kwargs).to(dist.device)
    img = backbone.img_size[0]
    crop = cfg.crop_size or img
    if crop != img and not cfg.backbone_kwargs.get("dynamic_img_size"):
        raise ConfigError(
            f"crop size {crop} differs from the backbone's input size {img}; drop --crop-size or "
            f'build the backbone for it (--backbone-kwargs \'{{"img_size": {crop}}}\')'
        )
    resize = cfg.resize_size or resize_for(crop)
    if resize < crop:
        raise ConfigError(f"resize size {resize} is smaller than the crop size {crop}")
    dc = backbone.data_config
    return StageSetup(
        dist=dist, dataset=ds, train=train, val=val, backbone=backbone, crop=crop, resize=resize,
        mean=tuple(float(v) for v in dc["mean"]), std=tuple(float(v) for v in dc["std"]), store=store,
        skipped=skipped, backbone_source=backbone_source(cfg.weights),
    )


def backbone_source(weights: str | Path | None) -> dict[str, str]:
    """What a model directory records of its backbone weights: the file (or hub name) and,
    for a local file, its SHA-256."""
    from ..models.embedded import file_sha256
    from ..models.hub import resolve_weights

    if weights is None:
        return {}
    src = {"backbone_weights": str(weights)}
    path = resolve_weights(weights)  # a hub name: the cached file the backbone was built from
    if path.is_file():
        src["backbone_sha256"] = file_sha256(path)
    return src


def eval_loader(setup: StageSetup, samples: Sequence[Sample], batch_size: int, workers: int) -> DataLoader:
    """This process's share (``samples[rank::world]``) under the reference eval transform."""
    from ..data.datasets import WSOLDataset, collate_wsol
    from ..data.transforms import EvalTransform

    d = setup.dist
    shard = list(samples)[d.rank :: d.world_size]
    tf = EvalTransform(resize=setup.resize, crop=setup.crop, mean=setup.mean, std=setup.std)
    return DataLoader(WSOLDataset(shard, tf), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_wsol)


def model_dir_config(setup: StageSetup, thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "class_names": list(setup.dataset.classes),
        "normalization": {"mean": list(setup.mean), "std": list(setup.std)},
        "input": {"resize": setup.resize, "crop": setup.crop},
    }
    if thresholds:
        cfg["thresholds"] = thresholds
    if setup.backbone_source:
        cfg["source"] = dict(setup.backbone_source)
    return cfg


def loader_workers(cfg: TrainConfig) -> int:
    """Data-loader workers per process (``None`` in the config: 2)."""
    return 2 if cfg.workers is None else cfg.workers
