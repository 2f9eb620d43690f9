"""Localization-map generators (GEG): feature map ``B x D x gh x gw`` -> map ``B x 1 x h x w``.

- :class:`UNetGenerator`: the reference ``UnetNet`` (same state-dict keys, loads reference
  checkpoints strictly, same numbers); sigmoid map at 8x the grid (14 -> 112).
- :class:`DeconvGenerator`: the reference ``DeconvNet``; raw (no sigmoid) map at 4x the grid.
- :class:`LightGenerator`: the project's own cheaper generator for models trained here: a
  correctly wired UNet trunk and a narrow transposed-conv head; sigmoid map at 8x the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GENERATORS",
    "DeconvGenerator",
    "LightGenerator",
    "UNetGenerator",
    "UNetTrunk",
    "build_generator",
]


class UConvBlock(nn.Module):
    """Two (3x3 conv without bias, BatchNorm, LeakyReLU) layers; keys ``UConv.{0,1,3,4}``."""

    def __init__(self, in_channels: int, out_channels: int, slope: float = 0.01):
        super().__init__()
        self.UConv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(slope, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(slope, inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.UConv(x)


class UpStage(nn.Module):
    """Bilinear upsampling of ``low`` to the size of ``skip``, concat ``[skip, up]``, double conv.

    On a 14x14 input the sizes are those of the reference rule: 1 px -> 3, 3 px -> 7, 7 -> 14.
    """

    def __init__(self, in_channels: int, out_channels: int, slope: float = 0.01):
        super().__init__()
        self.conv = UConvBlock(in_channels, out_channels, slope)

    def forward(self, low: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, up], dim=1))


class UNetTrunk(nn.Module):
    """The reference UNet (``att_layer4``): 3 down stages (MaxPool2d(2) + double conv) and 3 up
    stages, ``B x in_channels x gh x gw`` -> ``B x out_channels x gh x gw``.

    Channels: downs ``2c, 4c, 8c`` (c = ``c_base``), ups ``4c``, ``3c``, ``out_channels``.

    ``reference_wiring=True`` reproduces the reference forward, where ``up_1``'s output is
    thrown away and ``up_2`` consumes the third down stage's output: ``down_3`` and ``up_1``
    then do not influence the result, so they are kept (for strict loading) but not run.
    ``reference_wiring=False`` is the usual UNet ``up_2(up_1(x4, x3), x2)``;
    ``ceil_mode=True`` lets it run on grids too small for three floor poolings.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 200,
        c_base: int = 4,
        slope: float = 0.01,
        reference_wiring: bool = True,
        ceil_mode: bool = False,
    ):
        super().__init__()
        c1, c2, c3 = 2 * c_base, 4 * c_base, 8 * c_base
        u2 = (c1 + c2) // 2
        self.reference_wiring = reference_wiring
        self.down_1 = nn.Sequential(nn.MaxPool2d(2, ceil_mode=ceil_mode), UConvBlock(in_channels, c1, slope))
        self.down_2 = nn.Sequential(nn.MaxPool2d(2, ceil_mode=ceil_mode), UConvBlock(c1, c2, slope))
        self.down_3 = nn.Sequential(nn.MaxPool2d(2, ceil_mode=ceil_mode), UConvBlock(c2, c3, slope))
        self.up_1 = UpStage(c3 + c2, c2, slope)
        self.up_2 = UpStage(c2 + c1, u2, slope)
        self.up_3 = UpStage(in_channels + u2, out_channels, slope)

    def forward(self, x: Tensor) -> Tensor:
        x2 = self.down_1(x)
        x3 = self.down_2(x2)
        if not self.reference_wiring:
            x3 = self.up_1(self.down_3(x3), x3)
        return self.up_3(self.up_2(x3, x2), x)


