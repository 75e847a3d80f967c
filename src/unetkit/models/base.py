"""The encoder | decoder | head contract every model in unetkit follows.

Encoder contract
    forward(x: (N, C_in, *S)) -> list of feature maps, highest resolution first;
    attributes `spatial_dims`, `out_channels: list[int]` (channels of each map),
    `strides: list[int]` (each map's size reduction against the input),
    `size_divisor: int` (input sizes must be multiples of it; 1 when any size works) and
    `min_size: int` (the smallest size every level can take; default 1); encoders that pool the
    axes differently (anisotropic U-Nets) give both per axis as tuples, and `axis_strides`
    (each map's reduction per axis).

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
from unetkit.models.blocks import SegmentationHead, center_crop


class Encoder(nn.Module):
    """Base class documenting the encoder contract (see module docstring)."""

    spatial_dims: int
    out_channels: list[int]
    strides: list[int]
    size_divisor: int = 1
    min_size: int = 1


class Decoder(nn.Module):
    """Base class documenting the decoder contract (see module docstring)."""

    out_channels: list[int]
    strides: list[int]


class SegmentationModel(nn.Module):
    """encoder -> decoder -> 1x1 head (+ deep-supervision heads).

    forward(x: (N, C_in, *S)) returns logits (N, num_classes, *S) when `deep_supervision` is
    off, and a list of logits, highest resolution first, when it is on: the first at the input
    size, the others at their decoder level's size (the deep-supervision loss resizes targets);
    with valid padding all of them at the output size, aligned (see `_valid_aux`).
    Inputs whose size is not a multiple of `encoder.size_divisor`, or below `encoder.min_size`,
    are padded (reflect, or replicate where reflect cannot reach) and the output cropped back,
    so every same-padding model accepts any input size. Models whose sizes are constrained
    otherwise (valid padding) check them in `check_input_size` before any work.
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
        """The largest per-axis divisor (see `size_divisors`)."""
        return max(self.size_divisors)

    @property
    def min_size(self) -> int:
        return max(self.min_sizes)

    @property
    def size_divisors(self) -> tuple[int, ...]:
        """Per axis: input sizes are padded to a multiple of this (anisotropic U-Nets differ per axis)."""
        return _per_axis(getattr(self.encoder, "size_divisor", 1), self.spatial_dims)

    @property
    def min_sizes(self) -> tuple[int, ...]:
        """Per axis: the smallest size every level can take (smaller inputs are padded up to it)."""
        return _per_axis(getattr(self.encoder, "min_size", 1), self.spatial_dims)

    def padded_size(self, size: int, axis: int | None = None) -> int:
        """The size an input of `size` is padded to along `axis` (None: the largest per-axis
        requirement): a multiple of the size divisor, >= the minimum size."""
        div = max(1, self.size_divisor if axis is None else self.size_divisors[axis])
        least = self.min_size if axis is None else self.min_sizes[axis]
        return max(math.ceil(size / div) * div, math.ceil(least / div) * div)

    def check_input_size(self, size: Sequence[int]) -> None:
        """Raise ValueError for spatial sizes this model cannot take (hook; any size by default)."""

    def _pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        size = list(x.shape[2:])
        target = [self.padded_size(s, axis) for axis, s in enumerate(size)]
        if target == size:
            return x, size
        pads: list[int] = []
        for s, t in zip(reversed(size), reversed(target)):
            pads += [0, t - s]
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
        self.check_input_size(list(x.shape[2:]))
        return self._pad_input(x)

    def head_outputs(self, maps: list[torch.Tensor], size: Sequence[int],
                     padded: Sequence[int]) -> torch.Tensor | list[torch.Tensor]:
        """Heads on the decoder maps of a padded input: logits cropped back to the input `size`
        (or the deep-supervision list). For subclasses that run encoder and decoder themselves."""
        size, padded = list(size), list(padded)
        logits = self.head(maps[0])
        if self.decoder.strides[0] > 1 and list(logits.shape[2:]) != padded:  # coarse maps under a 1x1 head
            logits = F.interpolate(logits, size=padded, mode=layers.interp_mode(self.spatial_dims),
                                   align_corners=False)
        if size != padded:
            logits = _crop(logits, size)
        if not self.deep_supervision:
            return logits
        if getattr(self.encoder, "padding", "same") == "valid":
            return [logits, *self._valid_aux(maps[1:], logits.shape[2:])]
        aux = [_crop_fraction(head(m), size, padded) for head, m in zip(self.aux_heads, maps[1:])]
        return [logits, *aux]

    def _valid_aux(self, maps: list[torch.Tensor], out_size: Sequence[int]) -> list[torch.Tensor]:
        """Valid padding: a decoder map of size s at stride r covers the centred s * r input pixels,
        the output only the centred `out_size`; resizing the (cropped) target to s would misalign
        it by up to ~2 coarse pixels. So each auxiliary logit map is up-sampled by r onto the
        input grid and centre-cropped to the output: every deep-supervision output is then at the
        output size, pixel-aligned with it and its target."""
        mode = layers.interp_mode(self.spatial_dims)
        outs = []
        for head, m, stride in zip(self.aux_heads, maps, self.decoder.strides[1:]):
            a = head(m)
            if stride > 1:
                a = F.interpolate(a, scale_factor=float(stride), mode=mode, align_corners=False)
            outs.append(center_crop(a, out_size))
        return outs


def _per_axis(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * dims


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
