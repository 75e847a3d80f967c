"""The U-Net expanding path: upsample, join the skip, DoubleConv, level by level."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models.base import Decoder
from unetkit.models.blocks import UpBlock
from unetkit.models.layers import LayerSpec


class UNetDecoder(Decoder):
    """One UpBlock per encoder level above the deepest.

    `decoder_channels[i]` is the width of the output at encoder level i (default: the
    encoder's width there). `separable=True` builds depthwise-separable level blocks; `convs`
    convs per level (nnU-Net's residual-encoder U-Nets use 1); `conv_bias` as in `ConvStack`. forward(features) -> [level 0, level 1, ...] (highest resolution first).
    """

    def __init__(
        self,
        spatial_dims: int,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        decoder_channels: Sequence[int] | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        up_mode: str = "transpose",
        padding: str = "same",
        separable: bool = False,
        convs: int = 2,
        conv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        enc = list(encoder_channels)
        dec = list(decoder_channels) if decoder_channels is not None else enc[:-1]
        if len(dec) != len(enc) - 1:
            raise ValueError(f"decoder_channels needs {len(enc) - 1} entries, got {len(dec)}")
        self.out_channels = dec
        self.strides = list(encoder_strides[:-1])
        blocks = []
        deeper = enc[-1]
        for level in reversed(range(len(enc) - 1)):
            blocks.append(UpBlock(spatial_dims, deeper, enc[level], dec[level], up_mode=up_mode,
                                  padding=padding, norm=norm, act=act, dropout=dropout,
                                  separable=separable, convs=convs, bias=conv_bias))
            deeper = dec[level]
        self.blocks = nn.ModuleList(blocks)  # deepest first

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        outs = []
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
            outs.append(x)
        return outs[::-1]
