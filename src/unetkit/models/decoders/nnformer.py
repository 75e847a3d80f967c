"""nnFormer's decoder (Zhou et al. 2021), as the authors' code: per level a patch expansion
(LayerNorm + 2x transposed conv), then "skip attention": a window block whose queries are the
normalised up-sampled map as it is (no query projection), whose keys and values come from the
encoder skip, and whose residual is up-sampled map + skip; then the level's other window blocks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import Decoder
from unetkit.models.blocks import resize_to
from unetkit.models.layers import as_tuple
from unetkit.models.transformer import WindowBlock, drop_path_rates, to_channels_first, to_channels_last


class PatchExpanding(nn.Module):
    """LayerNorm -> 2x2(x2) stride-2 transposed conv (the official `Patch_Expanding`).
    (N, *S, C_in) -> (N, C_out, *2S) channels-first."""

    def __init__(self, spatial_dims: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = layers.conv_transpose(spatial_dims)(dim, out_dim, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(to_channels_first(self.norm(x)))


class NNFormerDecoder(Decoder):
    """Level i (deepest first): PatchExpanding of the deeper map to the skip's width, a
    skip-attention window block, `depths[i] - 1` more window blocks (shifted). Decoder and
    encoder widths must match at each level. The maps stay at the encoder's strides: nnFormer's
    heads are transposed convs by the patch size (see `NNFormer`); under another model's 1x1
    head the logits are up-sampled.

    `drop_path`: stochastic-depth rate rising linearly over the decoder's blocks, deepest level
    first (the authors' rule). forward(features) -> [level 0, level 1, ...], channels-first.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 depths: int | Sequence[int] = 2, heads: int | Sequence[int] | None = None,
                 window: int | Sequence[int] = (4, 4, 8), mlp_ratio: float = 4.0, dropout: float = 0.0,
                 drop_path: float = 0.2) -> None:
        super().__init__()
        dec = list(encoder_channels[:-1])
        depths = as_tuple(depths, len(dec))
        windows = as_tuple(window, len(dec))
        heads = as_tuple(heads, len(dec)) if heads is not None else [max(1, c // 32) for c in dec]
        if min(depths) < 1:
            raise ValueError(f"every decoder level needs at least one (skip-attention) block, got {depths}")
        rates = drop_path_rates(drop_path, list(depths)[::-1])[::-1]  # deepest level first
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        deeper = encoder_channels[-1]
        for level in reversed(range(len(dec))):
            self.ups.append(PatchExpanding(spatial_dims, deeper, dec[level]))
            self.stages.append(nn.ModuleList(
                WindowBlock(spatial_dims, dec[level], heads[level], windows[level], shift=i % 2 == 1,
                            mlp_ratio=mlp_ratio, dropout=dropout, drop_path=rates[level][i],
                            query_projection=i > 0) for i in range(depths[level])))
            deeper = dec[level]
        self.out_channels = dec
        self.strides = list(encoder_strides[:-1])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = to_channels_last(features[-1])
        outs = []
        for up, blocks, skip in zip(self.ups, self.stages, reversed(features[:-1])):
            x_up = to_channels_last(resize_to(up(x), skip.shape[2:]))
            skip = to_channels_last(skip)
            x = blocks[0](x_up, context=skip, residual=x_up + skip)
            for block in blocks[1:]:
                x = block(x)
            outs.append(to_channels_first(x))
        return outs[::-1]
