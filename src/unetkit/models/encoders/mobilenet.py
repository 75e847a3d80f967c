"""MobileNetV2 encoder (Sandler et al., CVPR 2018): inverted residuals with linear
bottlenecks, depthwise convolutions and a width multiplier; 2D and 3D."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models.base import Encoder
from unetkit.models.blocks import ConvNormAct
from unetkit.models.layers import LayerSpec

# (expansion t, channels c, repeats n, stride s) of the paper's Table 2, without the 1280-wide
# classification layers.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of `divisor`, never below 90% of `value` (the paper's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion (ratio t) -> depthwise 3x3(x3) (stride s) -> linear 1x1 projection, with an
    identity shortcut when shape allows. (N, in, *S) -> (N, out, *ceil(S / s))."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int, expansion: int,
                 norm: LayerSpec = "batch", act: LayerSpec = "relu6") -> None:
        super().__init__()
        hidden = in_channels * expansion
        steps: list[nn.Module] = []
        if expansion != 1:
            steps.append(ConvNormAct(spatial_dims, in_channels, hidden, 1, norm=norm, act=act))
        steps += [
            ConvNormAct(spatial_dims, hidden, hidden, 3, stride, norm=norm, act=act, groups=hidden),
            ConvNormAct(spatial_dims, hidden, out_channels, 1, norm=norm, act=None),
        ]
        self.block = nn.Sequential(*steps)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetEncoder(Encoder):
    """MobileNetV2 feature pyramid: one level per stride 2, 4, 8, 16, 32 (the last block of each).

    Args:
        width_mult: width multiplier alpha (channels scaled and rounded to multiples of 8).
        depth: number of levels kept (2-5); the deeper inverted-residual groups are dropped.
        settings: (t, c, n, s) rows; default the paper's table.
    (N, in_channels, *S) -> [(N, out_channels[i], *(S / strides[i]))], strides 2, 4, 8, ...;
    sizes must be multiples of 2**depth (SegmentationModel pads them).
    """

    def __init__(self, spatial_dims: int, in_channels: int, width_mult: float = 1.0, depth: int = 5,
                 norm: LayerSpec = "batch", act: LayerSpec = "relu6",
                 settings: Sequence[Sequence[int]] = MOBILENET_V2) -> None:
        super().__init__()
        levels_available = 1 + sum(1 for row in settings if row[3] == 2)
        if not 2 <= depth <= levels_available:
            raise ValueError(f"MobileNetV2 encoder depth must be 2..{levels_available} (one level per stride 2, 4, "
                             f"..., {2 ** levels_available}; a U-Net needs at least two), got {depth}")
        self.spatial_dims = spatial_dims
        prev = make_divisible(32 * width_mult)
        levels: list[list[nn.Module]] = [[ConvNormAct(spatial_dims, in_channels, prev, 3, 2, norm=norm, act=act)]]
        self.out_channels: list[int] = []
        for t, c, n, s in settings:
            if s == 2:
                if len(levels) == depth:
                    break
                self.out_channels.append(prev)
                levels.append([])
            out = make_divisible(c * width_mult)
            for i in range(n):
                levels[-1].append(InvertedResidual(spatial_dims, prev, out, s if i == 0 else 1, t, norm, act))
                prev = out
        self.out_channels.append(prev)
        self.levels = nn.ModuleList(nn.Sequential(*blocks) for blocks in levels)
        self.strides = [2 ** (i + 1) for i in range(len(self.levels))]
        self.size_divisor = self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats

