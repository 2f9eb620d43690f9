"""Training configurations: defaults, then a YAML file, then command-line overrides.

``None`` in a field means "the library default" (resolved when training starts, e.g. the crop
size comes from the backbone). The resolved configuration is written beside every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError
from ..fileio import atomic_write, write_json

# Reference threshold sweeps (CUB and ILSVRC) merged: the validation picks the best one.
DEFAULT_VAL_THRESHOLDS = (0.30, 0.34, 0.38, 0.40, 0.42, 0.45, 0.48, 0.50, 0.51, 0.52, 0.53)


@dataclass
class TrainConfig:
    """Fields shared by both trainers. ``batch_size`` is per process (per GPU)."""

    data_path: str | None = None
    backbone: str = "deit_small_patch16_224"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm create_model args
    weights: str | None = None
    masks: str | None = None
    out: str | None = None
    epochs: int = 20
    batch_size: int = 128
    base_lr: float = 1e-3
    lr: float | None = None  # None: base_lr * global_batch / 512
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: int = 0
    sched: str = "cosine"  # "cosine" or "constant"; both updated every optimizer step
    weight_decay: float = 0.05
    clip_grad: float | None = None
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU), bf16 (also on a CPU with native bf16), fp16, off
    device: str | None = None  # None: CUDA when available, else CPU
    workers: int | None = None  # None: 2 per process
    seed: int = 0
    # "heldout": per-class images carved from train (honest: best checkpoint and box threshold
    # are chosen on images the final test never sees); "test": the reference's protocol
    # (chosen on the test images: optimistic, said so in the log); "none"
    val_split: str = "heldout"
    heldout_per_class: int = 5
    val_every: int = 1
    crop_size: int | None = None  # None: the backbone's input size
    resize_size: int | None = None  # None: crop_size * 256 / 224
    mask_threshold: float = 0.05  # masks are min-max normalised, then binarized at this value
    steps_per_epoch: int | None = None  # None: the whole training set each epoch
    checkpoint_every: int = 1
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only); else per-process BN statistics
    skip_bad: bool = False  # leave out (and count) unreadable images instead of stopping

    def resolved_lr(self, world_size: int) -> float:
        """The absolute learning rate: ``lr`` if set, else ``base_lr * global batch / 512``."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.batch_size * world_size / 512.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GeneratorTrainConfig(TrainConfig):
    """Stage 2 (GEG): generator trained with MSE against the GrabCut masks."""

    epochs: int = 20
    base_lr: float = 1e-3
    sched: str = "constant"
    generator: str = "unet"  # unet, deconv or light
    generator_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. mid_channels
    cache_views: int = 0  # >0: precompute backbone features for this many views per image
    hflip: float = 0.5  # horizontal flip probability (joint image + mask)
    val_thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_VAL_THRESHOLDS))


@dataclass
class ClassifierTrainConfig(TrainConfig):
    """Stage 3 (LFDM): classifier trained on masked images with a local-area guide box."""

    epochs: int = 100
    base_lr: float = 1.5e-4
    sched: str = "cosine"
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    crop_scale: float = 0.08  # lower bound of the random-resized crop's area fraction (timm's default)
    interpolation: str = "bicubic"
    re_prob: float = 0.0
    local_guide: bool = True  # force the mask to 1 inside one random CutMix-style box
    guide_beta: float = 1.0  # lambda ~ Beta(guide_beta, guide_beta); box area = 1 - lambda
    masked_size: int = 256  # images and masks are resized to this square before masking
    generator_dir: str | None = None  # a generator model dir to merge into the output model
    classifier_depth: int | None = None  # blocks copied from the backbone (None: all of them)
    frozen_blocks: int = 0  # of those, the first N stay at the backbone's weights (trained: the rest + head)


