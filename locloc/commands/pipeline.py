"""``locloc pipeline``: masks -> train-generator -> train-classifier -> evaluate, from one config.

Stages whose outputs exist are skipped (a finished mask store, a generator or classifier run
with its model directory, ``metrics.json``), so a rerun after an interruption continues.
The config is a YAML mapping; top-level keys are shared by every stage, and the sections
``masks``, ``generator``, ``classifier`` and ``evaluate`` hold per-stage options::

    data_path: /data/CUB_200_2011
    backbone: deit_small_patch16_224
    weights: /weights/deit_small_patch16_224.pth
    out: runs/cub
    generator: {epochs: 20, batch_size: 128}
    classifier: {epochs: 100, batch_size: 128}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NAME = "pipeline"
HELP = "run masks, both trainers and evaluation for one data set from one config"

SHARED = ("data_path", "backbone", "backbone_kwargs", "weights", "device", "seed", "workers")
SECTIONS = ("masks", "generator", "classifier", "evaluate")
MASK_KEYS = {"split", "iterations", "work_size", "batch_size", "workers", "fg", "bg", "border"}
EVAL_KEYS = {"split", "thresholds", "batch_size", "box_mapping", "first_box_only"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file (see `locloc pipeline --help` and configs/)")
    p.add_argument("--out", default=None, help="run directory (overrides the config's out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _section(cfg: dict[str, Any], name: str, allowed: set[str] | None, path: str) -> dict[str, Any]:
    from ..errors import ConfigError

    sec = cfg.get(name) or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{path}: section {name!r} must be a mapping")
    if allowed is not None:
        unknown = sorted(set(sec) - allowed)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown} in section {name!r}; allowed: {sorted(allowed)}")
    return sec


def run(args: argparse.Namespace) -> int:

    from ..data import load_dataset
    from ..engine.config import ClassifierTrainConfig, GeneratorTrainConfig, load_config, read_config_file
    from ..errors import ConfigError
    from ..masks.grabcut import GrabCutMasker, trimap_for
    from ..masks.runner import generate_masks
    from ..masks.store import MaskStore
    from ..models.backbone import build_backbone

    path = args.config
    cfg = read_config_file(path)
    unknown = sorted(set(cfg) - set(SHARED) - set(SECTIONS) - {"out"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted((*SHARED, *SECTIONS, 'out'))}")
    out = Path(args.out or cfg.get("out") or "")
    if not str(out) or str(out) == ".":
        raise ConfigError(f"{path}: no output directory: set `out:` in the config or pass --out")
    if not cfg.get("data_path"):
        raise ConfigError(f"{path}: `data_path:` is required")
    if not cfg.get("weights"):
        raise ConfigError(f"{path}: `weights:` (a local backbone weights file) is required")
    shared = {k: cfg[k] for k in SHARED if k in cfg}
    msec = _section(cfg, "masks", MASK_KEYS, path)
    esec = _section(cfg, "evaluate", EVAL_KEYS, path)
    gsec = _section(cfg, "generator", None, path)  # keys checked by the trainer's config
    csec = _section(cfg, "classifier", None, path)
    progress = not args.no_progress
    from ..engine.distributed import select_device

    device = str(select_device(shared.get("device")))
    data = load_dataset(shared["data_path"])

    # stage 1
    store = MaskStore(out / "masks")
    split = msec.get("split", "train")
    samples = [s for name in (data.splits if split == "all" else [split]) for s in data.split(name)]
    todo = [s for s in samples if not store.has(s.relpath)]
    if todo:
        print(f"[pipeline] masks: {len(todo)} of {len(samples)} images to do", file=sys.stderr)
        backbone = build_backbone(shared.get("backbone", "deit_small_patch16_224"), shared["weights"],
                                  **shared.get("backbone_kwargs", {}))
        trimap = trimap_for(backbone, fg_frac=msec.get("fg"), bg_frac=msec.get("bg"), border_frac=msec.get("border"))
        masker = GrabCutMasker(trimap, iterations=msec.get("iterations", 5), work_size=msec.get("work_size", 256),
                               seed=shared.get("seed", 0))
        generate_masks(samples, backbone, store, masker, batch_size=msec.get("batch_size", 32),
                       workers=msec.get("workers", 1), device=device, progress=progress)
    else:
        print(f"[pipeline] masks: all {len(samples)} present, skipped", file=sys.stderr)

    # stages 2 and 3
    from ..engine.train_classifier import train_classifier
    from ..engine.train_generator import train_generator

    common = {**shared, "masks": str(store.root)}
    gen_dir = out / "generator"
    if not (gen_dir / "model" / "config.json").exists():
        gcfg = load_config(GeneratorTrainConfig, None, {**common, **gsec,
                                                        "out": str(gen_dir)})
        train_generator(gcfg, resume="auto", progress=progress)
    else:
        print("[pipeline] generator: model present, skipped", file=sys.stderr)
    cls_dir = out / "classifier"
    model_dir = cls_dir / "model"
    if not (model_dir / "config.json").exists():
        ccfg = load_config(ClassifierTrainConfig, None, {**common, **csec,
                                                         "out": str(cls_dir), "generator_dir": str(gen_dir / "model")})
        train_classifier(ccfg, resume="auto", progress=progress)
    else:
        print("[pipeline] classifier: model present, skipped", file=sys.stderr)

    # stage 4
    if (out / "eval" / "metrics.json").exists():
        print(f"[pipeline] evaluate: {out / 'eval' / 'metrics.json'} present, skipped", file=sys.stderr)
        return 0
    from ..cli import main as cli_main

    argv = ["evaluate", "--model-dir", str(model_dir), "--data-path", str(shared["data_path"]),
            "--out", str(out / "eval"), "--device", device, "--workers", str(shared.get("workers", 2))]
    for key, flag in (("split", "--split"), ("batch_size", "--batch-size"), ("box_mapping", "--box-mapping")):
        if key in esec:
            argv += [flag, str(esec[key])]
    if esec.get("thresholds"):
        argv += ["--thresholds", *map(str, esec["thresholds"])]
    if esec.get("first_box_only"):
        argv.append("--first-box-only")
    return cli_main(argv)
