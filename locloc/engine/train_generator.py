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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import nan_padded_to_list
from ..data.records import Sample
from ..data.transforms import JointTrainTransform
from ..errors import ConfigError
from .config import GeneratorTrainConfig
from .distributed import DistInfo, all_reduce_sum, weighted_mean
from .stage import MaskSource, StageSetup, eval_loader, loader_workers, model_dir_config, prepare_stage
from .trainer import EpochHook, Trainer, find_resume

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

    def __init__(self, samples: Sequence[Sample], store: MaskSource, transform: JointTrainTransform) -> None:
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
    samples: Sequence[Sample],
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
                                        cfg.batch_size, d.device, loader_workers(cfg), progress and d.is_main)
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
        validate = make_loc_validator(setup, setup.val, cfg.val_thresholds, cfg.batch_size, loader_workers(cfg))
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
