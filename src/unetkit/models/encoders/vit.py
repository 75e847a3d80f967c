"""TransUNet's hybrid encoder (Chen et al. 2021): a ResNet on the image, a ViT on the tokens of
its deepest map, and a 3x3 conv that turns the tokens back into a map; 2D and 3D."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.base import Encoder
from unetkit.models.blocks import ConvNormAct
from unetkit.models.encoders.resnet import ResNetEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.transformer import PatchEmbed, TransformerBlock, to_channels_first


class ViTEncoder(Encoder):
    """CNN feature pyramid whose deepest map is replaced by a ViT's output.

    Args:
        cnn_blocks, cnn_width: the ResNet stages (default R50's first three: (3, 4, 9), 64).
        hidden, depth, heads, mlp_dim: the ViT (default ViT-B: 768, 12, 12, 3072).
        patch_size: patch size on the CNN's deepest map (1 in R50-ViT-B/16: 16 px patches).
        img_size: the size the learned position embedding is laid out for; other sizes
            interpolate it (linearly) to their token grid.
        readout_channels: channels of the 3x3 conv on the reshaped tokens (TransUNet's 512).
        cnn_style: the ResNet's style ('bit': weight-standardised convs + GroupNorm, as the
            published R50+ViT-B_16 checkpoint; 'torchvision': batch norm).
    LayerNorms use eps 1e-6 (ViT's).
    (N, in_channels, *S) -> CNN maps at strides 2, 4, 8 + the ViT map at stride 16 * patch_size.
    """

    def __init__(self, spatial_dims: int, in_channels: int, cnn_blocks: Sequence[int] = (3, 4, 9),
                 cnn_width: int = 64, hidden: int = 768, depth: int = 12, heads: int = 12, mlp_dim: int = 3072,
                 patch_size: int = 1, img_size: int = 224, readout_channels: int = 512,
                 norm: LayerSpec = "batch", act: LayerSpec = "relu", dropout: float = 0.0,
                 cnn_style: str = "bit") -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.cnn = ResNetEncoder(spatial_dims, in_channels, cnn_blocks, cnn_width, norm, act, cnn_style)
        stride = self.cnn.strides[-1] * patch_size
        self.grid = [max(1, img_size // stride)] * spatial_dims
        self.embed = PatchEmbed(spatial_dims, self.cnn.out_channels[-1], hidden, patch_size, norm=False)
        self.pos = nn.Parameter(torch.zeros(1, math.prod(self.grid), hidden))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(TransformerBlock(hidden, heads, mlp_dim, dropout, eps=1e-6)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.readout = ConvNormAct(spatial_dims, hidden, readout_channels, 3, norm=norm, act=act)
        self.out_channels = self.cnn.out_channels[:-1] + [readout_channels]
        self.strides = self.cnn.strides[:-1] + [stride]
        self.size_divisor = stride

    def position_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """(1, prod(grid), hidden): the learned embedding, interpolated when the grid differs."""
        if list(grid) == self.grid:
            return self.pos
        pos = self.pos.transpose(1, 2).reshape(1, -1, *self.grid)
        pos = F.interpolate(pos, size=tuple(grid), mode=layers.interp_mode(self.spatial_dims), align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.cnn(x)
        tokens = self.embed(feats[-1])  # (N, *grid, hidden)
        n, *grid, c = tokens.shape
        tokens = self.drop(tokens.reshape(n, -1, c) + self.position_embedding(grid))
        tokens = self.norm(self.blocks(tokens))
        return feats[:-1] + [self.readout(to_channels_first(tokens.reshape(n, *grid, c)))]
