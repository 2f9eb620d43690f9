"""Stage 2: train the GEG generator with MSE against the stage-1 GrabCut masks.

Images and masks get the same resize (``resize x resize``), random crop and flip; the frozen
backbone's last-block patch tokens (``B x N x D`` -> ``B x D x gh x gw``) feed the generator,
whose map (``B x 1 x h x w``) is compared with the mask resized to ``h x w``, min-max
normalised and binarized at ``mask_threshold`` (the reference's 0.05). Validation: GT-known
Loc over a threshold sweep on a split with boxes.

``cache_views > 0`` precomputes the backbone's features for that many augmented views of
every image (with the matching targets) once, then trains on random picks among them: the
backbone, most of the step's cost, runs ``cache_views`` times per image instead of once per
epoch. Each process caches its own share of the images.

Output: ``OUT/model`` (a model directory: backbone + generator, no classifier). The classifier
trainer's ``--generator-dir`` merges it with a trained classifier into the full model.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.transforms import resize_for
from ..errors import ConfigError, DataError
from .config import GeneratorTrainConfig, TrainConfig
from .distributed import DistInfo, all_reduce_sum, init_distributed, weighted_mean
from .trainer import EpochHook, Trainer, find_resume

# --------------------------------------------------------------------------- shared stage set-up


@dataclass
class StageSetup:
    """What both stage trainers need before the loop: data, backbone, sizes, splits."""

    dist: DistInfo
    dataset: Any  # locloc.data.records.DataSet
    train: list
    val: list
    backbone: Any  # FrozenViT on dist.device
    crop: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    store: Any  # MaskStore / HDF5Store
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (skip_bad)
    backbone_source: dict[str, str] = field(default_factory=dict)  # weights file and its SHA-256


def _require(cfg: TrainConfig, *keys: str) -> None:
    for k in keys:
        if getattr(cfg, k) in (None, ""):
            raise ConfigError(f"--{k.replace('_', '-')} is required (or set {k!r} in the --config file)")


def check_masks(store: Any, samples: Sequence[Any], root: str | Path) -> None:
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

        train, bad_train = check_images(train, workers=max(1, _workers(cfg)))
        val, bad_val = check_images(val, workers=max(1, _workers(cfg)))
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


def nan_padded_to_list(boxes: torch.Tensor) -> list[np.ndarray]:
    """``B x Kmax x 4`` NaN-padded boxes -> list of ``(K, 4)`` float64 arrays."""
    return [b[~np.isnan(b).any(axis=1)] for b in boxes.cpu().numpy()]


def eval_loader(setup: StageSetup, samples: Sequence[Any], batch_size: int, workers: int) -> DataLoader:
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


def _workers(cfg: TrainConfig) -> int:
    return 2 if cfg.workers is None else cfg.workers


# --------------------------------------------------------------------------- targets and data


def prepare_targets(masks: torch.Tensor, size: Sequence[int], threshold: float) -> torch.Tensor:
    """Masks ``B x 1 x H x W`` in [0, 1] -> binary targets ``B x 1 x h x w`` (float).

    Bilinear resize to ``size``, per-image min-max normalisation, then ``> threshold``. A
    constant mask (min = max) is kept where it is nonzero.
    """
    m = masks.float()
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
    flat = m.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1, 1)
    span = hi - lo
    norm = torch.where(span > 0, (m - lo) / span.clamp_min(1e-12), (m > 0).float())
    return (norm > threshold).float()


class MaskedTrainSet(Dataset):
    """Training items: ``{"image": 3 x crop x crop, "mask": 1 x crop x crop in [0, 1],
    "label": int}`` with one joint random resize/crop/flip for image and mask."""

    def __init__(self, samples: Sequence[Any], store: Any, transform: Any) -> None:
        self.samples = list(samples)
        self.store = store
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from ..fileio import open_image

        s = self.samples[i]
        image, mask = self.transform(open_image(s.path), self.store.read(s.relpath))
        return {"image": image, "mask": mask, "label": int(s.label)}


class FeatureCache(Dataset):
    """Precomputed ``views`` augmented views per image: ``feats`` ``V x n x D x gh x gw``
    (float16) and binary ``targets`` ``V x n x 1 x h x w`` (uint8). An item is one random view:
    ``{"feat": D x gh x gw float32, "target": 1 x h x w float32}``."""

    def __init__(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        self.feats, self.targets = feats, targets

    def __len__(self) -> int:
        return int(self.feats.shape[1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = int(torch.randint(self.feats.shape[0], (1,)))
        return {"feat": self.feats[v, i].float(), "target": self.targets[v, i].float()}


def map_size(generator: nn.Module, grid: Sequence[int]) -> tuple[int, int]:
    """The generator's output size for a ``gh x gw`` feature grid."""
    f = getattr(generator, "upsample_factor", None)
    if f is not None:
        return int(grid[0] * f), int(grid[1] * f)
    raise ConfigError(f"generator {type(generator).__name__} does not declare its upsample_factor")


