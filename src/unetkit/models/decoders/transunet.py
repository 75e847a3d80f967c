"""TransUNet's cascaded upsampler, "CUP" (Chen et al. 2021; `DecoderCup` in the authors' code)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models.base import Decoder
from unetkit.models.decoders.unet import InterpUpBlock
from unetkit.models.layers import LayerSpec


class CascadedUpsampler(Decoder):
    """Level by level from the deepest map: bilinear 2x up-sampling (align_corners, no conv),
    concatenation with the encoder skip at that stride, two 3x3 ConvNormAct. Levels finer than
    the encoder's first map have no skip (TransUNet's last, 16-channel stage at full resolution).

    `decoder_channels`: widths highest resolution first, one per encoder level above the deepest
    plus one per skip-less level (TransUNet: (16, 64, 128, 256): 16 at stride 1, then strides
    2, 4, 8). Default: the encoder's widths, plus skip-less levels down to stride 1 of a
    quarter of the finest width. forward(features) -> maps highest resolution first.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 decoder_channels: Sequence[int] | None = None, norm: LayerSpec = "batch",
                 act: LayerSpec = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        enc, strides = list(encoder_channels), [int(s) for s in encoder_strides]
        if decoder_channels is None:
            decoder_channels = [max(1, enc[0] // 4)] * (max(1, strides[0]).bit_length() - 1) + enc[:-1]
        dec = list(decoder_channels)
        extra = len(dec) - (len(enc) - 1)
        if extra < 0:
            raise ValueError(f"decoder_channels needs at least {len(enc) - 1} entries, got {len(dec)}")
        skips = [0] * extra + enc[:-1]
        self.strides = [strides[0] // 2**(extra - i) for i in range(extra)] + strides[:-1]
        if extra and self.strides[0] < 1:
            raise ValueError(f"{extra} skip-less levels below stride {strides[0]} would go under stride 1")
        self.out_channels = dec
        self.num_skipless = extra
        blocks, deeper = [], enc[-1]
        for level in reversed(range(len(dec))):
            blocks.append(InterpUpBlock(spatial_dims, deeper, skips[level], dec[level], norm, act, dropout,
                                        align_corners=True))
            deeper = dec[level]
        self.blocks = nn.ModuleList(blocks)  # deepest first

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        skips = [None] * self.num_skipless + list(features[:-1])
        outs = []
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(x, skip)
            outs.append(x)
        return outs[::-1]
