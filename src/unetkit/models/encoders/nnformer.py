"""nnFormer encoder (Zhou et al. 2021, "nnFormer: Interleaved Transformer for Volumetric
Segmentation"), as the authors' code (`nnFormer_synapse.py`): a convolutional embedding of four
3x3x3 convs, local volume-based self-attention (LV-SA) stages with a relative position bias,
convolutional down-sampling, a norm on every stage's output, stochastic depth, and at the
bottleneck window attention whose window covers the whole map for the paper's crops (GV-SA).
Written for 3D; dimension-generic."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import Encoder
from unetkit.models.encoders.swin import swin_stage
from unetkit.models.layers import as_tuple
from unetkit.models.transformer import drop_path_rates, to_channels_first, to_channels_last


def _layer_norm_channels_first(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return to_channels_first(norm(to_channels_last(x)))


class ConvProject(nn.Module):
    """The official `project`: conv1 3x3(x3) (stride) -> GELU -> LayerNorm -> conv2 3x3(x3)
    (-> GELU -> LayerNorm unless `last`). (N, C_in, *S) -> (N, C_out, *S / stride)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: Sequence[int],
                 last: bool = False) -> None:
        super().__init__()
        conv = layers.conv(spatial_dims)
        self.conv1 = conv(in_channels, out_channels, 3, stride=tuple(stride), padding=1)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1)
        self.norm1 = nn.LayerNorm(out_channels)
        self.norm2 = nn.LayerNorm(out_channels) if not last else None
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(_layer_norm_channels_first(self.norm1, self.act(self.conv1(x))))
        return x if self.norm2 is None else _layer_norm_channels_first(self.norm2, self.act(x))


class ConvEmbed(nn.Module):
    """nnFormer's convolutional embedding: two `ConvProject` (to dim / 2 with stride
    min(2, patch) per axis, then to dim with the rest of the patch), LayerNorm.
    `patch_size` may differ per axis ((2, 4, 4) for the paper's CT). (N, C_in, *S) -> (N, *(S / patch), dim)."""

    def __init__(self, spatial_dims: int, in_channels: int, dim: int, patch_size: int | Sequence[int] = 4) -> None:
        super().__init__()
        patch = [int(p) for p in as_tuple(patch_size, spatial_dims)]
        if any(p not in (1, 2, 4) for p in patch) or max(patch) < 2:
            raise ValueError(f"nnFormer patch sizes must be 1, 2 or 4 per axis (and not all 1), got {patch_size}")
        first = [min(2, p) for p in patch]
        self.proj1 = ConvProject(spatial_dims, in_channels, dim // 2, first)
        self.proj2 = ConvProject(spatial_dims, dim // 2, dim, [p // f for p, f in zip(patch, first)], last=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_channels_last(self.proj2(self.proj1(x))))


class ConvDown(nn.Module):
    """nnFormer's down-sampling ("PatchMerging"): GELU -> LayerNorm -> 3x3(x3) stride-2 conv.
    (N, *S, C) -> (N, *(S / 2), C_out)."""

    def __init__(self, spatial_dims: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = layers.conv(spatial_dims)(dim, out_dim, 3, stride=2, padding=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_last(self.conv(to_channels_first(self.norm(self.act(x)))))


class NNFormerEncoder(Encoder):
    """ConvEmbed -> [LV-SA stage -> ConvDown] * (stages - 1) -> bottleneck stage; every stage's
    output goes through its own LayerNorm to become the skip (the deepest: the bottleneck map).

    Args:
        features: stage widths (Synapse: 192, 384, 768, 1536).
        depths, heads: blocks and heads per stage (Synapse: (2, 2, 2, 2), (6, 12, 24, 48)).
        window: window per stage, the bottleneck's last (Synapse: 4, 4, 8, 4: on the paper's
            64x128x128 crops the stage-3 and bottleneck windows cover their whole map, GV-SA);
            windows larger than a map shrink to it.
        patch_size: embedding stride, an int or one per axis (the paper's (2, 4, 4) for CT).
            `strides` report the largest axis's.
        drop_path: stochastic-depth rate, rising linearly over the blocks (0.2 in the paper).
    (N, in_channels, *S) -> [(N, features[i], *(S / (patch_size * 2**i)))].
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int] = (192, 384, 768, 1536),
                 depths: Sequence[int] = (2, 2, 2, 2), heads: Sequence[int] = (6, 12, 24, 48),
                 window: int | Sequence[int] = (4, 4, 8, 4), patch_size: int | Sequence[int] = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.2) -> None:
        super().__init__()
        dims = list(features)
        n = len(dims)
        if len(depths) != n:
            raise ValueError(f"depths needs one entry per stage ({n}), got {tuple(depths)}")
        heads = as_tuple(heads, n)
        windows = list(as_tuple(window, n))
        if len(windows) == n - 1:  # one window per non-bottleneck stage: the bottleneck takes the last
            windows.append(windows[-1])
        if len(windows) != n:
            raise ValueError(f"window needs one entry per stage ({n}), got {tuple(windows)}")
        self.spatial_dims = spatial_dims
        self.embed = ConvEmbed(spatial_dims, in_channels, dims[0], patch_size)
        rates = drop_path_rates(drop_path, depths)
        self.stages = nn.ModuleList(swin_stage(spatial_dims, dims[i], depths[i], heads[i], windows[i], mlp_ratio,
                                               dropout, rates[i]) for i in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.downs = nn.ModuleList(ConvDown(spatial_dims, d, e) for d, e in zip(dims[:-1], dims[1:]))
        patch = max(int(p) for p in as_tuple(patch_size, spatial_dims))
        self.out_channels = dims
        self.strides = [patch * 2**i for i in range(n)]
        self.size_divisor = self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(x)
        feats = []
        for i, (stage, norm) in enumerate(zip(self.stages, self.norms)):
            if i:
                x = self.downs[i - 1](x)
            x = stage(x)
            feats.append(to_channels_first(norm(x)))
        return feats
