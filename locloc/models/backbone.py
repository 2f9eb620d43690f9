"""Frozen ViT backbone over any timm Vision Transformer.

One pass gives the three things LocLoc needs from the backbone:

- ``tokens``: the token embedding before the first block (prefix tokens + patches, position
  embedding added), ``B x (P+N) x D``; the LFDM classifier's input;
- ``patch_tokens``: the last block's output without prefix tokens and *before* the final
  norm, ``B x N x D``; the generator's input (after :func:`patch_map`);
- ``attention`` (on request): the softmax attention row of the CLS query over the patches,
  ``B x heads x N``, of the last block (or the mean over ``attention_blocks``); the GrabCut
  trimap's source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["BackboneOutput", "FrozenViT", "build_backbone", "cls_attention", "default_attention_blocks", "patch_map"]


@dataclass
class BackboneOutput:
    """Outputs of :meth:`FrozenViT.forward` (shapes for a batch of B images)."""

    tokens: Tensor  # B x (P+N) x D, before the first block
    patch_tokens: Tensor  # B x N x D, last block output, no prefix tokens, no final norm
    attention: Tensor | None  # B x heads x N, CLS -> patch attention (last block, or attention_blocks' mean)


class FrozenViT(nn.Module):
    """A timm VisionTransformer, frozen and always in eval mode.

    Sizes are read from the model: ``embed_dim``, ``num_heads``, ``grid_size`` (gh, gw),
    ``num_prefix_tokens``, ``patch_size``, ``img_size``; ``data_config`` holds timm's
    resolved ``mean``, ``std`` and ``input_size``.
    """

    def __init__(self, vit: nn.Module, name: str = "", timm_kwargs: dict[str, Any] | None = None):
        super().__init__()
        for attr in ("patch_embed", "blocks", "_pos_embed", "norm_pre"):
            if not hasattr(vit, attr):
                raise ConfigError(
                    f"backbone {name or type(vit).__name__!r} is not a timm VisionTransformer "
                    f"(it has no {attr!r}); use a ViT such as deit_small_patch16_224"
                )
        self.vit = vit
        self.name = name
        self.timm_kwargs = dict(timm_kwargs or {})
        self.embed_dim = int(vit.embed_dim)
        self.num_heads = int(vit.blocks[-1].attn.num_heads)
        self.grid_size = tuple(int(g) for g in vit.patch_embed.grid_size)
        self.patch_size = tuple(int(p) for p in vit.patch_embed.patch_size)
        self.img_size = tuple(int(s) for s in vit.patch_embed.img_size)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.has_class_token = getattr(vit, "cls_token", None) is not None
        self.data_config = dict(resolve_model_data_config(vit))
        # timm reports the pretrained config's size; the model may have been built for another
        self.data_config["input_size"] = (int(vit.patch_embed.proj.in_channels), *self.img_size)
        # blocks whose CLS attention is averaged (indices, negative from the end); stage 1 may
        # choose others (locloc masks --attention-blocks)
        self.attention_blocks: tuple[int, ...] = default_attention_blocks(name)
        # stage-1 defaults that came with the weights file (``locloc.stage1`` metadata:
        # ``{"trimap": {...}, "attention_blocks": [...]}``); {} for files without them
        self.stage1: dict[str, Any] = {}
        self.requires_grad_(False)
        super().train(False)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def train(self, mode: bool = True) -> FrozenViT:
        """The backbone stays in eval mode whatever the caller asks."""
        return super().train(False)

    def embed(self, x: Tensor) -> Tensor:
        """Images ``B x 3 x H x W`` -> token embedding ``B x (P+N) x D`` (before any block)."""
        v = self.vit
        x = v.patch_embed(x)
        x = v._pos_embed(x)
        x = v.patch_drop(x)
        return v.norm_pre(x)

    @torch.no_grad()
    def forward(self, x: Tensor, with_attention: bool = False) -> BackboneOutput:
        """Run the frozen ViT on normalized images ``B x 3 x H x W``.

        Returns :class:`BackboneOutput`; ``attention`` is None unless ``with_attention``.
        """
        tokens = self.embed(x)
        blocks = self.vit.blocks
        want = self.attention_block_ids() if with_attention else set()
        h = tokens
        rows = []
        for i, blk in enumerate(blocks):
            if i in want:
                rows.append(self.cls_attention(blk, h))
            h = blk(h)
        attention = torch.stack(rows).mean(0) if rows else None
        return BackboneOutput(tokens, h[:, self.num_prefix_tokens :], attention)

    def attention_block_ids(self) -> set[int]:
        """``attention_blocks`` as non-negative block indices; ConfigError if out of range."""
        depth = len(self.vit.blocks)
        ids = {b % depth for b in self.attention_blocks}
        if any(not -depth <= b < depth for b in self.attention_blocks):
            raise ConfigError(f"attention blocks {list(self.attention_blocks)}: the backbone has {depth} blocks")
        return ids

    def cls_attention(self, block: nn.Module, x: Tensor) -> Tensor:
        """Softmax attention of the CLS query in ``block`` for its input ``x``: ``B x heads x N``.

        Computed from the block's own ``norm1`` and ``attn`` weights, so timm's fused
        attention path stays untouched. Prefix-token columns are dropped, so each head's
        row sums to at most 1.
        """
        if not self.has_class_token:
            raise ConfigError(f"backbone {self.name!r} has no class token: no CLS attention")
        if not hasattr(block.attn, "qkv"):
            raise ConfigError(f"backbone {self.name!r}: attention without a fused qkv is not supported")
        return cls_attention(block, x, self.num_prefix_tokens)


def cls_attention(block: nn.Module, x: Tensor, num_prefix_tokens: int) -> Tensor:
    """Softmax attention row of token 0 (CLS) over the patches in a timm ``Block`` with a
    fused ``qkv``, for the block's input ``x`` (``B x T x D``): ``B x heads x (T - P)``."""
    attn = block.attn
    y = block.norm1(x)
    B, T, _ = y.shape
    qkv = attn.qkv(y).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])  # q: B x h x 1 x hd
    scores = (q * attn.scale) @ k.transpose(-2, -1)  # B x h x 1 x T
    return F.softmax(scores, dim=-1)[:, :, 0, num_prefix_tokens:]


