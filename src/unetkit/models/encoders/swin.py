"""Swin transformer encoder (Liu et al. 2021) as used by Swin-UNet (Cao et al. 2021); 2D and 3D."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models.base import Encoder
from unetkit.models.layers import as_tuple
from unetkit.models.transformer import PatchEmbed, PatchMerging, WindowBlock, drop_path_rates, to_channels_first


def swin_stage(spatial_dims: int, dim: int, depth: int, heads: int, window: int, mlp_ratio: float,
               dropout: float, drop_path: Sequence[float] | float = 0.0) -> nn.Sequential:
    """`depth` window blocks, every second one shifted by half a window; `drop_path`: a rate
    per block (or one for all)."""
    rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
    return nn.Sequential(*(WindowBlock(spatial_dims, dim, heads, window, shift=i % 2 == 1, mlp_ratio=mlp_ratio,
                                       dropout=dropout, drop_path=rates[i]) for i in range(depth)))


class SwinEncoder(Encoder):
    """Patch embedding (patch_size, LayerNorm), then per stage: Swin blocks; patch merging
    (2x down, 2x wider) between stages; LayerNorm on the deepest map. As in the official
    Swin-UNet, the skip of each stage is its input (the embedding, or the merged map) before
    its Swin blocks; the deepest map is the last stage's output.

    Args:
        features: stage widths (96, 192, 384, 768 in Swin-T / Swin-UNet).
        depths, heads: blocks and attention heads per stage (one entry per stage).
        window: window size (7); maps smaller than a window use one window.
        drop_path: stochastic-depth rate of the last block, rising linearly from 0 (Swin's rule).
    (N, in_channels, *S) -> [(N, features[i], *(S / (patch_size * 2**i)))], highest resolution
    first. Sizes must be multiples of patch_size * 2**(stages - 1) (SegmentationModel pads them).
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int] = (96, 192, 384, 768),
                 depths: Sequence[int] = (2, 2, 2, 2),
                 heads: Sequence[int] = (3, 6, 12, 24), window: int = 7, patch_size: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        dims = list(features)
        if len(depths) != len(dims):
            raise ValueError(f"depths needs one entry per stage ({len(dims)}), got {tuple(depths)}")
        heads = as_tuple(heads, len(dims))
        self.spatial_dims = spatial_dims
        self.embed = PatchEmbed(spatial_dims, in_channels, dims[0], patch_size)
        self.merges = nn.ModuleList(PatchMerging(spatial_dims, d, e) for d, e in zip(dims[:-1], dims[1:]))
        rates = drop_path_rates(drop_path, depths)
        self.stages = nn.ModuleList(swin_stage(spatial_dims, d, n, h, window, mlp_ratio, dropout, r)
                                    for d, n, h, r in zip(dims, depths, heads, rates))
        self.norm = nn.LayerNorm(dims[-1])
        self.out_channels = dims
        self.strides = [patch_size * 2**i for i in range(len(dims))]
        self.size_divisor = self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(x)
        feats = []
        for i, stage in enumerate(self.stages):
            if i:
                x = self.merges[i - 1](x)
            if i < len(self.stages) - 1:
                feats.append(x)  # the skip: the stage's input
            x = stage(x)
        feats.append(self.norm(x))
        return [to_channels_first(f) for f in feats]
