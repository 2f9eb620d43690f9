"""LFDM classifier (Local Feature Digging Module): backbone token embedding -> class logits."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

if TYPE_CHECKING:
    from .backbone import FrozenViT

__all__ = ["LFDMClassifier"]


class LFDMClassifier(nn.Module):
    """Transformer blocks + class-activation head over the frozen backbone's token embedding.

    ``tokens`` ``B x (P+N) x D`` -> ``depth`` timm Blocks -> LayerNorm (eps 1e-6) -> drop the
    P prefix tokens -> ``B x D x gh x gw`` -> 3x3 conv + ReLU -> class maps (3x3 conv without
    bias, BatchNorm, ReLU; ``B x C x gh x gw``) -> 3x3 average pooling (stride 1, padding 1,
    zero padding counted) -> mean over H, then W -> logits ``B x C`` (all >= 0).

    State-dict keys are the reference ``MiniTransformer``'s: ``blocks_mini.*``,
    ``norm_mini.*``, ``conv.*``, ``classifier.0.weight``, ``classifier.1.*``.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        grid_size: tuple[int, int] | list[int] = (14, 14),
        num_prefix_tokens: int = 1,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
    ):
        super().__init__()
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.config = {
            "num_classes": self.num_classes, "embed_dim": self.embed_dim, "depth": int(depth),
            "num_heads": int(num_heads), "mlp_ratio": float(mlp_ratio), "grid_size": list(self.grid_size),
            "num_prefix_tokens": self.num_prefix_tokens, "qkv_bias": bool(qkv_bias),
            "drop_path_rate": float(drop_path_rate),
            "init_values": None if init_values is None else float(init_values),
        }
        norm = partial(nn.LayerNorm, eps=1e-6)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks_mini = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i],
                  init_values=init_values, act_layer=nn.GELU, norm_layer=norm)
            for i in range(depth)
        ])
        self.norm_mini = norm(embed_dim)
        self.frozen_blocks = 0  # a training-time setting (see freeze_blocks), not part of the config
        self.conv = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.classifier = nn.Sequential(
            nn.Conv2d(embed_dim, num_classes, 3, padding=1, bias=False),
            nn.BatchNorm2d(num_classes),
            nn.ReLU(inplace=True),
        )

    def forward_cams(self, tokens: Tensor) -> Tensor:
        """Token embedding ``B x (P+N) x D`` -> class activation maps ``B x C x gh x gw`` (>= 0)."""
        k = self.frozen_blocks
        if k:
            with torch.no_grad():  # no activations kept for the frozen prefix
                tokens = self.blocks_mini[:k](tokens)
        x = self.norm_mini(self.blocks_mini[k:](tokens))[:, self.num_prefix_tokens :]
        B, N, D = x.shape
        gh, gw = self.grid_size
        if N != gh * gw:
            raise ValueError(f"LFDMClassifier: {N} patch tokens do not fill its {gh}x{gw} grid")
        x = x.transpose(1, 2).reshape(B, D, gh, gw)
        return self.classifier(F.relu(self.conv(x)))

    def forward(self, tokens: Tensor) -> Tensor:
        """Token embedding ``B x (P+N) x D`` -> logits ``B x C``."""
        cams = F.avg_pool2d(self.forward_cams(tokens), 3, stride=1, padding=1, count_include_pad=True)
        return cams.mean(2).mean(2)

    def freeze_blocks(self, k: int) -> None:
        """Keep the first ``k`` blocks fixed (no gradients, run under ``no_grad``); ``0`` undoes it.

        With the blocks copied from a frozen backbone this trains only the last blocks and the
        head: the same model at inference, a fraction of the training cost for a deep backbone.
        """
        depth = len(self.blocks_mini)
        if not 0 <= k < depth:
            raise ValueError(f"LFDMClassifier: can freeze 0..{depth - 1} of its {depth} blocks, got {k}")
        for i, blk in enumerate(self.blocks_mini):
            blk.requires_grad_(i >= k)
        self.frozen_blocks = int(k)

    def init_from_backbone(self, backbone: FrozenViT) -> None:
        """Copy the backbone's first ``depth`` blocks and its final norm (blocks -> blocks_mini,
        norm -> norm_mini); the conv head keeps its init."""
        vit = backbone.vit
        depth = len(self.blocks_mini)
        if depth > len(vit.blocks):
            raise ValueError(f"LFDMClassifier has {depth} blocks, the backbone only {len(vit.blocks)}")
        for mine, theirs in zip(self.blocks_mini, vit.blocks[:depth], strict=True):
            mine.load_state_dict(theirs.state_dict())
        self.norm_mini.load_state_dict(vit.norm.state_dict())
