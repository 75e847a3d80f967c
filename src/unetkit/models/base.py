"""The encoder | decoder | head contract every model in unetkit follows.

Encoder contract
    forward(x: (N, C_in, *S)) -> list of feature maps, highest resolution first;
    attributes `spatial_dims`, `out_channels: list[int]` (channels of each map),
    `strides: list[int]` (each map's size reduction against the input) and
    `size_divisor: int` (input sizes must be multiples of it; 1 when any size works).

Decoder contract
    built from the encoder's `out_channels` / `strides`;
    forward(features) -> list of maps, highest resolution first (the first one feeds the
    main head, the others the deep-supervision heads); attributes `out_channels` and `strides`.

Any decoder runs on any encoder that meets the contract.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.blocks import SegmentationHead


class Encoder(nn.Module):
    """Base class documenting the encoder contract (see module docstring)."""

    spatial_dims: int
    out_channels: list[int]
    strides: list[int]
    size_divisor: int = 1


class Decoder(nn.Module):
    """Base class documenting the decoder contract (see module docstring)."""

    out_channels: list[int]
    strides: list[int]


class SegmentationModel(nn.Module):
    """encoder -> decoder -> 1x1 head (+ deep-supervision heads).

    forward(x: (N, C_in, *S)) returns logits (N, num_classes, *S) when `deep_supervision` is
    off, and a list of logits, highest resolution first, when it is on: the first at the input
    size, the others at their decoder level's size (the deep-supervision loss resizes targets).
    Inputs whose size is not a multiple of `encoder.size_divisor` are padded (reflect) and the
    output cropped back, so every model accepts any input size.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        num_classes: int,
        deep_supervision: bool = False,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.spatial_dims = encoder.spatial_dims
        self.num_classes = num_classes
        self.encoder = encoder
        self.decoder = decoder
        self.head = SegmentationHead(self.spatial_dims, decoder.out_channels[0], num_classes, head_dropout)
        self.aux_heads = nn.ModuleList(
            SegmentationHead(self.spatial_dims, c, num_classes) for c in decoder.out_channels[1:]
        ) if deep_supervision else nn.ModuleList()
        self.deep_supervision = deep_supervision

    @property
    def size_divisor(self) -> int:
        return int(getattr(self.encoder, "size_divisor", 1))

    def _pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        div = self.size_divisor
        size = list(x.shape[2:])
        if div <= 1 or all(s % div == 0 for s in size):
            return x, size
        pads: list[int] = []
        for s in reversed(size):
            pads += [0, math.ceil(s / div) * div - s]
        mode = "reflect" if all(p < s for p, s in zip(pads[1::2], reversed(size))) else "replicate"
        return F.pad(x, pads, mode=mode), size

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder outputs (highest resolution first) before the heads."""
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x, size = self.prepare_input(x)
        return self.head_outputs(self.features(x), size, list(x.shape[2:]))

    def prepare_input(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Check the input's rank and pad it to a multiple of `size_divisor`:
        (padded input, original spatial size)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D input (N, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) "
                f"for spatial_dims={self.spatial_dims}, got shape {tuple(x.shape)}"
            )
        return self._pad_input(x)

    def head_outputs(self, maps: list[torch.Tensor], size: Sequence[int],
                     padded: Sequence[int]) -> torch.Tensor | list[torch.Tensor]:
        """Heads on the decoder maps of a padded input: logits cropped back to the input `size`
        (or the deep-supervision list). For subclasses that run encoder and decoder themselves."""
        size, padded = list(size), list(padded)
        logits = self.head(maps[0])
        if self.decoder.strides[0] > 1:  # encoders whose finest map is below input resolution
            logits = F.interpolate(logits, size=padded, mode=layers.interp_mode(self.spatial_dims),
                                   align_corners=False)
        if size != padded:
            logits = _crop(logits, size)
        if not self.deep_supervision:
            return logits
        aux = [_crop_fraction(head(m), size, padded) for head, m in zip(self.aux_heads, maps[1:])]
        return [logits, *aux]


def _crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if list(x.shape[2:]) == list(size):
        return x
    return x[(slice(None), slice(None), *(slice(0, s) for s in size))]


def _crop_fraction(x: torch.Tensor, size: Sequence[int], padded: Sequence[int]) -> torch.Tensor:
    """Crop a lower-resolution map by the same fraction the input was padded."""
    if list(size) == list(padded):
        return x
    keep = [max(1, math.ceil(h * s / p)) for h, s, p in zip(x.shape[2:], size, padded)]
    return _crop(x, keep)
