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
# keys of each section that the pipeline sets itself
OWN_KEYS = {"masks": {"data_path", "out"}, "evaluate": {"data_path", "model_dir", "out"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file (see `locloc pipeline --help` and configs/)")
    p.add_argument("--out", default=None, help="run directory (overrides the config's out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _section(cfg: dict[str, Any], name: str, path: str) -> dict[str, Any]:
    from ..errors import ConfigError

    sec = cfg.get(name) or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{path}: section {name!r} must be a mapping")
    own = sorted(set(sec) & OWN_KEYS.get(name, set()))
    if own:
        raise ConfigError(f"{path}: section {name!r} cannot set {own}: the pipeline sets them")
    return sec


def _log(msg: str) -> None:
    print(f"[pipeline] {msg}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..engine.config import (
        ClassifierTrainConfig,
        EvalConfig,
        GeneratorTrainConfig,
        MaskConfig,
        apply_values,
        read_config_file,
    )
    from ..engine.distributed import select_device
    from ..engine.evaluate import evaluate, format_model_threshold, format_table
    from ..engine.train_classifier import train_classifier
    from ..engine.train_generator import train_generator
    from ..errors import ConfigError
    from ..masks.stage import generate_masks
    from ..masks.store import MaskStore

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
    progress = not args.no_progress
    device = str(select_device(shared.get("device")))
    sec = {name: _section(cfg, name, path) for name in SECTIONS}

    def build(cls, name: str, values: dict[str, Any]):
        base = apply_values(cls(), {k: v for k, v in values.items() if v is not None}, f"{path} (shared keys)")
        return apply_values(base, sec[name], f"{path} [{name}]")

    # stage 1: masks of the train split by default (every split with `split: all`)
    mcfg = build(MaskConfig, "masks", {
        "data_path": shared["data_path"], "out": str(out / "masks"), "backbone": shared.get("backbone"),
        "backbone_kwargs": shared.get("backbone_kwargs"), "weights": shared["weights"], "device": device,
        "seed": shared.get("seed"),
    })
    common = {**shared, "masks": mcfg.out}
    gen_dir, cls_dir = out / "generator", out / "classifier"
    model_dir = cls_dir / "model"
    # every section is checked before any stage runs
    gcfg = build(GeneratorTrainConfig, "generator", {**common, "out": str(gen_dir)})
    ccfg = build(ClassifierTrainConfig, "classifier",
                 {**common, "out": str(cls_dir), "generator_dir": str(gen_dir / "model")})
    ecfg = build(EvalConfig, "evaluate", {
        "data_path": shared["data_path"], "model_dir": str(model_dir), "out": str(out / "eval"),
        "device": device, "workers": shared.get("workers", 2),
    })
    data = load_dataset(shared["data_path"])
    store = MaskStore(mcfg.out)
    samples = [s for n in (data.splits if mcfg.split == "all" else [mcfg.split]) for s in data.split(n)]
    todo = sum(not store.has(s.relpath) for s in samples)
    if todo:
        _log(f"masks: {todo} of {len(samples)} images to do")
        generate_masks(mcfg, progress=progress)
    else:
        _log(f"masks: all {len(samples)} present, skipped")

    # stages 2 and 3
    if not (gen_dir / "model" / "config.json").exists():
        train_generator(gcfg, resume="auto", progress=progress)
    else:
        _log("generator: model present, skipped")
    if not (model_dir / "config.json").exists():
        train_classifier(ccfg, resume="auto", progress=progress)
    else:
        _log("classifier: model present, skipped")

    # stage 4
    if (out / "eval" / "metrics.json").exists():
        _log(f"evaluate: {out / 'eval' / 'metrics.json'} present, skipped")
        return 0
    result = evaluate(ecfg, progress=progress)
    print(format_table(result.metrics))
    line = format_model_threshold(result.metrics)
    if line:
        print(line)
    _log(f"wrote {out / 'eval' / 'metrics.json'}")
    return 0
