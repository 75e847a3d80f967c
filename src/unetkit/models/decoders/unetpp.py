"""U-Net++ nested dense skip pathways (Zhou et al., DLMIA 2018), built from the U-Net's UpBlock."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models.base import Decoder
from unetkit.models.blocks import UpBlock
from unetkit.models.decoders.unet import check_upsampling
from unetkit.models.layers import LayerSpec


class UNetPlusPlusDecoder(Decoder):
    """Node X[i][j] (level i, column j >= 1) = UpBlock(X[i+1][j-1], skip = cat(X[i][0..j-1])):
    the up-sampled deeper node joined with every earlier node of its level (dense skips).
    X[i][0] are the encoder maps. The nodes kept are those with i + j <= depth - 1, so a
    decoder built for fewer encoder levels is exactly the sub-network U-Net++ L^k that pruning
    keeps (same parameter names).

    forward(features) -> [X[0][L-1], X[0][L-2], ..., X[0][1]]: the top row, the full network
    first, all at the encoder's first stride (the paper's deep-supervision heads sit on them).
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 decoder_channels: Sequence[int] | None = None, norm: LayerSpec = "batch", act: LayerSpec = "relu",
                 dropout: float = 0.0, up_mode: str = "transpose", separable: bool = False) -> None:
        super().__init__()
        enc = list(encoder_channels)
        dec = list(decoder_channels) if decoder_channels is not None else enc[:-1]
        if len(dec) != len(enc) - 1:
            raise ValueError(f"decoder_channels needs {len(enc) - 1} entries, got {len(dec)}")
        check_upsampling(encoder_strides, up_mode, "unet++")
        self.depth = len(enc)
        self.nodes = nn.ModuleDict()
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                deeper = enc[i + 1] if j == 1 else dec[i + 1]
                self.nodes[f"x{i}_{j}"] = UpBlock(spatial_dims, deeper, enc[i] + (j - 1) * dec[i], dec[i],
                                                  up_mode=up_mode, norm=norm, act=act, dropout=dropout,
                                                  separable=separable)
        self.out_channels = [dec[0]] * (self.depth - 1)
        self.strides = [int(encoder_strides[0])] * (self.depth - 1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        grid = [[f] for f in features]  # grid[i][j] = X[i][j]
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                grid[i].append(self.nodes[f"x{i}_{j}"](grid[i + 1][j - 1], torch.cat(grid[i][:j], dim=1)))
        return grid[0][:0:-1]
