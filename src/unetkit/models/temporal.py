"""Spatio-temporal U-Net: a U-Net encoder on every frame, ConvGRU fusion over time, one decoder.

A time series of T frames is segmented by running the plain U-Net encoder on each frame (shared
weights), fusing each level's feature maps over time with a convolutional GRU (Ballas et al.,
ICLR 2016, "Delving deeper into convolutional networks for learning video representations"; the
recurrent-U-Net pattern of Novikov et al., IEEE TMI 2019), and decoding the fused maps of the last
frame with the U-Net decoder. The GRU runs forward in time, so the output for frame t depends on
frames 0..t only (causal: suits online tracking; `forward_frames` gives every frame's mask).

Inputs, for `spatial_dims` S = 2 (frames are images) or 3 (frames are volumes, i.e. 4D data):
    (N, C, T, *S)      an explicit time axis (C = `in_channels` per frame), or
    (N, C * T, *S)     frames stacked in channels, frame-major: [f0c0, f0c1, ..., f1c0, ...];
                       T = channels // in_channels, so any number of frames works.
The two give identical outputs: `stacked = x5.transpose(1, 2).reshape(N, T * C, *S)`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell (Ballas et al. 2016), dimension-generic.

    forward(x (N, C, *S), h (N, C, *S) | None) -> h' (N, C, *S):
        r, z = sigmoid(conv([x, h]));  n = tanh(conv([x, r * h]));  h' = (1 - z) * h + z * n.
    A missing state starts at zeros.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        conv = layers.conv(spatial_dims)
        self.gates = conv(2 * channels, 2 * channels, kernel_size, padding=kernel_size // 2)
        self.candidate = conv(2 * channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.zeros_like(x) if h is None else h
        r, z = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, dim=1)
        n = torch.tanh(self.candidate(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * n


@register_model("temporal-unet", tiny={"features": (4, 8, 16)}, any_size=True)
class TemporalUNet(SegmentationModel):
    """U-Net for time series: per-frame encoder, ConvGRU over time, decoder on the last frame.

    The number of frames is read from the input, so a channel-stacked input with `in_channels`
    channels is a one-frame clip (the registry-wide tests run that case; the GRU then starts from
    a zero state); `frames=` pins the count.

    Args:
        spatial_dims, in_channels (per frame), num_classes, features, norm, act, dropout,
            deep_supervision: as `UNet`.
        temporal_skips: fuse every skip level over time (default); False fuses the bottleneck only
            and takes the other skips from the last frame (cheaper, less temporal context).
        frames: when set, inputs must hold exactly this many frames (a check; None: any number).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        temporal_skips: bool = True,
        frames: int | None = None,
    ) -> None:
        encoder = PlainEncoder(spatial_dims, in_channels, features, norm, act, dropout)
        decoder = UNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, None, norm, act)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        self.in_channels = in_channels
        self.frames = frames
        fused = encoder.out_channels if temporal_skips else encoder.out_channels[-1:]
        self.first_fused_level = len(encoder.out_channels) - len(fused)
        self.fusion = nn.ModuleList(ConvGRUCell(spatial_dims, c) for c in fused)

    def split_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, *S) or (N, C*T, *S) -> (N, T, C, *S), checking channels and frame count."""
        dims = self.spatial_dims
        if x.dim() == dims + 3:
            x = x.transpose(1, 2)
        elif x.dim() == dims + 2:
            if x.shape[1] % self.in_channels:
                raise ValueError(f"temporal-unet: {x.shape[1]} input channels are not a whole number of "
                                 f"{self.in_channels}-channel frames")
            x = x.reshape(x.shape[0], x.shape[1] // self.in_channels, self.in_channels, *x.shape[2:])
        else:
            axes = "D, H, W" if dims == 3 else "H, W"
            raise ValueError(f"temporal-unet ({dims}D frames) expects (N, C, T, {axes}) or (N, C*T, {axes}), "
                             f"got shape {tuple(x.shape)}")
        if x.shape[2] != self.in_channels:
            raise ValueError(f"temporal-unet: frames have {x.shape[2]} channels, the model takes {self.in_channels}")
        if self.frames is not None and x.shape[1] != self.frames:
            raise ValueError(f"temporal-unet was built for {self.frames} frames, got {x.shape[1]}")
        return x

    def fused_features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Encoder maps fused over time, for every frame: result[t][level] (N, C_level, *S_level)."""
        n, t = x.shape[:2]
        per_frame = self.encoder(x.flatten(0, 1))  # frames as batch: shared weights, one pass
        per_frame = [f.unflatten(0, (n, t)) for f in per_frame]  # level -> (N, T, C, *S)
        states: list[torch.Tensor | None] = [None] * len(self.fusion)
        out = []
        for step in range(t):
            maps = [f[:, step] for f in per_frame]
            for i, cell in enumerate(self.fusion):
                level = self.first_fused_level + i
                states[i] = cell(maps[level], states[i])
                maps[level] = states[i]
            out.append(maps)
        return out

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(frames (N, T, C, *S_padded), original spatial size)."""
        frames = self.split_frames(x)
        padded, size = self._pad_input(frames.flatten(1, 2))
        return padded.unflatten(1, tuple(frames.shape[1:3])), size

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits of the last frame: (N, num_classes, *S) (a list with deep supervision)."""
        frames, size = self._prepare(x)
        maps = self.fused_features(frames)[-1]
        return self.head_outputs(self.decoder(maps), size, list(frames.shape[3:]))

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every frame, each from the state after that frame: (N, num_classes, T, *S)."""
        frames, size = self._prepare(x)
        outs = []
        for maps in self.fused_features(frames):
            out = self.head_outputs(self.decoder(maps), size, list(frames.shape[3:]))
            outs.append(out[0] if isinstance(out, list) else out)
        return torch.stack(outs, dim=2)