def _deconv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UNetGenerator(nn.Module):
    """Reference GEG generator (``UnetNet``): ``B x D x gh x gw`` -> sigmoid map ``B x 1 x 8gh x 8gw``.

    UNet trunk to ``mid_channels``, then three 4x4 stride-2 transposed convs (no bias) + BN +
    ReLU to ``head_channels``, a 3x3 conv (no bias) to 1 channel, BN and sigmoid.
    """

    upsample_factor = 8
    applies_sigmoid = True

    def __init__(self, in_channels: int = 384, mid_channels: int = 200, head_channels: int = 256, c_base: int = 4):
        super().__init__()
        self.config = {"in_channels": in_channels, "mid_channels": mid_channels,
                       "head_channels": head_channels, "c_base": c_base}
        self.att_layer4 = UNetTrunk(in_channels, mid_channels, c_base, reference_wiring=True)
        self.up1 = nn.ConvTranspose2d(mid_channels, head_channels, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(head_channels)
        self.up2 = nn.ConvTranspose2d(head_channels, head_channels, 4, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.up3 = nn.ConvTranspose2d(head_channels, head_channels, 4, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(head_channels)
        self.att_conv2 = nn.Conv2d(head_channels, 1, 3, padding=1, bias=False)
        self.bn_att2 = nn.BatchNorm2d(1)

    def forward(self, feat: Tensor) -> Tensor:
        x = self.att_layer4(feat)
        x = F.relu(self.bn1(self.up1(x)))
        x = F.relu(self.bn2(self.up2(x)))
        x = F.relu(self.bn3(self.up3(x)))
        return torch.sigmoid(self.bn_att2(self.att_conv2(x)))


class DeconvGenerator(nn.Module):
    """Reference ``DeconvNet``: ``B x D x gh x gw`` -> raw map ``B x 1 x 4gh x 4gw`` (no sigmoid).

    3x3 conv (no bias) to ``hidden_channels`` + BN + ReLU + MaxPool(3, 2, 1), three 4x4
    stride-2 transposed convs (no bias) + BN + ReLU, a 1x1 conv with bias.
    """

    upsample_factor = 4
    applies_sigmoid = False

    def __init__(self, in_channels: int = 384, hidden_channels: int = 2048, deconv_channels: int = 256):
        super().__init__()
        self.config = {"in_channels": in_channels, "hidden_channels": hidden_channels,
                       "deconv_channels": deconv_channels}
        self.conv0 = nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(hidden_channels)
        d = deconv_channels
        self.deconv_layers = nn.Sequential(
            *_deconv_bn_relu(hidden_channels, d), *_deconv_bn_relu(d, d), *_deconv_bn_relu(d, d)
        )
        self.final_layer = nn.Conv2d(d, 1, 1)

    def forward(self, feat: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn0(self.conv0(feat))), 3, stride=2, padding=1)
        return self.final_layer(self.deconv_layers(x))


class LightGenerator(nn.Module):
    """The project's cheap generator: ``B x D x gh x gw`` -> sigmoid map ``B x 1 x 8gh x 8gw``.

    A correctly wired UNet trunk (all stages used, ceil pooling so any grid works) to
    ``mid_channels``, then three transposed convs with ``head_channels`` (narrowing), a 3x3
    conv to 1 channel, BN and sigmoid.
    """

    upsample_factor = 8
    applies_sigmoid = True

    def __init__(
        self,
        in_channels: int = 384,
        mid_channels: int = 64,
        head_channels: Sequence[int] = (64, 32, 16),
        c_base: int = 4,
    ):
        super().__init__()
        head_channels = [int(c) for c in head_channels]
        if len(head_channels) != 3:
            raise ValueError("LightGenerator: head_channels needs 3 entries (one per 2x upsampling)")
        self.config = {"in_channels": in_channels, "mid_channels": mid_channels,
                       "head_channels": head_channels, "c_base": c_base}
        self.trunk = UNetTrunk(in_channels, mid_channels, c_base, reference_wiring=False, ceil_mode=True)
        layers: list[nn.Module] = []
        cin = mid_channels
        for c in head_channels:
            layers += _deconv_bn_relu(cin, c)
            cin = c
        layers += [nn.Conv2d(cin, 1, 3, padding=1, bias=False), nn.BatchNorm2d(1)]
        self.head = nn.Sequential(*layers)

    def forward(self, feat: Tensor) -> Tensor:
        return torch.sigmoid(self.head(self.trunk(feat)))


GENERATORS: dict[str, type[nn.Module]] = {
    "unet": UNetGenerator,
    "deconv": DeconvGenerator,
    "light": LightGenerator,
}


def build_generator(kind: str, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build a generator by name (``unet`` | ``deconv`` | ``light``) for ``in_channels`` features."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator type {kind!r}; choose one of {sorted(GENERATORS)}")
    return GENERATORS[kind](in_channels=in_channels, **kwargs)
