"""The U-Net expanding path: upsample, join the skip, DoubleConv, level by level."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.base import Decoder
from unetkit.models.blocks import DoubleConv, UpBlock
from unetkit.models.layers import LayerSpec


def check_upsampling(encoder_strides: Sequence[int], up_mode: str, decoder: str) -> None:
    """A transposed conv up-samples by exactly 2: refuse encoders whose stride jumps by more
    between levels (a ViT with patch size > 1, say), instead of zero-padding its output."""
    strides = [int(s) for s in encoder_strides]
    jumps = [b // a for a, b in zip(strides, strides[1:])]
    if up_mode == "transpose" and any(j != 2 for j in jumps):
        raise ValueError(f"the {decoder} decoder's 'transpose' up-sampling doubles the size per level, but the "
                         f"encoder's strides {strides} jump by {jumps}; use up_mode='linear' or 'nearest' "
                         "(which up-sample to the skip's size)")


class InterpUpBlock(nn.Module):
    """Decoder level of the official Attention U-Net (`UnetUp3_CT`) and TransUNet
    (`DecoderBlock`): linear 2x up-sampling of the deeper map without a conv (its channels are
    kept), concatenation with the skip (none when `skip_channels` is 0), DoubleConv.
    (N, in, *S), skip (N, skip, *S_skip) -> (N, out, *S_skip); without a skip -> (N, out, *2S).
    `align_corners=True` is TransUNet's `UpsamplingBilinear2d`."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int,
                 norm: LayerSpec = "batch", act: LayerSpec = "relu", dropout: float = 0.0,
                 separable: bool = False, align_corners: bool = False) -> None:
        super().__init__()
        self.mode = layers.interp_mode(spatial_dims)
        self.align_corners = align_corners
        self.conv = DoubleConv(spatial_dims, in_channels + skip_channels, out_channels, norm=norm, act=act,
                               dropout=dropout, separable=separable)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        # 2x, or exactly to the skip's size (odd sizes, encoders whose stride jumps by more than 2)
        size = [2 * s for s in x.shape[2:]] if skip is None else list(skip.shape[2:])
        x = F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)
        return self.conv(x if skip is None else torch.cat([skip, x], dim=1))


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
        stage_strides: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        enc = list(encoder_channels)
        dec = list(decoder_channels) if decoder_channels is not None else enc[:-1]
        if len(dec) != len(enc) - 1:
            raise ValueError(f"decoder_channels needs {len(enc) - 1} entries, got {len(dec)}")
        if stage_strides is None:  # the encoder doubles per level: checked
            check_upsampling(encoder_strides, up_mode, "unet")
        self.out_channels = dec
        self.strides = list(encoder_strides[:-1])
        blocks = []
        deeper = enc[-1]
        for level in reversed(range(len(enc) - 1)):
            # per-axis geometry (anisotropic U-Nets): level `level` up-samples by the factor the
            # encoder pooled below it and convolves with that level's kernel (nnU-Net's decoder)
            extra = {} if stage_strides is None else {"factor": tuple(stage_strides[level])}
            if kernel_sizes is not None:
                extra["kernel_size"] = tuple(kernel_sizes[level])
            blocks.append(UpBlock(spatial_dims, deeper, enc[level], dec[level], up_mode=up_mode,
                                  padding=padding, norm=norm, act=act, dropout=dropout,
                                  separable=separable, convs=convs, bias=conv_bias, **extra))
            deeper = dec[level]
        self.blocks = nn.ModuleList(blocks)  # deepest first

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        outs = []
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
            outs.append(x)
        return outs[::-1]
