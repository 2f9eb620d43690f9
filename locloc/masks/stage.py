"""Stage 1 as one call: :func:`generate_masks` (``MaskConfig`` in, a mask store out)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.config import MaskConfig, save_config
from ..errors import ConfigError, DataError
from ..models.backbone import FrozenViT


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def build_mask_backbone(cfg: MaskConfig) -> FrozenViT:
    """The frozen backbone of ``cfg`` (weights required unless ``allow_random_backbone``)."""
    from ..models.backbone import build_backbone
    from ..models.hub import is_hub_name

    if cfg.weights is None:
        if not cfg.allow_random_backbone:
            raise ConfigError(
                "--weights FILE is required: masks from a random backbone are meaningless "
                "(pass --allow-random-backbone to do it anyway, e.g. in tests)"
            )
    elif not is_hub_name(cfg.weights) and not Path(cfg.weights).is_file():
        raise DataError(f"{cfg.weights}: backbone weights file not found")
    backbone = build_backbone(cfg.backbone, cfg.weights, **cfg.backbone_kwargs)
    if cfg.attention_blocks:
        backbone.attention_blocks = tuple(cfg.attention_blocks)
        backbone.attention_block_ids()  # validate against the depth now, not mid-run
    return backbone


def generate_masks(
    cfg: MaskConfig,
    *,
    backbone: FrozenViT | None = None,
    progress: bool = True,
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Stage 1: for every image of ``cfg.split``, CLS attention -> trimap -> GrabCut -> a 0/255
    PNG in the mask store ``cfg.out`` (resumable, shardable). Or, with ``cfg.import_h5``, import
    a reference release mask file. Optionally scores the masks (``report``) and packs them into
    HDF5. Writes the resolved ``mask_config.yaml`` and ``run_stats.json`` into the store and
    returns the run summary. ``backbone`` reuses an already built one.
    """
    from ..data import load_dataset
    from ..data.datasets import skipped_message
    from ..engine.distributed import select_device
    from ..fileio import write_json
    from .grabcut import GrabCutMasker, open_frac_for, trimap_for
    from .quality import format_report, quality_report, write_report
    from .runner import exit_if_reimported_by_worker, mask_samples, parse_shard, resolve_shard
    from .store import MaskStore, import_reference_h5, pack_hdf5

    exit_if_reimported_by_worker()
    if not cfg.data_path or not cfg.out:
        raise ConfigError("masks: data_path and out (the mask store directory) are required")
    if cfg.workers < 0 or cfg.batch_size < 1:
        raise ConfigError("--workers must be >= 0 and --batch-size >= 1")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: --out must be a mask store directory, found a file")
    shard = parse_shard(cfg.shard) if cfg.shard is not None else None
    dataset = load_dataset(cfg.data_path)
    splits = list(dataset.splits.items()) if cfg.split == "all" else [(cfg.split, dataset.split(cfg.split))]
    store = MaskStore(out)
    unreadable: list[str] = []
    summary: dict[str, Any] = {"splits": {}}
    device = None

    if cfg.import_h5:
        if cfg.class_seeds:
            raise ConfigError("--import-h5 imports finished masks; --class-seeds makes new ones: choose one")
        if len(splits) != 1:
            raise ConfigError("--import-h5 reads one split's file: give --split train or --split test")
        n = import_reference_h5(cfg.import_h5, splits[0][1], store)
        summary["imported"] = n
        log(f"imported {n} masks from {cfg.import_h5} into {out}")
    else:
        device = select_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        backbone = (backbone or build_mask_backbone(cfg)).to(device)
        masker = GrabCutMasker(
            trimap_for(backbone, fg_frac=cfg.fg, bg_frac=cfg.bg, mid_frac=cfg.mid, border_frac=cfg.border),
            iterations=cfg.iterations,
            work_size=cfg.work_size or None,
            seed=cfg.seed,
            open_frac=open_frac_for(backbone, cfg.open),
        )
        summary.update(masker=masker.config(), attention_blocks=list(backbone.attention_blocks))
        if cfg.class_seeds:
            from .refine import class_seeded_masks, round2_masker

            if not dataset.splits.get("train"):
                raise ConfigError(f"{cfg.data_path}: --class-seeds fits its probe on the 'train' split, and this "
                                  "data set has no training image")
            masker2 = round2_masker(masker)
            summary.update(class_seeds=True, round2_masker=masker2.config())
        for name, samples in splits:
            if cfg.class_seeds:
                stats = class_seeded_masks(
                    dataset.split("train"), samples, backbone, store, masker, masker2, len(dataset.classes),
                    batch_size=cfg.batch_size, workers=cfg.workers, shard=shard, device=device, progress=progress,
                    per_image=cfg.probe_patches, per_class=cfg.probe_images or None, seed=cfg.seed, skip_bad=cfg.skip_bad, log=log)
            else:
                stats = mask_samples(
                    samples, backbone, store, masker, batch_size=cfg.batch_size, workers=cfg.workers,
                    shard=shard, device=device, progress=progress, skip_bad=cfg.skip_bad,
                )
            unreadable += stats.unreadable
            summary["splits"][name] = stats.to_dict()
            fb = sum(stats.fallbacks.values())
            log(f"{name}: shard {stats.shard[0]}/{stats.shard[1]}: {stats.done} written, {stats.skipped} "
                f"already there, {fb} fallbacks, {stats.images_per_s:.2f} images/s")
        i, n = resolve_shard(shard)
        suffix = f".shard{i}of{n}" if n > 1 else ""
        write_json(out / f"run_stats{suffix}.json", summary)
        save_config(cfg, out, f"mask_config{suffix}")
        if unreadable:
            # the report and the HDF5 pack cover the images that have a mask
            splits = [(name, [s for s in ss if store.has(s.relpath)]) for name, ss in splits]

    if cfg.report:
        report: dict[str, Any] = {"splits": {}}
        for name, samples in splits:
            report["splits"][name] = quality_report(
                samples, store, backbone=None if cfg.import_h5 else backbone,
                attention_threshold=0.5, batch_size=cfg.batch_size, device=device,
            )
            print(f"[{name}]\n{format_report(report['splits'][name])}")
        write_report(out / "report.json", report)
        summary["report"] = report
    if cfg.hdf5:
        samples = [s for _, ss in splits for s in ss]
        pack_hdf5(store, samples, cfg.hdf5)
        log(f"packed {len(samples)} masks into {cfg.hdf5}")
    if unreadable:
        log(skipped_message(unreadable))
    summary["unreadable"] = unreadable
    return summary
