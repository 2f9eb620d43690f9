"""Weights in: one reader for every checkpoint file, per-source key remapping and strict
loading (the backbone's, the reference release's, a saved model's).

Pickled files are read with ``torch.load(weights_only=True)`` only: a file whose pickle would
run code is refused. Nothing is ever loaded partially: shapes and key sets are checked first.
Model building lives in :mod:`locloc.models.builder`, the model-directory format in
:mod:`locloc.models.model_dir`; this module imports neither (no import circle).
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..fileio import atomic_save
from .layouts import POS_EMBED_RULES, detect_layout, resample_pos_embed, to_timm

if TYPE_CHECKING:
    from .backbone import FrozenViT

__all__ = [
    "BACKBONE_SOURCES",
    "SOURCES",
    "CheckpointFile",
    "describe_state_dict",
    "detect_kind",
    "fit_to_vit",
    "load_backbone_weights",
    "load_state_dict_file",
    "load_strict",
    "read_checkpoint",
    "remap_state_dict",
    "save_backbone_file",
]

BACKBONE_SOURCES = ("deit", "timm", "dino", "dinov2", "hf")
SOURCES = (*BACKBONE_SOURCES, "reference_classifier", "reference_unet", "reference_deconv", "locloc")
_WRAPPERS = ("state_dict", "model", "module", "teacher", "model_ema", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5


# ---------------------------------------------------------------------------- reading files


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict on the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(map_location="cpu", weights_only=True)``. Wrappers (``state_dict``,
    ``model``, ``module``, DINO's ``teacher``, ...) are unwrapped and ``module.`` /
    ``_orig_mod.`` prefixes stripped. Raises :class:`CheckpointError` naming the file.
    """
    return read_checkpoint(path).state_dict


@dataclass
class CheckpointFile:
    """A checkpoint as read from disk: the flat state dict and what it was wrapped in."""

    state_dict: dict[str, Tensor]
    wrapper: str | None  # the outermost wrapper key the dict sat under (``model``, ``teacher``, ...)
    file_kind: str  # ``safetensors`` | ``pickle``
    metadata: dict[str, str]  # safetensors header metadata ({} for pickles)


