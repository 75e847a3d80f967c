"""nnFormer's decoder (Zhou et al. 2021): transposed-conv up-sampling and LV-SA blocks whose
first block attends from the up-sampled map to the encoder skip ("skip attention", in place of
concatenation), then a transposed-conv expansion back to the input resolution."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import Decoder
from unetkit.models.blocks import resize_to
from unetkit.models.layers import as_tuple
from unetkit.models.transformer import WindowBlock, to_channels_first, to_channels_last


class NNFormerDecoder(Decoder):
    """Level i (deepest first): ConvTranspose 2x up to `decoder_channels[i]`, a skip-attention
    window block (queries: up-sampled map, keys/values: encoder skip, so decoder and encoder
    widths must match at each level), `depths[i] - 1` more window blocks. The finest level is
    expanded by the encoder's first stride with a transposed conv to `final_channels`.

    forward(features) -> [full-resolution map, level 0, level 1, ...], channels-first.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 depths: int | Sequence[int] = 2, heads: int | Sequence[int] | None = None,
                 window: int | Sequence[int] = (4, 4, 8), final_channels: int | None = None,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        dec = list(encoder_channels[:-1])
        depths = as_tuple(depths, len(dec))
        windows = as_tuple(window, len(dec))
        heads = as_tuple(heads, len(dec)) if heads is not None else [max(1, c // 32) for c in dec]
        if min(depths) < 1:
            raise ValueError(f"every decoder level needs at least one (skip-attention) block, got {depths}")
        up = layers.conv_transpose(spatial_dims)
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        deeper = encoder_channels[-1]
        for level in reversed(range(len(dec))):
            self.ups.append(up(deeper, dec[level], 2, stride=2))
            self.stages.append(nn.ModuleList(
                WindowBlock(spatial_dims, dec[level], heads[level], windows[level], shift=i % 2 == 1,
                            mlp_ratio=mlp_ratio, dropout=dropout) for i in range(depths[level])))
            deeper = dec[level]
        first = int(encoder_strides[0])
        final_channels = final_channels or max(1, dec[0] // 4)
        self.final = up(dec[0], final_channels, first, stride=first) if first > 1 else None
        self.out_channels = ([final_channels] if self.final is not None else []) + dec
        self.strides = ([1] if self.final is not None else []) + list(encoder_strides[:-1])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        outs = []
        for up, blocks, skip in zip(self.ups, self.stages, reversed(features[:-1])):
            x = to_channels_last(resize_to(up(x), skip.shape[2:]))
            skip = to_channels_last(skip)
            x = blocks[0](x, context=skip)
            for block in blocks[1:]:
                x = block(x)
            x = to_channels_first(x)
            outs.append(x)
        outs = outs[::-1]
        if self.final is not None:
            outs.insert(0, self.final(outs[0]))
        return outs
