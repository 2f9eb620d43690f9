"""Small ViTs for the embedded default, registered with timm so they build by name.

``locloc_vit_tiny_cs8`` is a 4-block, 128-wide ViT with a convolutional stem (three stride-2
3x3 convolutions instead of one 8x8 patchify convolution). Early convolutions make a ViT
trainable from scratch on a few hundred images in minutes on a CPU (Xiao et al., "Early
Convolutions Help Transformers See Better", NeurIPS 2021), which is what the demo needs:
it stands in for the ImageNet-pretrained DeiT-S that cannot be downloaded here. Everything
downstream (CLS attention, token embedding, patch tokens) is a standard timm
``VisionTransformer``, so :class:`~locloc.models.backbone.FrozenViT` treats it like DeiT-S.
"""

from __future__ import annotations

import math
from typing import Any

from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["ConvStemPatchEmbed", "locloc_vit_tiny_cs8"]


class ConvStemPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` whose projection is a stride-2 conv stem (patch size a power of 2).

    ``proj`` becomes ``log2(patch)`` blocks of 3x3 stride-2 conv + BatchNorm + ReLU (widths
    D/4, D/2, D, ...) followed by a 1x1 conv to D; grid size and flattening are timm's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dim = self.proj.out_channels
        in_chans = self.proj.in_channels
        p = self.patch_size[0]
        if p != self.patch_size[1] or p < 2 or p & (p - 1):
            raise ValueError(f"conv stem needs a square power-of-2 patch size, got {self.patch_size}")
        layers: list[nn.Module] = []
        c, w = in_chans, max(dim // 4, 8)
        for _ in range(int(math.log2(p))):
            layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c, w = w, min(w * 2, dim)
        layers.append(nn.Conv2d(c, dim, 1))
        self.proj = nn.Sequential(*layers)
        self.proj.in_channels = in_chans  # read by FrozenViT for the data config
        self.proj.out_channels = dim


def _vit(pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> VisionTransformer:
    if pretrained:
        raise ValueError("locloc zoo models have no downloadable weights; pass a local weights file")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm factory extras
        kwargs.pop(k, None)
    cfg = {**defaults, **kwargs}
    return VisionTransformer(embed_layer=ConvStemPatchEmbed, **cfg)


@register_model
def locloc_vit_tiny_cs8(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Conv-stem ViT: 112 px input, 8 px patches (14 x 14 grid like DeiT-S/16 at 224),
    width 128, 4 blocks, 4 heads (~0.9 M parameters)."""
    return _vit(pretrained, dict(img_size=112, patch_size=8, embed_dim=128, depth=4, num_heads=4), **kwargs)