def read_checkpoint(path: str | Path) -> CheckpointFile:
    """:func:`load_state_dict_file` plus the wrapper key and safetensors metadata."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint file, found a directory")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes)")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        obj = _load_safetensors(path)
        metadata = _safetensors_metadata(path)
        kind = "safetensors"
    else:
        obj = _load_pickle(path)
        kind = "pickle"
    sd, wrapper = _unwrap(obj, path)
    return CheckpointFile(_strip_prefixes(sd), wrapper, kind, metadata)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt: {e})") from None


def _load_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg:
            m = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f" (it references {m.group(1)})" if m else ""
            raise CheckpointError(
                f"{path}: refused for safety: the file is a pickle that would import or run code"
                f"{what}; only plain tensor checkpoints (torch.save of a state dict, or safetensors) "
                "are loaded"
            ) from None
        raise CheckpointError(f"{path}: not a checkpoint (cannot unpickle: {msg.splitlines()[0]})") from None
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {first})") from None
    except (EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a checkpoint (expected a torch.save or safetensors file; {type(e).__name__}: {e})"
        ) from None


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], str | None]:
    wrapper = None
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None or all(isinstance(v, Tensor) for v in obj.values()):
            break
        obj, wrapper = obj[key], wrapper or key
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad or not obj:
        shown = ", ".join(map(str, bad[:_SHOW])) if bad else "none"
        raise CheckpointError(
            f"{path}: not a state dict: {len(bad)} of {len(obj)} entries are not tensors "
            f"(e.g. {shown}); expected {{key: tensor}} or one of the wrappers {list(_WRAPPERS)}"
        )
    return {str(k): v for k, v in obj.items()}, wrapper


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


# ------------------------------------------------------------------ recognising and remapping


def detect_kind(sd: dict[str, Tensor]) -> str:
    """What a state dict holds: ``backbone`` | ``classifier`` | ``unet`` | ``deconv`` |
    ``light`` | ``locloc`` | ``unknown``."""
    keys = set(sd)
    if any(k.startswith("backbone.vit.") for k in keys):
        return "locloc"
    if "att_layer4.up_3.conv.UConv.0.weight" in keys:
        return "unet"
    if "conv0.weight" in keys and "deconv_layers.0.weight" in keys:
        return "deconv"
    if "trunk.up_3.conv.UConv.0.weight" in keys:
        return "light"
    if "blocks_mini.0.attn.qkv.weight" in keys or "classifier.0.weight" in keys:
        return "classifier"
    if any(k.endswith(("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight")) for k in keys):
        return "backbone"
    return "unknown"


def describe_state_dict(sd: dict[str, Tensor]) -> str:
    """A short human description of what the state dict looks like."""
    kind = detect_kind(sd)
    if kind == "unet":
        return "a UNet generator checkpoint (reference UnetNet layout)"
    if kind == "deconv":
        return "a Deconv generator checkpoint (reference DeconvNet layout)"
    if kind == "light":
        return "a LightGenerator checkpoint"
    if kind == "locloc":
        return "a complete LocLoc model (backbone + heads)"
    if kind == "classifier":
        w = sd.get("classifier.0.weight")
        n = f"{w.shape[0]} classes, " if w is not None else ""
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks_mini.")})
        return f"an LFDM classifier checkpoint ({n}{depth} blocks)"
    if kind == "backbone":
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")}) or len(
            {m.group(1) for k in sd if (m := re.search(r"encoder\.layer\.(\d+)\.", k))})
        w = next(v for k, v in sd.items()
                 if k.endswith(("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight")))
        return f"a ViT backbone checkpoint ({w.shape[0]} dims, {depth} blocks, {tuple(w.shape[-2:])} patches)"
    return f"an unrecognized layout (first keys: {', '.join(list(sd)[:3])})"


def remap_state_dict(
    sd: dict[str, Tensor], source: str, model: nn.Module | None = None, rule: str | None = None
) -> dict[str, Tensor]:
    """Map a state dict from ``source`` (one of :data:`SOURCES`) to our module's key layout.

    Backbone sources (``deit``, ``timm``, ``dino``, ``dinov2``, ``hf``; see
    :mod:`locloc.models.layouts`) go to timm keys without heads and, given the ``model`` (a
    :class:`FrozenViT`), get their position grid resampled with the source's own rule
    (``rule`` overrides it) and go through timm's ViT checkpoint filter. The reference heads
    and ``locloc`` files already use our keys.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; choose one of {SOURCES}")
    if source in BACKBONE_SOURCES:
        layout = "timm" if source == "deit" else source
        try:
            sd = to_timm(sd, layout)
        except KeyError as e:
            raise CheckpointError(f"unknown key {e.args[0]!r} for a {layout} backbone layout") from None
        if hasattr(model, "vit"):  # a FrozenViT: fit the timm keys to its ViT
            sd = fit_to_vit(sd, model.vit, rule or POS_EMBED_RULES[layout])
        return sd
    return dict(sd)