def default_attention_blocks(name: str) -> tuple[int, ...]:
    """The CLS-attention source stage 1 uses by default for a backbone family.

    The paper (and DeiT / DINO ViT-S/16) use the last block. For DINOv2-family ViTs
    (``*dinov2*``) the mean of the last two blocks: measured with a real DINOv2-family ViT-S/14
    at 224 px, default trimap, GrabCut box IoU >= 0.5 (``benchmarks/grid_attention.py``):

    =================  ==================  ==============================
    blocks             7 real photos       120 synthetic training images
    =================  ==================  ==============================
    last (-1)          6/7 (rocket 0.00)   0.575
    -2                 6/7                 0.650
    -2, -1 (default)   7/7 (rocket 0.60)   0.625
    -3, -2, -1         7/7                 0.567
    -4 .. -1           7/7                 0.533
    =================  ==================  ==============================

    On the rocket photo the last block's CLS attention piles onto the bright pad lights at
    the bottom edge (normal-norm tokens there: not the high-norm artifacts of DINOv2 without
    registers), the block before it still follows the rocket.
    """
    return (-2, -1) if "dinov2" in name else (-1,)


def patch_map(patch_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch tokens ``B x N x D`` (row-major grid) -> feature map ``B x D x gh x gw``."""
    B, N, D = patch_tokens.shape
    gh, gw = grid
    if N != gh * gw:
        raise ValueError(f"patch_map: {N} tokens do not fill a {gh}x{gw} grid")
    return patch_tokens.transpose(1, 2).reshape(B, D, gh, gw)


def build_backbone(
    name: str = "deit_small_patch16_224",
    weights: str | Path | None = None,
    **timm_kwargs: Any,
) -> FrozenViT:
    """Build a frozen timm ViT by name; load ``weights`` from a local file if given.

    ``weights`` may be an official DeiT file (``{'model': sd}``, head dropped), a DINO file
    (plain state dict, teacher/student wrappers accepted), or a timm / safetensors file.
    ``weights=None`` keeps timm's random init (tests). Nothing is ever downloaded.
    """
    kwargs = dict(timm_kwargs)
    kwargs.pop("pretrained", None)
    if "checkpoint_path" in kwargs:  # timm would load it, bypassing the strict loader
        raise ConfigError(
            f"backbone {name!r}: the timm argument 'checkpoint_path' is not accepted; pass the "
            "file as the backbone weights (--weights) instead"
        )
    kwargs.setdefault("num_classes", 0)
    try:
        vit = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot build backbone {name!r} with {timm_kwargs}: {e}") from None
    backbone = FrozenViT(vit, name=name, timm_kwargs=timm_kwargs)
    if weights is not None:
        from .weights import load_backbone_weights

        load_backbone_weights(backbone, weights)
    return backbone