@dataclass
class MaskConfig:
    """Stage 1: GrabCut-enhanced masks for a data set split (``locloc masks``)."""

    data_path: str | None = None
    split: str = "train"  # train, test, or all
    out: str | None = None  # the mask store directory
    backbone: str = "deit_small_patch16_224"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # a local file in any known layout, or hf-hub:ORG/NAME
    attention_blocks: list[int] | None = None  # None: the backbone family's default
    allow_random_backbone: bool = False
    workers: int = 1  # GrabCut processes (0: in the main process)
    shard: str | None = None  # "I/N"
    batch_size: int = 32  # backbone batch
    iterations: int = 2  # GrabCut iterations (2 cut as well as 5: GrabCutMasker's docstring)
    work_size: int = 256  # GrabCut working resolution (longer side); 0 = full resolution
    fg: float | None = None  # trimap cuts; None: the weights file's, else the family's, else the library's
    bg: float | None = None
    mid: float | None = None  # probable-fg cut (None: with fg/bg given, bg + (fg - bg) / 20)
    border: float | None = None
    open: float | None = None  # mask opening, fraction of the shorter side (None: file's, else family's; 0: none)
    # a second round seeded by a patch probe trained with the image labels (masks/refine.py);
    # a departure from the paper's attention-only stage 1
    class_seeds: bool = False
    probe_patches: int = 32  # random patches per training image for the probe
    probe_images: int = 100  # training images per class in round 1 and the probe (0: all)
    seed: int = 0
    device: str | None = None  # None: CUDA when available
    report: bool = False  # score the masks against GT boxes/masks; report.json
    hdf5: str | None = None  # also pack the masks into one HDF5 file
    import_h5: str | None = None  # import a reference .h5 mask file instead of generating
    skip_bad: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalConfig:
    """Stage 4: scores on a data set with boxes (``locloc evaluate``). The model is a project
    model dir, or the reference release's three files (``reference_*``)."""

    data_path: str | None = None
    model_dir: str | None = None
    split: str | None = None  # None: test when the data set has it, else its first split
    images_root: str | None = None  # wsolevaluation metadata: where the images are
    threshold_split: str | None = None  # choose the box threshold here, report ``split`` at it
    out: str | None = None  # metrics.json + per_image.csv (+ eval_config.yaml)
    thresholds: list[float] | None = None  # None: the model's sweep, else the reference's
    batch_size: int = 32
    # data-loading processes; None: 0 on CPU (decoding is a few % of a CPU pass, and loader
    # processes take cores from the networks' threads: 0.87 -> 0.97 of the FLOP floor on 2
    # cores, benchmarks/bench_evaluate.py), 2 on CUDA
    workers: int | None = None
    device: str | None = None
    bf16: bool = False
    boxes_only: bool = False
    box_mapping: str = "reference"
    first_box_only: bool = False
    limit: int | None = None
    metric_workers: int = 1
    skip_bad: bool = False
    data_set: str | None = None  # the reference's --data-set name (CUB, IMNET, ILSVRC)
    reference_model: str | None = None
    reference_backbone: str | None = None
    reference_classifier: str | None = None
    reference_locator: str | None = None
    locator_type: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


C = TypeVar("C")

_POSITIVE = {"epochs", "batch_size", "val_every", "checkpoint_every", "iterations", "metric_workers", "probe_patches"}
_POSITIVE_OPT = {"steps_per_epoch", "crop_size", "resize_size", "masked_size", "classifier_depth", "limit"}
_NON_NEGATIVE = {
    "base_lr", "lr", "min_lr", "warmup_lr", "warmup_epochs", "weight_decay", "clip_grad",
    "workers", "cache_views", "frozen_blocks", "probe_images", "label_smoothing", "color_jitter", "heldout_per_class", "work_size",
}
_CHOICES = {
    "amp": ("auto", "bf16", "fp16", "off"),
    "sched": ("cosine", "constant"),
    "val_split": ("test", "heldout", "none"),
    "generator": ("unet", "deconv", "light"),
    "interpolation": ("bicubic", "bilinear", "nearest", "random"),
    "box_mapping": ("reference", "exact"),
    "locator_type": ("auto", "unet", "deconv"),
    "data_set": ("CUB", "IMNET", "ILSVRC"),
}


def _check_type(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError``/``ValueError``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a)
            except (TypeError, ValueError):
                pass
        raise TypeError(f"expected {tp}, got {type(value).__name__} {value!r}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeError(f"expected a mapping of name: value, got {value!r}")
        json.dumps(value)  # must be plain data (it is saved with the run)
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            return float(value)
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported field type {tp}")


def _validate_value(name: str, value: Any) -> None:
    if value is None:
        return
    if name in _POSITIVE or name in _POSITIVE_OPT:
        if value <= 0:
            raise ValueError(f"must be > 0, got {value}")
    if name in _NON_NEGATIVE and value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"must be one of {', '.join(_CHOICES[name])}, got {value!r}")
    if name == "mask_threshold" and not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {value}")
    if name == "label_smoothing" and value >= 1.0:
        raise ValueError(f"must be < 1, got {value}")
    if name == "crop_scale" and not 0.0 < value <= 1.0:
        raise ValueError(f"must be in (0, 1], got {value}")
    if name in ("re_prob", "hflip") and not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    if name == "val_thresholds" and (not value or any(not 0.0 <= t <= 1.0 for t in value)):
        raise ValueError(f"must be a non-empty list of numbers in [0, 1], got {value}")
    if name == "thresholds" and (not value or any(not 0.0 <= t < 1.0 for t in value)):
        raise ValueError(f"must be a non-empty list of numbers in [0, 1), got {value}")
    if name in ("fg", "bg", "mid", "border") and not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    if name == "open" and not 0.0 <= value < 0.5:
        raise ValueError(f"must be in [0, 0.5), got {value}")


