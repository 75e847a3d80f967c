"""ResNet bottleneck encoder (He et al., CVPR 2016), 2D and 3D: the CNN stem of TransUNet's
R50-ViT hybrid, and an encoder of its own for any decoder.

Two styles share one structure and one set of parameter names (mapped from the published
checkpoints in `unetkit.models.pretrained`):
  'torchvision': plain convs + batch norm (torchvision's ResNet-50, v1.5: stride on the 3x3);
  'bit':         weight-standardised convs + GroupNorm(32) (Kolesnikov et al., "Big Transfer"),
                 the R50 of the published R50+ViT-B_16 that TransUNet starts from.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.base import Encoder
from unetkit.models.layers import LayerSpec

STYLES = ("torchvision", "bit")


class StdConv(nn.Module):
    """Weight-standardised convolution (Qiao et al. 2019; BiT): each output filter's weights
    are shifted to mean 0 and scaled to variance 1 before the convolution (eps 1e-5, as
    TransUNet's `StdConv2d`). Dimension-generic, bias-free; one parameter, `weight`, shaped as
    the plain convolution's."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        conv = layers.conv(spatial_dims)(in_channels, out_channels, kernel_size, bias=False)
        self.weight = conv.weight  # the plain conv's initialisation and shape
        self.spatial_dims, self.stride, self.padding = spatial_dims, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=list(range(1, w.dim())), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-5)
        return getattr(F, f"conv{self.spatial_dims}d")(x, w, None, self.stride, self.padding)


def _conv(style: str, spatial_dims: int, cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
    if style == "bit":
        return StdConv(spatial_dims, cin, cout, k, stride, padding=k // 2)
    return layers.conv(spatial_dims)(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _norm(style: str, norm: LayerSpec, spatial_dims: int, channels: int, projection: bool = False) -> nn.Module:
    if style == "bit":  # TransUNet: GroupNorm(32, eps 1e-6) (fewer groups for narrow test widths);
        # the projection's norm per channel
        return nn.GroupNorm(channels, channels) if projection else \
            nn.GroupNorm(layers.group_count(channels, 32), channels, eps=1e-6)
    return layers.make_norm(norm, spatial_dims, channels)


class Bottleneck(nn.Module):
    """conv1 1x1 reduce -> conv2 3x3(x3) (stride) -> conv3 1x1 expand, each followed by its norm,
    plus a (projected: proj_conv + proj_norm) shortcut, then act.
    (N, in, *S) -> (N, out, *ceil(S / stride))."""

    def __init__(self, spatial_dims: int, in_channels: int, mid_channels: int, out_channels: int,
                 stride: int = 1, norm: LayerSpec = "batch", act: LayerSpec = "relu",
                 style: str = "torchvision") -> None:
        super().__init__()
        self.conv1 = _conv(style, spatial_dims, in_channels, mid_channels, 1)
        self.norm1 = _norm(style, norm, spatial_dims, mid_channels)
        self.conv2 = _conv(style, spatial_dims, mid_channels, mid_channels, 3, stride)
        self.norm2 = _norm(style, norm, spatial_dims, mid_channels)
        self.conv3 = _conv(style, spatial_dims, mid_channels, out_channels, 1)
        self.norm3 = _norm(style, norm, spatial_dims, out_channels)
        self.act = layers.make_act(act)
        self.projected = stride != 1 or in_channels != out_channels
        if self.projected:
            self.proj_conv = _conv(style, spatial_dims, in_channels, out_channels, 1, stride)
            self.proj_norm = _norm(style, norm, spatial_dims, out_channels, projection=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj_norm(self.proj_conv(x)) if self.projected else x
        y = self.act(self.norm1(self.conv1(x)))
        y = self.act(self.norm2(self.conv2(y)))
        return self.act(self.norm3(self.conv3(y)) + shortcut)


class ResNetEncoder(Encoder):
    """7x7 stride-2 stem (conv, norm, act), 3x3 stride-2 max-pool, then bottleneck stages of
    `blocks[i]` blocks, `4 * width * 2**i` channels out, stride 2 from the second stage on.

    (N, in_channels, *S) -> [stem (width, S/2), stage 1 (4 width, S/4), stage 2 (S/8), ...].
    Defaults: the three stages (3, 4, 9) of the R50 in TransUNet's R50-ViT-B/16 hybrid;
    blocks=(3, 4, 6, 3) is ResNet-50. `style`: 'torchvision' or 'bit' (see the module).
    With style 'bit' and one input channel the stem takes the image repeated to 3 channels, as
    TransUNet does, so the published RGB stem applies exactly. The max-pool pads by 1 (any size
    works); TransUNet's pads by 0 and zero-pads the skips back to size instead.
    """

    def __init__(self, spatial_dims: int, in_channels: int, blocks: Sequence[int] = (3, 4, 9), width: int = 64,
                 norm: LayerSpec = "batch", act: LayerSpec = "relu", style: str = "torchvision") -> None:
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"resnet style must be one of {STYLES}, got '{style}'")
        self.spatial_dims = spatial_dims
        self.style = style
        self.repeat_input = style == "bit" and in_channels == 1
        stem_in = 3 if self.repeat_input else in_channels
        self.stem_conv = _conv(style, spatial_dims, stem_in, width, 7, 2)
        self.stem_norm = _norm(style, norm, spatial_dims, width)
        self.act = layers.make_act(act)
        self.pool = layers.max_pool(spatial_dims)(3, stride=2, padding=1)
        stages, prev = [], width
        for i, n in enumerate(blocks):
            mid, out = width * 2**i, 4 * width * 2**i
            stages.append(nn.Sequential(*(
                Bottleneck(spatial_dims, prev if j == 0 else out, mid, out, 2 if (i > 0 and j == 0) else 1, norm, act,
                           style)
                for j in range(n))))
            prev = out
        self.stages = nn.ModuleList(stages)
        self.out_channels = [width] + [4 * width * 2**i for i in range(len(blocks))]
        self.strides = [2] + [2 ** (i + 2) for i in range(len(blocks))]
        self.size_divisor = self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.repeat_input:
            x = x.expand(-1, 3, *x.shape[2:])
        feats = [self.act(self.stem_norm(self.stem_conv(x)))]
        x = self.pool(feats[0])
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
