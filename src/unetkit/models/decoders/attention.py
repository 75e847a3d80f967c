"""Attention U-Net decoder (Oktay et al., MIDL 2018): additive attention gates on the skips,
as in the authors' code (Attention-Gated-Networks, `unet_CT_single_att_dsv_3D`)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.base import Decoder
from unetkit.models.blocks import ConvNormAct, UpBlock
from unetkit.models.decoders.unet import InterpUpBlock, check_upsampling
from unetkit.models.layers import LayerSpec


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, eq. 1-2; the official `GridAttentionBlock` in
    'concatenation' mode followed by `MultiAttentionBlock.combine_gates`):
    alpha = sigmoid(psi(relu(theta(x) + phi(g)))), output combine(W(x * alpha)).

    theta is a 2x2(x2) stride-2 conv (no bias) taking the skip `x` to the gating signal's grid;
    alpha is resampled (linear) back to `x`'s grid; W is the output transform (1x1 conv + norm)
    and combine a 1x1 ConvNormAct. x (N, C_x, *S), g (N, C_g, *S/2)
    -> (gated skip (N, C_x, *S), alpha (N, 1, *S) in [0, 1]).
    """

    def __init__(self, spatial_dims: int, skip_channels: int, gate_channels: int, inter_channels: int,
                 norm: LayerSpec = "batch", act: LayerSpec = "relu") -> None:
        super().__init__()
        conv = layers.conv(spatial_dims)
        self.spatial_dims = spatial_dims
        self.theta = conv(skip_channels, inter_channels, 2, stride=2, bias=False)
        self.phi = conv(gate_channels, inter_channels, 1)
        self.psi = conv(inter_channels, 1, 1)
        self.out = ConvNormAct(spatial_dims, skip_channels, skip_channels, 1, norm=norm, act=None)
        self.combine = ConvNormAct(spatial_dims, skip_channels, skip_channels, 1, norm=norm, act=act)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """alpha (N, 1, *S_x) in [0, 1]."""
        mode = layers.interp_mode(self.spatial_dims)
        theta = self.theta(x)
        phi = F.interpolate(self.phi(g), size=theta.shape[2:], mode=mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        return F.interpolate(alpha, size=x.shape[2:], mode=mode, align_corners=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.coefficients(x, g)
        return self.combine(self.out(x * alpha)), alpha


class AttentionUNetDecoder(Decoder):
    """U-Net decoder whose skips, except the finest, pass through an AttentionGate before the
    level block joins them (the official network gates the three coarser of its four skips).
    The deepest gate is gated by a 1x1 ConvNormAct of the bottleneck (the official "gating
    signal"), every other gate by the deeper decoder map.

    `inter_channels[i]` (default the skip's width, as in the official networks) sizes gate i;
    `gate_finest=True` also gates the finest skip. `up_mode`: 'interp' (official: linear
    up-sampling, channels kept), or 'transpose' / 'nearest' / 'linear' (the U-Net's UpBlock).
    forward(features, return_attention=False) -> maps highest resolution first
    (+ the attention coefficients of the gated skips, highest resolution first, when asked).
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], encoder_strides: Sequence[int],
                 decoder_channels: Sequence[int] | None = None, norm: LayerSpec = "batch", act: LayerSpec = "relu",
                 dropout: float = 0.0, up_mode: str = "interp", inter_channels: Sequence[int] | None = None,
                 separable: bool = False, gate_finest: bool = False) -> None:
        super().__init__()
        enc = list(encoder_channels)
        dec = list(decoder_channels) if decoder_channels is not None else enc[:-1]
        if len(dec) != len(enc) - 1:
            raise ValueError(f"decoder_channels needs {len(enc) - 1} entries, got {len(dec)}")
        check_upsampling(encoder_strides, up_mode, "attention")
        inter = list(inter_channels) if inter_channels is not None else enc[:-1]
        self.out_channels = dec
        self.strides = list(encoder_strides[:-1])
        self.gating = ConvNormAct(spatial_dims, enc[-1], enc[-1], 1, norm=norm, act=act)
        gates, blocks = nn.ModuleDict(), []
        deeper = enc[-1]
        for level in reversed(range(len(dec))):
            if level > 0 or gate_finest:
                gates[str(level)] = AttentionGate(spatial_dims, enc[level], deeper, inter[level], norm, act)
            if up_mode == "interp":
                blocks.append(InterpUpBlock(spatial_dims, deeper, enc[level], dec[level], norm, act, dropout,
                                            separable))
            else:
                blocks.append(UpBlock(spatial_dims, deeper, enc[level], dec[level], up_mode=up_mode, norm=norm,
                                      act=act, dropout=dropout, separable=separable))
            deeper = dec[level]
        self.gates = gates  # by level
        self.blocks = nn.ModuleList(blocks)  # deepest first

    def forward(self, features: list[torch.Tensor], return_attention: bool = False):
        x = features[-1]
        g = self.gating(x)
        outs, alphas = [], []
        for block, level in zip(self.blocks, reversed(range(len(features) - 1))):
            skip = features[level]
            if str(level) in self.gates:
                skip, alpha = self.gates[str(level)](skip, g)
                alphas.append(alpha)
            x = block(x, skip)
            outs.append(x)
            g = x
        if return_attention:
            return outs[::-1], alphas[::-1]
        return outs[::-1]
