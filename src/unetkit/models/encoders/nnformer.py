"""nnFormer encoder (Zhou et al. 2021, "nnFormer: Interleaved Transformer for Volumetric
Segmentation"): convolutional embedding, local volume-based self-attention (LV-SA) stages,
convolutional down-sampling and global volume-based self-attention (GV-SA) at the bottleneck.
Written for 3D; dimension-generic."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import Encoder
from unetkit.models.encoders.swin import swin_stage
from unetkit.models.layers import as_tuple
from unetkit.models.transformer import GlobalBlock, to_channels_first, to_channels_last


class ConvEmbed(nn.Module):
    """log2(patch_size) 3x3(x3) stride-2 convs (GELU + LayerNorm between) to `dim` channels:
    nnFormer's convolutional embedding. (N, C_in, *S) -> (N, *(S / patch_size), dim)."""

    def __init__(self, spatial_dims: int, in_channels: int, dim: int, patch_size: int = 4) -> None:
        super().__init__()
        steps = int(round(math.log2(patch_size)))
        if 2**steps != patch_size or steps < 1:
            raise ValueError(f"patch_size must be a power of two >= 2, got {patch_size}")
        widths = [dim // 2 ** (steps - 1 - i) for i in range(steps)]
        conv = layers.conv(spatial_dims)
        self.convs = nn.ModuleList(conv(c_in, c_out, 3, stride=2, padding=1)
                                   for c_in, c_out in zip([in_channels] + widths[:-1], widths))
        self.norms = nn.ModuleList(nn.LayerNorm(w) for w in widths)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(to_channels_last(conv(self.act(x) if i else x)))
            x = to_channels_first(x) if i < len(self.convs) - 1 else x
        return x


class ConvDown(nn.Module):
    """nnFormer's down-sampling: 3x3(x3) stride-2 conv + LayerNorm. (N, *S, C) -> (N, *(S / 2), C_out)."""

    def __init__(self, spatial_dims: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = layers.conv(spatial_dims)(dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_channels_last(self.conv(to_channels_first(x))))


class NNFormerEncoder(Encoder):
    """ConvEmbed -> [LV-SA stage -> ConvDown] * (stages - 1) -> GV-SA bottleneck stage.

    Args:
        features: stage widths (Synapse: 192, 384, 768, 1536).
        depths, heads: blocks and heads per stage (Synapse: (2, 2, 2, 2), (6, 12, 24, 48)).
        window: LV-SA window per stage (Synapse: 4, 4, 8; the bottleneck attends globally).
        patch_size: embedding stride (4; the paper uses (2, 4, 4) for anisotropic CT).
    (N, in_channels, *S) -> [(N, features[i], *(S / (patch_size * 2**i)))].
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int] = (192, 384, 768, 1536),
                 depths: Sequence[int] = (2, 2, 2, 2), heads: Sequence[int] = (6, 12, 24, 48),
                 window: int | Sequence[int] = (4, 4, 8), patch_size: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        dims = list(features)
        n = len(dims)
        if len(depths) != n:
            raise ValueError(f"depths needs one entry per stage ({n}), got {tuple(depths)}")
        heads = as_tuple(heads, n)
        windows = as_tuple(window, n - 1)
        self.spatial_dims = spatial_dims
        self.embed = ConvEmbed(spatial_dims, in_channels, dims[0], patch_size)
        self.stages = nn.ModuleList(swin_stage(spatial_dims, dims[i], depths[i], heads[i], windows[i], mlp_ratio,
                                               dropout) for i in range(n - 1))
        self.stages.append(nn.Sequential(*(GlobalBlock(dims[-1], heads[-1], int(dims[-1] * mlp_ratio), dropout)
                                           for _ in range(depths[-1]))))
        self.downs = nn.ModuleList(ConvDown(spatial_dims, d, e) for d, e in zip(dims[:-1], dims[1:]))
        self.out_channels = dims
        self.strides = [patch_size * 2**i for i in range(n)]
        self.size_divisor = self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(x)
        feats = []
        for i, stage in enumerate(self.stages):
            if i:
                x = self.downs[i - 1](x)
            x = stage(x)
            feats.append(to_channels_first(x))
        return feats
