"""UNet 3+ full-scale skip connections (Huang et al., ICASSP 2020)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.base import Decoder
from unetkit.models.blocks import ConvNormAct, resize_to
from unetkit.models.layers import LayerSpec


class UNet3PlusDecoder(Decoder):
    """Decoder stage i (deepest first) gathers every scale: the encoder maps at levels <= i
    (max-pooled down to level i), and the decoder maps below it plus the encoder's deepest map
    (linearly up-sampled), each through a 3x3 ConvNormAct to `cat_channels`; the concatenation
    (levels * cat_channels wide) is fused by one more 3x3 ConvNormAct.

    forward(features) -> [stage 0, stage 1, ..., stage L-2, deepest encoder map]: the paper's
    full-scale deep supervision includes a head on the bottleneck.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 cat_channels: int | None = None, norm: LayerSpec = "batch", act: LayerSpec = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        enc = list(encoder_channels)
        n = len(enc)
        cat = cat_channels or enc[0]
        up = cat * n
        self.spatial_dims = spatial_dims
        self.strides_in = [int(s) for s in encoder_strides]
        self.branches = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in reversed(range(n - 1)):
            widths = [enc[j] if (j <= i or j == n - 1) else up for j in range(n)]
            self.branches.append(nn.ModuleList(ConvNormAct(spatial_dims, w, cat, norm=norm, act=act) for w in widths))
            self.fuse.append(ConvNormAct(spatial_dims, up, up, norm=norm, act=act, dropout=dropout))
        self.out_channels = [up] * (n - 1) + [enc[-1]]
        self.strides = self.strides_in

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(features)
        mode = layers.interp_mode(self.spatial_dims)
        dec: dict[int, torch.Tensor] = {n - 1: features[-1]}
        for branches, fuse, i in zip(self.branches, self.fuse, reversed(range(n - 1))):
            size = features[i].shape[2:]
            parts = []
            for j, branch in enumerate(branches):
                if j <= i:
                    k = self.strides_in[i] // self.strides_in[j]
                    x = resize_to(_max_pool(features[j], k, self.spatial_dims), size)
                else:
                    x = F.interpolate(dec[j], size=tuple(size), mode=mode, align_corners=False)
                parts.append(branch(x))
            dec[i] = fuse(torch.cat(parts, dim=1))
        return [dec[i] for i in range(n)]


def _max_pool(x: torch.Tensor, k: int, spatial_dims: int) -> torch.Tensor:
    """k-fold max-pooling (floor sizes, like the encoder's), identity for k == 1."""
    return x if k == 1 else getattr(F, f"max_pool{spatial_dims}d")(x, k)
