"""The project's model directory: ``model.safetensors`` (every weight, backbone included) +
``config.json`` (architecture, class names, normalization, input size, box thresholds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import resize_for
from ..errors import CheckpointError
from ..fileio import atomic_save, write_json
from .builder import build_model_from_config
from .generator import GENERATORS
from .pipeline import LocLocModel
from .weights import load_state_dict_file, load_strict

__all__ = ["CONFIG_FILE", "CONFIG_KEYS", "MODEL_FILE", "load_model_dir", "model_config", "save_model_dir"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "locloc-model"
FORMAT_VERSION = 1
CONFIG_KEYS = frozenset({
    "format", "version", "backbone", "generator", "classifier", "class_names",
    "normalization", "input", "thresholds", "source",
})


# --------------------------------------------------------------------- model directories


def _generator_type(gen: nn.Module) -> str:
    for name, cls in GENERATORS.items():
        if type(gen) is cls:
            return name
    raise TypeError(f"cannot save generator of type {type(gen).__name__}: not one of {sorted(GENERATORS)}")


def model_config(model: LocLocModel, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full ``config.json`` for ``model``: architecture from the model, the rest from
    ``config`` (``class_names``, ``normalization``, ``input``, ``thresholds``, ``source``)
    with defaults filled in."""
    config = dict(config or {})
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    bb = model.backbone
    dc = bb.data_config
    crop = int(dc["input_size"][-1])
    n = model.num_classes
    names = list(config.get("class_names") or [f"class_{i}" for i in range(n or 0)])
    if n is not None and len(names) != n:
        raise ValueError(f"{len(names)} class names for a classifier with {n} outputs")
    out = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backbone": {"name": bb.name, "timm_kwargs": bb.timm_kwargs},
        "generator": {"type": _generator_type(model.generator), "kwargs": model.generator.config},
        "classifier": model.classifier.config if model.classifier is not None else None,
        "class_names": names,
        "normalization": config.get("normalization")
        or {"mean": [float(v) for v in dc["mean"]], "std": [float(v) for v in dc["std"]]},
        # the method's eval protocol (resize 256, centre crop 224), scaled to the model's input
        "input": config.get("input") or {"resize": resize_for(crop), "crop": crop},
        "thresholds": config.get("thresholds") or {"default": 0.5, "sweep": [0.5]},
    }
    if "source" in config:
        out["source"] = config["source"]
    json.dumps(out)  # fail here, not half-way through writing, if something is not JSON
    return out


def save_model_dir(directory: str | Path, model: LocLocModel, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``model.safetensors`` (all weights, backbone included) and ``config.json`` into
    ``directory``, each atomically. Returns the full config written."""
    from safetensors.torch import save_file

    directory = Path(directory)
    full = model_config(model, config)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_save(directory / MODEL_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(directory / CONFIG_FILE, full)
    return full


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: model config not found (a model directory holds {CONFIG_FILE} and {MODEL_FILE})")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        where = f"{path}:{line}" if line else str(path)
        raise CheckpointError(f"{where}: model config is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: model config must be a JSON object")
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown model config keys {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a LocLoc model config (format is {cfg.get('format')!r}, expected {FORMAT!r})")
    if cfg.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: model config version {cfg.get('version')!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("backbone", "generator"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"{path}: model config lacks the {key!r} section")
    return cfg


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu") -> tuple[LocLocModel, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model_dir`; weights are loaded strictly.

    Returns ``(model in eval mode on device, config dict)``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    cfg_path = directory / CONFIG_FILE
    cfg = _read_config(cfg_path)
    model = build_model_from_config(cfg, cfg_path)
    weights = directory / MODEL_FILE
    sd = load_state_dict_file(weights)
    load_strict(model, sd, "LocLoc model", weights)
    names = cfg.get("class_names")
    if model.num_classes is not None and names is not None and len(names) != model.num_classes:
        raise CheckpointError(f"{cfg_path}: {len(names)} class names for a classifier with {model.num_classes} outputs")
    return model.to(device).eval(), cfg
