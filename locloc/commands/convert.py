"""``locloc convert``: turn the reference release's checkpoints into a LocLoc model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "convert"
HELP = "convert reference LocLoc checkpoints (backbone, classifier, locator) into a model directory"
DESCRIPTION = (
    "Build a LocLoc model directory (model.safetensors + config.json) from the reference "
    "release: the DeiT/DINO backbone file, the LFDM classifier file and the generator "
    "('locator') file. The class count is read from the classifier file: the reference CUB "
    "classifiers have 1000 outputs, so the names from --classes label the first outputs and "
    "the rest are named 'unused_<index>'."
)

THRESHOLDS = {
    "cub": {"default": 0.5, "sweep": [0.45, 0.48, 0.50, 0.51, 0.52, 0.53]},
    "ilsvrc": {"default": 0.4, "sweep": [0.30, 0.34, 0.38, 0.40, 0.42, 0.45]},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone-weights", required=True, metavar="FILE",
                   help="backbone file (official DeiT {'model': ...}, DINO, timm or .safetensors)")
    p.add_argument("--classifier", metavar="FILE", default=None,
                   help="reference LFDM classifier file; omit for a localization-only model")
    p.add_argument("--locator", required=True, metavar="FILE", help="reference generator file (UnetNet or DeconvNet)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--backbone", default="deit_small_patch16_224", metavar="NAME", help="timm backbone name")
    p.add_argument("--generator", choices=("auto", "unet", "deconv"), default="auto",
                   help="generator type (auto: from the file's keys)")
    p.add_argument("--classes", metavar="FILE", default=None,
                   help="class names: a CUB classes.txt ('id name' lines) or one name per line")
    p.add_argument("--dataset", choices=sorted(THRESHOLDS), default="cub",
                   help="selects the reference threshold sweep stored with the model")
    p.add_argument("--thresholds", type=float, nargs="+", default=None, metavar="T",
                   help="map threshold sweep (fractions of the map maximum); overrides --dataset's")
    p.add_argument("--default-threshold", type=float, default=None, metavar="T",
                   help="threshold used by predict (default: the data set's)")


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a CUB ``classes.txt`` (``id name``, ids 1..K in order) or a plain
    one-name-per-line file. Raises DataError naming the file and line."""
    from ..errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class names file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from None
    names: list[str] = []
    for i, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        first, _, rest = line.partition(" ")
        if first.isdigit() and rest.strip():
            if int(first) != len(names) + 1:
                raise DataError(f"{path}:{i}: class id {first} out of order (expected {len(names) + 1})")
            line = rest.strip()
        names.append(line)
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..models.builder import build_from_reference
    from ..models.model_dir import save_model_dir

    thresholds = dict(THRESHOLDS[args.dataset])
    if args.thresholds:
        thresholds["sweep"] = sorted(set(args.thresholds))
    if args.default_threshold is not None:
        thresholds["default"] = args.default_threshold
    for t in [thresholds["default"], *thresholds["sweep"]]:
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"--thresholds: {t} is outside [0, 1]")
    names = read_class_names(args.classes) if args.classes else None
    num_named = None if names is None else len(names)

    model = build_from_reference(args.backbone_weights, args.classifier, args.locator,
                                 backbone_name=args.backbone, generator=args.generator)
    n = model.num_classes
    if n is not None:
        if names is None:
            names = [f"class_{i}" for i in range(n)]
        elif len(names) > n:
            raise ConfigError(f"{args.classes}: {len(names)} class names, but the classifier has only {n} outputs")
        else:
            names = names + [f"unused_{i}" for i in range(len(names), n)]
    config = {
        "class_names": names or [],
        "thresholds": thresholds,
        "source": {
            "converted_from": "reference LocLoc release",
            "backbone_weights": str(args.backbone_weights),
            "classifier": str(args.classifier) if args.classifier else None,
            "locator": str(args.locator),
            "dataset": args.dataset,
            "num_named_classes": num_named,
        },
    }
    full = save_model_dir(args.out, model, config)
    gen = full["generator"]["type"]
    cls = f"{n}-way classifier" if n is not None else "no classifier"
    print(f"wrote {args.out}: {full['backbone']['name']} backbone, {gen} generator, {cls}")
    return 0