def apply_values(cfg: C, values: dict[str, Any], source: str) -> C:
    """``cfg`` with ``values`` applied, each type-checked and validated; errors name
    ``source`` and the key."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    updates = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key {key!r} for {type(cfg).__name__} "
                f"(known keys: {', '.join(sorted(names))})"
            )
        try:
            v = _check_type(value, hints[key])
            _validate_value(key, v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: key {key!r}: {e}") from None
        updates[key] = v
    return dataclasses.replace(cfg, **updates)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping of config keys; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{loc}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> C:
    """Build a ``cls`` config: defaults, then the file at ``path``, then ``overrides``.

    Override values that are ``None`` are ignored (an option not given on the command line).
    Unknown keys and invalid values raise :class:`ConfigError` naming the file and key.
    """
    cfg = cls()
    if path is not None:
        cfg = apply_values(cfg, read_config_file(path), str(path))
    if overrides:
        cfg = apply_values(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    return cfg


def save_config(cfg: Any, run_dir: str | Path, name: str = "config") -> None:
    """Write a resolved config dataclass as ``<name>.yaml`` and ``<name>.json`` in ``run_dir``."""
    run_dir = Path(run_dir)
    d = dataclasses.asdict(cfg)
    with atomic_write(run_dir / f"{name}.yaml", "w") as f:
        yaml.safe_dump(d, f, sort_keys=False)
    write_json(run_dir / f"{name}.json", d)


# ---- command line ---------------------------------------------------------------------------

def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


# Options shared by both ``locloc train-*`` commands: (flag, config key, argparse kwargs).
_COMMON_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--data-path", "data_path", dict(metavar="DIR", help="data set root (CUB layout, ILSVRC, ...)")),
    ("--backbone", "backbone", dict(metavar="NAME", help="timm ViT name of the frozen backbone")),
    ("--backbone-kwargs", "backbone_kwargs",
     dict(type=_json_dict, metavar="JSON", help='extra timm arguments, e.g. \'{"img_size": 64}\'')),
    ("--weights", "weights", dict(metavar="FILE", help="local backbone weights file")),
    ("--masks", "masks", dict(metavar="DIR", help="stage-1 mask store (from `locloc masks`)")),
    ("--out", "out", dict(metavar="DIR", help="run directory (checkpoints, logs, model)")),
    ("--epochs", "epochs", dict(type=int, metavar="N")),
    ("--batch-size", "batch_size", dict(type=int, metavar="B", help="per process")),
    ("--lr", "lr", dict(type=float, help="absolute lr (default: base lr x global batch / 512)")),
    ("--base-lr", "base_lr", dict(type=float)),
    ("--weight-decay", "weight_decay", dict(type=float)),
    ("--warmup-epochs", "warmup_epochs", dict(type=int)),
    ("--workers", "workers", dict(type=int, help="data loader workers per process (default 2)")),
    ("--device", "device", dict(help="cpu, cuda, cuda:N (default: CUDA when available)")),
    ("--seed", "seed", dict(type=int)),
    ("--amp", "amp", dict(choices=_CHOICES["amp"], help="mixed precision: CUDA, or bf16 on a CPU with native bf16")),
    ("--clip-grad", "clip_grad", dict(type=float, metavar="NORM", help="max gradient norm")),
    ("--val-split", "val_split", dict(choices=_CHOICES["val_split"])),
    ("--steps-per-epoch", "steps_per_epoch", dict(type=int, help="cap on steps per epoch")),
    ("--crop-size", "crop_size", dict(type=int, help="default: the backbone's input size")),
    ("--skip-bad", "skip_bad", dict(action="store_const", const=True,
                                    help="skip (and count) unreadable images instead of stopping at the first one")),
]


def add_train_arguments(p: argparse.ArgumentParser, extra: list[tuple[str, str, dict]] = ()) -> None:
    """Add the shared training options (all default to ``None`` = config value) to ``p``."""
    p.add_argument("--config", metavar="FILE", help="YAML config; command-line options win")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue from OUT/last.pt (or the checkpoint given)",
    )
    for flag, key, kw in [*_COMMON_OPTIONS, *extra]:
        p.add_argument(flag, dest=key, default=None, **kw)


def config_from_args(cls: type[C], args: argparse.Namespace, extra_keys: tuple[str, ...] = ()) -> C:
    """Build a config from ``--config`` and the options added by :func:`add_train_arguments`."""
    keys = [key for _, key, _ in _COMMON_OPTIONS] + list(extra_keys)
    overrides = {k: getattr(args, k, None) for k in keys}
    return load_config(cls, getattr(args, "config", None), overrides)

