"""ResNet bottleneck encoder (He et al., CVPR 2016), 2D and 3D: the CNN stem of TransUNet's
R50-ViT hybrid, and an encoder of its own for any decoder."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import Encoder
from unetkit.models.blocks import ConvNormAct
from unetkit.models.layers import LayerSpec


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3(x3) (stride) -> 1x1 expand, plus a (projected) shortcut, then act.
    (N, in, *S) -> (N, out, *ceil(S / stride))."""

    def __init__(self, spatial_dims: int, in_channels: int, mid_channels: int, out_channels: int,
                 stride: int = 1, norm: LayerSpec = "batch", act: LayerSpec = "relu") -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(spatial_dims, in_channels, mid_channels, 1, norm=norm, act=act),
            ConvNormAct(spatial_dims, mid_channels, mid_channels, 3, stride, norm=norm, act=act),
            ConvNormAct(spatial_dims, mid_channels, out_channels, 1, norm=norm, act=None),
        )
        self.shortcut = (ConvNormAct(spatial_dims, in_channels, out_channels, 1, stride, norm=norm, act=None)
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.act = layers.make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNetEncoder(Encoder):
    """7x7 stride-2 stem, 3x3 stride-2 max-pool, then bottleneck stages of `blocks[i]` blocks,
    `4 * width * 2**i` channels out, stride 2 from the second stage on.

    (N, in_channels, *S) -> [stem (width, S/2), stage 1 (4 width, S/4), stage 2 (S/8), ...].
    Defaults: the three stages (3, 4, 9) of the R50 in TransUNet's R50-ViT-B/16 hybrid;
    blocks=(3, 4, 6, 3) is ResNet-50.
    """

    def __init__(self, spatial_dims: int, in_channels: int, blocks: Sequence[int] = (3, 4, 9), width: int = 64,
                 norm: LayerSpec = "batch", act: LayerSpec = "relu") -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.stem = ConvNormAct(spatial_dims, in_channels, width, 7, 2, norm=norm, act=act)
        self.pool = layers.max_pool(spatial_dims)(3, stride=2, padding=1)
        stages, prev = [], width
        for i, n in enumerate(blocks):
            mid, out = width * 2**i, 4 * width * 2**i
            stages.append(nn.Sequential(*(
                Bottleneck(spatial_dims, prev if j == 0 else out, mid, out, 2 if (i > 0 and j == 0) else 1, norm, act)
                for j in range(n))))
            prev = out
        self.stages = nn.ModuleList(stages)
        self.out_channels = [width] + [4 * width * 2**i for i in range(len(blocks))]
        self.strides = [2] + [2 ** (i + 2) for i in range(len(blocks))]
        self.size_divisor = self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        x = self.pool(feats[0])
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