@torch.no_grad()
def build_feature_cache(
    backbone: nn.Module,
    train_set: Dataset,
    indices: Sequence[int],
    views: int,
    out_size: Sequence[int],
    threshold: float,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    progress: bool = True,
) -> FeatureCache:
    """Run the frozen backbone over ``views`` augmented passes of ``train_set[indices]``."""
    from tqdm import tqdm

    from ..models.backbone import patch_map

    sub = torch.utils.data.Subset(train_set, list(indices))
    n = len(sub)
    feats = targets = None
    bar = tqdm(total=views * math.ceil(n / batch_size), desc="caching backbone features", disable=not progress,
               leave=False)
    for v in range(views):
        loader = DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=workers)
        k = 0
        for batch in loader:
            x = batch["image"].to(device)
            f = patch_map(backbone(x).patch_tokens, backbone.grid_size).to("cpu", torch.float16)
            t = prepare_targets(batch["mask"], out_size, threshold).to(torch.uint8)
            if feats is None:
                feats = torch.empty((views, n, *f.shape[1:]), dtype=torch.float16)
                targets = torch.empty((views, n, *t.shape[1:]), dtype=torch.uint8)
            feats[v, k : k + len(f)] = f
            targets[v, k : k + len(f)] = t
            k += len(f)
            bar.update(1)
    bar.close()
    return FeatureCache(feats, targets)


# --------------------------------------------------------------------------- validation


def make_loc_validator(
    setup: StageSetup,
    samples: Sequence[Any],
    thresholds: Sequence[float],
    batch_size: int,
    workers: int,
) -> Callable[[nn.Module], dict[str, float]]:
    """``validate(generator) -> {"gt_known_loc", "best_threshold", "val_images"}`` (percent);
    each process evaluates its share, results are averaged weighted by image counts."""
    from ..metrics import LocalizationAccumulator
    from ..models.backbone import patch_map

    with_boxes = [s for s in samples if len(s.boxes)]
    loader = eval_loader(setup, with_boxes, batch_size, workers)
    bb, dev = setup.backbone, setup.dist.device

    def validate(generator: nn.Module) -> dict[str, float]:
        acc = LocalizationAccumulator(thresholds, size=(setup.crop, setup.crop))
        for batch in loader:
            out = bb(batch["image"].to(dev))
            maps = generator(patch_map(out.patch_tokens, bb.grid_size))
            acc.update(maps[:, 0].float().cpu(), nan_padded_to_list(batch["boxes"]))
        n = len(acc)
        rows = acc.compute()["per_threshold"] if n else []
        per = {f"{t:.4f}": (rows[k]["gt_known_loc"] if n else 0.0) for k, t in enumerate(acc.thresholds)}
        acc.close()
        mean = weighted_mean(per, float(n), dev)
        best = max(mean, key=lambda k: mean[k])
        total = int(all_reduce_sum([float(n)], dev)[0])
        return {"gt_known_loc": mean[best], "best_threshold": float(best), "val_images": total}

    return validate


# --------------------------------------------------------------------------- the trainer


def train_generator(
    cfg: GeneratorTrainConfig,
    resume: str | None = None,
    *,
    dist: DistInfo | None = None,
    on_epoch_end: EpochHook | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run stage 2 as configured; returns the trainer's summary plus ``model_dir``.

    ``resume``: ``None`` (fresh run), ``"auto"`` (``OUT/last.pt`` if present) or a path.
    """
    from ..data.transforms import JointTrainTransform
    from ..models.backbone import patch_map
    from ..models.generator import build_generator
    from ..models.model_dir import save_model_dir
    from ..models.pipeline import LocLocModel

    setup = prepare_stage(cfg, dist, log)
    d, bb = setup.dist, setup.backbone
    out = Path(cfg.out)
    ckpt = find_resume(out, resume)
    torch.manual_seed(cfg.seed)
    generator = build_generator(cfg.generator, bb.embed_dim, **cfg.generator_kwargs)
    msize = map_size(generator, bb.grid_size)
    tf = JointTrainTransform(resize=setup.resize, crop=setup.crop, flip_p=cfg.hflip, mean=setup.mean, std=setup.std)
    train_set: Dataset = MaskedTrainSet(setup.train, setup.store, tf)
    sharded = False
    if cfg.cache_views > 0:
        per = len(train_set) // d.world_size
        idx = list(range(d.rank, per * d.world_size, d.world_size))
        torch.manual_seed(cfg.seed + d.rank)
        train_set = build_feature_cache(bb, train_set, idx, cfg.cache_views, msize, cfg.mask_threshold,
                                        cfg.batch_size, d.device, _workers(cfg), progress and d.is_main)
        sharded = True
    threshold = cfg.mask_threshold

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "feat" in batch:
            feat, target = batch["feat"], batch["target"]
        else:
            feat = patch_map(bb(batch["image"]).patch_tokens, bb.grid_size)
            target = None
        pred = model(feat)
        if target is None:
            target = prepare_targets(batch["mask"], pred.shape[-2:], threshold)
        return F.mse_loss(pred.float(), target)

    validate = None
    if setup.val:
        validate = make_loc_validator(setup, setup.val, cfg.val_thresholds, cfg.batch_size, _workers(cfg))
    trainer = Trainer(generator, train_set, step, cfg, out, validate_fn=validate, metric="gt_known_loc",
                      dist=d, sharded=sharded, on_epoch_end=on_epoch_end, log=log, progress=progress)
    summary = trainer.fit(resume=ckpt)
    model_dir = out / "model"
    if d.is_main:
        final = build_generator(cfg.generator, bb.embed_dim, **cfg.generator_kwargs)
        final.load_state_dict(trainer.model.module.state_dict() if d.distributed else trainer.model.state_dict())
        last = summary["last"]
        thr = None
        if "best_threshold" in last:
            thr = {"default": float(last["best_threshold"]), "sweep": [float(t) for t in cfg.val_thresholds],
                   "chosen_on": cfg.val_split}
        save_model_dir(model_dir, LocLocModel(bb.cpu(), None, final.cpu().eval()), model_dir_config(setup, thr))
    summary["model_dir"] = str(model_dir)
    summary["skipped_images"] = list(setup.skipped)
    return summary
