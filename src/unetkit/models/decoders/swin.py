"""Swin-UNet's decoder (Cao et al. 2021): patch expanding, skip concatenation + linear, Swin
blocks per level, and a final patch expansion back to the input resolution; 2D and 3D."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models.base import Decoder
from unetkit.models.blocks import resize_to
from unetkit.models.encoders.swin import swin_stage
from unetkit.models.layers import as_tuple
from unetkit.models.transformer import PatchExpand, to_channels_first, to_channels_last


class SwinDecoder(Decoder):
    """Level i (deepest first): PatchExpand the deeper map to `decoder_channels[i]`, concatenate
    the skip, Linear back to `decoder_channels[i]`, `depths[i]` Swin blocks. The finest level is
    LayerNorm-ed and expanded by the encoder's first stride (4 for Swin: "FinalPatchExpand_X4").

    `drop_path`: one stochastic-depth rate, or a list of rates per block for each level
    (Swin-UNet mirrors the encoder's rates). Runs on any encoder whose strides double per level. forward(features) -> [full-resolution
    map, level 0, level 1, ...] (highest resolution first), channels-first.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 decoder_channels: Sequence[int] | None = None, depths: int | Sequence[int] = 2,
                 heads: int | Sequence[int] | None = None, window: int = 7, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, drop_path: float | Sequence[Sequence[float]] = 0.0) -> None:
        super().__init__()
        enc = list(encoder_channels)
        dec = list(decoder_channels) if decoder_channels is not None else enc[:-1]
        if len(dec) != len(enc) - 1:
            raise ValueError(f"decoder_channels needs {len(enc) - 1} entries, got {len(dec)}")
        depths = as_tuple(depths, len(dec))
        heads = as_tuple(heads, len(dec)) if heads is not None else [max(1, c // 32) for c in dec]
        self.expands = nn.ModuleList()
        self.joins = nn.ModuleList()
        self.stages = nn.ModuleList()
        deeper = enc[-1]
        for level in reversed(range(len(dec))):
            self.expands.append(PatchExpand(spatial_dims, deeper, dec[level]))
            self.joins.append(nn.Linear(dec[level] + enc[level], dec[level]))
            rates = drop_path if isinstance(drop_path, (int, float)) else drop_path[level]
            self.stages.append(swin_stage(spatial_dims, dec[level], depths[level], heads[level], window, mlp_ratio,
                                          dropout, rates))
            deeper = dec[level]
        self.norm = nn.LayerNorm(dec[0])
        first = int(encoder_strides[0])
        self.final = PatchExpand(spatial_dims, dec[0], dec[0], first) if first > 1 else None
        self.out_channels = ([dec[0]] if self.final is not None else []) + dec
        self.strides = ([1] if self.final is not None else []) + list(encoder_strides[:-1])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = to_channels_last(features[-1])
        outs = []
        for expand, join, stage, skip in zip(self.expands, self.joins, self.stages, reversed(features[:-1])):
            x = to_channels_last(resize_to(to_channels_first(expand(x)), skip.shape[2:]))
            x = stage(join(torch.cat([x, to_channels_last(skip)], dim=-1)))
            outs.append(to_channels_first(x))
        outs = outs[::-1]
        if self.final is not None:
            outs.insert(0, to_channels_first(self.final(self.norm(x))))
        return outs
