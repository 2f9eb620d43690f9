"""Backbone weight layouts users hold, mapped onto timm's ``VisionTransformer`` keys.

Each layout has one converter to timm keys and one position-embedding resampling rule, the
rule its own code applies when the input size changes (so a file resampled here matches what
its original code computes at that size):

============  ==============================================  ==================================
layout        where the file comes from                       resampling of the position grid
============  ==============================================  ==================================
``timm``      timm / DeiT official (``{'model': sd}``), our   timm's: bicubic, antialiased
              own safetensors files
``dino``      DINO v1 (``dino_deitsmall16_pretrain.pth``,     DINO's ``interpolate_pos_encoding``:
              training checkpoints' ``teacher``)              bicubic, ``scale_factor=(n+0.1)/N``
``dinov2``    DINOv2 original (``dinov2_vits14_pretrain``:    same as DINO (offset 0.1, no
              ``mask_token``, ``register_tokens``)            antialias), as its hub models do
``hf``        Hugging Face ``transformers`` (``Dinov2Model``,  HF's: bicubic to the new size,
              ``ViTModel``, ``DeiTModel``: ``embeddings.*``,  ``align_corners=False``, no
              ``encoder.layer.N.*``), and ONNX exports of them antialias
============  ==============================================  ==================================

A file may also name its rule in safetensors metadata (``locloc.pos_embed_rule``), as the
ONNX importer's output does.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LAYOUTS",
    "POS_EMBED_RULES",
    "detect_layout",
    "hf_to_timm",
    "resample_pos_embed",
    "to_timm",
]

LAYOUTS = ("timm", "dino", "dinov2", "hf")
POS_EMBED_RULES = {"timm": "timm", "dino": "dino", "dinov2": "dino", "hf": "hf"}
_HF_PREFIXES = ("dinov2.", "vit.", "deit.", "backbone.")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# per-block HF names -> timm names (Dinov2Model and ViTModel / DeiTModel spellings)
_HF_BLOCK = {
    "norm1": "norm1", "layernorm_before": "norm1",
    "norm2": "norm2", "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_DROP = ("embeddings.mask_token", "pooler.", "classifier.", "cls_classifier.", "distillation_classifier.")


def _strip_hf_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    for p in _HF_PREFIXES:
        if any(k.startswith(p + "embeddings.") for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def detect_layout(sd: dict[str, Tensor], wrapper: str | None = None, file_kind: str = "pickle") -> str:
    """Guess the layout of a backbone state dict (see the module table).

    ``wrapper`` is the key the dict was found under (``model``, ``teacher``, ...), ``file_kind``
    ``pickle`` or ``safetensors``. A plain pickled dict without a classification head is taken
    as DINO v1 (its released files are exactly that); DeiT's ``{'model': sd}`` and safetensors
    files as timm.
    """
    keys = set(_strip_hf_prefix(sd))
    if any(k.startswith("embeddings.") for k in keys) and any(_HF_LAYER.match(k) for k in keys):
        return "hf"
    if "mask_token" in keys or "register_tokens" in keys:
        return "dinov2"
    if wrapper in ("teacher", "student") or any(k.startswith("backbone.") for k in sd):
        return "dino"
    if file_kind == "pickle" and wrapper is None and not any(k.startswith("head") for k in keys):
        return "dino"
    return "timm"


def hf_to_timm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face ``Dinov2Model`` / ``ViTModel`` / ``DeiTModel`` state dict -> timm keys.

    ``query``/``key``/``value`` are stacked into ``attn.qkv``; the mask token, pooler and
    classification heads are dropped. Raises ``KeyError`` naming an unknown key.
    """
    sd = _strip_hf_prefix(sd)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for k, v in sd.items():
        if k.startswith(_HF_DROP):
            continue
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
            continue
        m = _HF_LAYER.match(k)
        if m is None:
            raise KeyError(k)
        n, rest = int(m.group(1)), m.group(2)
        att = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if att:
            qkv.setdefault((n, att.group(2)), {})[att.group(1)] = v
            continue
        param = rest.rsplit(".", 1)
        if rest.endswith(".lambda1"):
            mod, name = rest, ""
        elif len(param) == 2:
            mod, name = param
        else:
            raise KeyError(k)
        target = _HF_BLOCK.get(mod)
        if target is None:
            raise KeyError(k)
        out[f"blocks.{n}.{target}" + (f".{name}" if name else "")] = v
    for (n, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise KeyError(f"encoder.layer.{n}.attention.attention.*.{kind} (q, k and v must all be present)")
        out[f"blocks.{n}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    if "reg_token" in out and "pos_embed" in out:
        # HF registers sit after CLS and take no position; timm's no_embed_class layout:
        # the CLS position folds into the CLS token, the grid keeps the rest
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


def to_timm(sd: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Convert ``sd`` from ``layout`` to timm keys (heads dropped; grid not yet resampled)."""
    if layout == "hf":
        return hf_to_timm(sd)
    if layout == "dino":
        sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    if layout == "dinov2":
        sd = dict(sd)
        sd.pop("mask_token", None)
        if "register_tokens" in sd:
            sd["reg_token"] = sd.pop("register_tokens")
            sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
            sd["pos_embed"] = sd["pos_embed"][:, 1:]
    return {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dist."))}


def resample_pos_embed(
    pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int, rule: str
) -> Tensor:
    """Resample a ``1 x (P + N) x D`` position embedding (square N-token grid) to ``new_grid``.

    ``rule`` is ``timm`` (bicubic, antialiased: timm's default), ``hf`` (bicubic to the new
    size, ``align_corners=False``, no antialias) or ``dino`` (bicubic with
    ``scale_factor = (new + 0.1) / old``, no antialias). The first ``num_prefix_tokens`` rows
    are kept as they are. Returns the input unchanged when the grid already matches.
    """
    if rule not in ("timm", "hf", "dino"):
        raise ValueError(f"unknown position-embedding rule {rule!r}; choose timm, hf or dino")
    n = pos_embed.shape[1] - num_prefix_tokens
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"position embedding of {n} grid tokens is not a square grid")
    gh, gw = (int(g) for g in new_grid)
    if (gh, gw) == (side, side):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    dtype = grid.dtype
    x = grid.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if rule == "timm":
        x = F.interpolate(x, size=(gh, gw), mode="bicubic", antialias=True)
    elif rule == "hf":
        x = F.interpolate(x, size=(gh, gw), mode="bicubic", align_corners=False, antialias=False)
    else:
        x = F.interpolate(x, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic",
                          align_corners=False, antialias=False)
        if tuple(x.shape[-2:]) != (gh, gw):
            raise ValueError(f"DINO resampling gave a {tuple(x.shape[-2:])} grid, expected {(gh, gw)}")
    x = x.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(dtype)
    return torch.cat([prefix, x], dim=1)