def fit_to_vit(sd: dict[str, Tensor], vit: nn.Module, rule: str) -> dict[str, Tensor]:
    """timm-keyed backbone weights fitted to ``vit``: the position grid resampled with ``rule``
    (see :mod:`locloc.models.layouts`), then timm's own filter for patch-embed layouts."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    pe = sd.get("pos_embed")
    own_pe = getattr(vit, "pos_embed", None)
    if pe is not None and own_pe is not None and pe.shape[1] != own_pe.shape[1]:
        prefix = 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)
        try:
            sd = {**sd, "pos_embed": resample_pos_embed(pe, tuple(vit.patch_embed.grid_size), prefix, rule)}
        except ValueError as e:
            raise CheckpointError(f"cannot fit the position embedding {list(pe.shape)} to the model: {e}") from None
    sd = checkpoint_filter_fn(sd, vit)
    own = vit.state_dict()
    # Final norm-like layers the model has but a DINO/headless file may lack stay at init.
    for k in ("fc_norm.weight", "fc_norm.bias"):
        if k in own and k not in sd:
            sd[k] = own[k]
    return sd


def load_strict(model: nn.Module, sd: dict[str, Tensor], what: str, path: str | Path) -> None:
    """Load ``sd`` into ``model`` strictly; on any missing / unexpected / mis-shaped key raise
    :class:`CheckpointError` (first few of each, with counts). Never loads partially."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshaped = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        parts = []
        want, have = detect_kind(own), detect_kind(sd)
        if have != want and have != "unknown":
            parts.append(f"the file looks like {describe_state_dict(sd)}, not a {what} checkpoint")
        if missing:
            parts.append(f"{len(missing)} missing keys ({_show(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_show(unexpected)})")
        if misshaped:
            shapes = [f"{k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}" for k in misshaped]
            parts.append(f"{len(misshaped)} mis-shaped keys ({_show(shapes)})")
        raise CheckpointError(f"{path}: cannot load as {what}: " + "; ".join(parts))
    bad = [k for k in own if own[k].is_floating_point() != sd[k].is_floating_point()]
    if bad:
        raise CheckpointError(f"{path}: cannot load as {what}: wrong dtype for {_show(bad)}")
    model.load_state_dict(sd, strict=True)


def _show(items: list[str]) -> str:
    more = f", ... {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def load_backbone_weights(backbone: FrozenViT, path: str | Path, source: str = "auto") -> str:
    """Load backbone weights strictly: a local file in any layout of
    :mod:`locloc.models.layouts` (DeiT ``{'model': sd}``, DINO, DINOv2, Hugging Face, timm,
    safetensors, a saved LocLoc model) or an opt-in ``hf-hub:ORG/NAME`` name (safetensors,
    through the local Hugging Face cache; see :func:`locloc.models.hub.resolve_weights`).

    Returns the path of the file read.
    """
    from .hub import resolve_weights

    path = resolve_weights(path)
    ck = read_checkpoint(path)
    sd = ck.state_dict
    kind = detect_kind(sd)
    if kind == "locloc":  # reuse the backbone of a saved LocLoc model
        sd = {k[len("backbone.vit."):]: v for k, v in sd.items() if k.startswith("backbone.vit.")}
        kind, source = "backbone", "timm"
    if kind not in ("backbone", "unknown") and not any(k.startswith("backbone.") for k in sd):
        raise CheckpointError(f"{path}: not a backbone checkpoint: the file looks like {describe_state_dict(sd)}")
    if source == "auto":
        source = detect_layout(sd, ck.wrapper, ck.file_kind)
    rule = ck.metadata.get("locloc.pos_embed_rule")
    try:
        sd = remap_state_dict(sd, source, backbone, rule=rule)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    load_strict(backbone.vit, sd, f"backbone {backbone.name}", path)
    stage1 = ck.metadata.get("locloc.stage1")
    if stage1:
        try:
            backbone.stage1 = dict(json.loads(stage1))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise CheckpointError(f"{path}: the 'locloc.stage1' metadata is not a JSON object") from None
        if backbone.stage1.get("attention_blocks"):
            backbone.attention_blocks = tuple(int(b) for b in backbone.stage1["attention_blocks"])
    return str(path)


def save_backbone_file(sd: dict[str, Tensor], out: str | Path, timm_name: str, source: str, rule: str) -> None:
    """Write timm-keyed weights atomically (float32), recording the position-grid resampling
    ``rule`` (:func:`locloc.models.layouts.resample_pos_embed`) in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    meta = {"timm_name": timm_name, "locloc.pos_embed_rule": rule, "locloc.source": source}
    atomic_save(Path(out), lambda tmp: save_file(tensors, tmp, metadata=meta))
