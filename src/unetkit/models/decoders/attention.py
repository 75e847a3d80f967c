"""Attention U-Net decoder (Oktay et al., MIDL 2018): additive attention gates on the skips."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.base import Decoder
from unetkit.models.blocks import UpBlock
from unetkit.models.layers import LayerSpec


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, eq. 1-2):
    alpha = sigmoid(psi(relu(W_x x + W_g g + b_g)) + b_psi), output x * alpha.

    W_x is a 2x2(x2) stride-2 conv taking the skip `x` to the gating signal's grid; alpha is
    resampled (linear) back to `x`'s grid. x (N, C_x, *S), g (N, C_g, *S/2)
    -> (x * alpha (N, C_x, *S), alpha (N, 1, *S) in [0, 1]).
    """

    def __init__(self, spatial_dims: int, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        conv = layers.conv(spatial_dims)
        self.spatial_dims = spatial_dims
        self.theta = conv(skip_channels, inter_channels, 2, stride=2, bias=False)
        self.phi = conv(gate_channels, inter_channels, 1)
        self.psi = conv(inter_channels, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mode = layers.interp_mode(self.spatial_dims)
        theta = self.theta(x)
        phi = F.interpolate(self.phi(g), size=theta.shape[2:], mode=mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode=mode, align_corners=False)
        return x * alpha, alpha


class AttentionUNetDecoder(Decoder):
    """U-Net decoder whose skips pass through an AttentionGate gated by the deeper (coarser)
    decoder map before the UpBlock joins them.

    `inter_channels[i]` (default half the skip's width, as in the paper's code) sizes gate i.
    forward(features, return_attention=False) -> maps highest resolution first
    (+ the attention coefficients, highest resolution first, when asked).
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 decoder_channels: Sequence[int] | None = None, norm: LayerSpec = "batch", act: LayerSpec = "relu",
                 dropout: float = 0.0, up_mode: str = "transpose", inter_channels: Sequence[int] | None = None,
                 separable: bool = False) -> None:
        super().__init__()
        enc = list(encoder_channels)
        dec = list(decoder_channels) if decoder_channels is not None else enc[:-1]
        if len(dec) != len(enc) - 1:
            raise ValueError(f"decoder_channels needs {len(enc) - 1} entries, got {len(dec)}")
        inter = list(inter_channels) if inter_channels is not None else [max(1, c // 2) for c in enc[:-1]]
        self.out_channels = dec
        self.strides = list(encoder_strides[:-1])
        gates, blocks = [], []
        deeper = enc[-1]
        for level in reversed(range(len(dec))):
            gates.append(AttentionGate(spatial_dims, enc[level], deeper, inter[level]))
            blocks.append(UpBlock(spatial_dims, deeper, enc[level], dec[level], up_mode=up_mode, norm=norm, act=act,
                                  dropout=dropout, separable=separable))
            deeper = dec[level]
        self.gates = nn.ModuleList(gates)  # deepest first
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: list[torch.Tensor], return_attention: bool = False):
        x = features[-1]
        outs, alphas = [], []
        for gate, block, skip in zip(self.gates, self.blocks, reversed(features[:-1])):
            skip, alpha = gate(skip, x)
            x = block(x, skip)
            outs.append(x)
            alphas.append(alpha)
        if return_attention:
            return outs[::-1], alphas[::-1]
        return outs[::-1]
