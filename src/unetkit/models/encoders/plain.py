"""The U-Net contracting path: DoubleConv per level, halving the size between levels."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import Encoder
from unetkit.models.blocks import DOWN_MODES, DoubleConv, Downsample
from unetkit.models.layers import LayerSpec


class PlainEncoder(Encoder):
    """Level i has `features[i]` channels at stride 2**i.

    (N, in_channels, *S) -> [(N, features[i], *(S / 2**i)) for i in levels].
    `dropout` is applied after the deepest level (the end of the contracting path, as in
    Ronneberger et al. 2015). `down_mode='stride'` strides the first conv of each level below
    the top instead of a separate downsampling layer (nnU-Net's PlainConvEncoder); inputs must
    then be multiples of 2**(levels - 1) (`size_divisor`; the model pads them).
    `conv_bias=None`: convs have a bias only when no norm follows them.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int],
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        padding: str = "same",
        down_mode: str = "maxpool",
        conv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 levels, got {tuple(features)}")
        if down_mode not in DOWN_MODES:
            raise ValueError(f"down_mode must be one of {DOWN_MODES}, got '{down_mode}'")
        strided = down_mode == "stride"
        if strided and padding != "same":
            raise ValueError("down_mode='stride' needs padding='same' (strided valid convs lose the size arithmetic)")
        self.spatial_dims = spatial_dims
        self.padding = padding
        self.out_channels = list(features)
        self.strides = [2**i for i in range(len(features))]
        self.size_divisor = self.strides[-1] if strided else 1
        # 'same': every pooling needs a map of >= 2 (smaller inputs are padded up to this);
        # 'valid': sizes are checked by the model (see UNet.check_input_size), never padded
        self.min_size = 2 ** (len(features) - 1) if padding == "same" else 1
        self.downs = nn.ModuleList()
        self.levels = nn.ModuleList()
        prev = in_channels
        for i, f in enumerate(features):
            if i > 0 and not strided:
                self.downs.append(Downsample(spatial_dims, prev, prev, down_mode, norm, act))
            self.levels.append(DoubleConv(spatial_dims, prev, f, padding=padding, norm=norm, act=act,
                                          stride=2 if (strided and i > 0) else 1, bias=conv_bias))
            prev = f
        self.dropout = layers.make_dropout(spatial_dims, dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.levels[0](x)]
        if not self.downs:  # strided levels
            for level in self.levels[1:]:
                feats.append(level(feats[-1]))
        else:
            for down, level in zip(self.downs, self.levels[1:]):
                feats.append(level(down(feats[-1])))
        feats[-1] = self.dropout(feats[-1])
        return feats
