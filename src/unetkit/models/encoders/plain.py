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

    Anisotropic data (nnU-Net's per-axis pooling): `strides` gives, per level below the top, the
    down-sampling factor per axis (e.g. [[1, 2, 2], [1, 2, 2], [2, 2, 2]]: keep the thick axis for
    two levels), and `kernel_sizes`, per level, the conv kernel per axis (e.g. [1, 3, 3] where an
    axis is still much coarser). An int stands for every axis. None (the default) is 2 and 3
    everywhere, the same layers as before. `axis_strides[i]` is level i's reduction per axis;
    `size_divisor` / `min_size` are then per-axis tuples.
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
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
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
        steps, kernels = stage_geometry(spatial_dims, len(features), strides, kernel_sizes)
        self.anisotropic = strides is not None or kernel_sizes is not None
        if self.anisotropic and padding != "same":
            raise ValueError("per-axis strides / kernel_sizes need padding='same'")
        self.stage_strides = steps  # per level below the top: the factor per axis
        self.kernel_sizes = kernels  # per level: the kernel per axis
        self.axis_strides = [tuple([1] * spatial_dims)]
        for step in steps:
            self.axis_strides.append(tuple(a * b for a, b in zip(self.axis_strides[-1], step)))
        # the contract's scalar strides: the largest reduction of each level
        self.strides = [max(s) for s in self.axis_strides]
        total = self.axis_strides[-1]
        if self.anisotropic:
            self.size_divisor: int | tuple = total if strided else 1
            self.min_size: int | tuple = total
        else:
            self.size_divisor = self.strides[-1] if strided else 1
            # 'same': every pooling needs a map of >= 2 (smaller inputs are padded up to this);
            # 'valid': sizes are checked by the model (see UNet.check_input_size), never padded
            self.min_size = 2 ** (len(features) - 1) if padding == "same" else 1
        self.downs = nn.ModuleList()
        self.levels = nn.ModuleList()
        prev = in_channels
        for i, f in enumerate(features):
            step = (steps[i - 1] if self.anisotropic else 2) if i > 0 else 1
            kernel = kernels[i] if self.anisotropic else 3
            if i > 0 and not strided:
                self.downs.append(Downsample(spatial_dims, prev, prev, down_mode, norm, act, factor=step))
            self.levels.append(DoubleConv(spatial_dims, prev, f, padding=padding, norm=norm, act=act,
                                          stride=step if strided else 1, bias=conv_bias, kernel_size=kernel))
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


def stage_geometry(spatial_dims: int, levels: int, strides: Sequence[int | Sequence[int]] | None,
                   kernel_sizes: Sequence[int | Sequence[int]] | None
                   ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(down-sampling factor per axis for each level below the top, kernel per axis for each level),
    checked. `strides` has one entry per level below the top (nnU-Net's form, with a leading all-ones
    entry for the top level, is accepted too); an int entry stands for every axis."""
    def per_axis(value, what: str, i: int) -> tuple[int, ...]:
        t = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * spatial_dims
        if len(t) != spatial_dims or any(v < 1 for v in t):
            raise ValueError(f"{what}[{i}] = {value!r}: needs {spatial_dims} positive entries (one per axis)")
        return t

    if strides is None:
        steps = [(2,) * spatial_dims] * (levels - 1)
    else:
        steps = [per_axis(s, "strides", i) for i, s in enumerate(strides)]
        if len(steps) == levels and steps[0] == (1,) * spatial_dims:
            steps = steps[1:]
        if len(steps) != levels - 1:
            raise ValueError(f"strides needs {levels - 1} entries (one per level below the top) for "
                             f"{levels} levels, got {len(steps)}")
        if any(v > 2 for s in steps for v in s):
            raise ValueError(f"strides {strides}: factors must be 1 or 2 per axis")
    if kernel_sizes is None:
        kernels = [(3,) * spatial_dims] * levels
    else:
        kernels = [per_axis(k, "kernel_sizes", i) for i, k in enumerate(kernel_sizes)]
        if len(kernels) != levels:
            raise ValueError(f"kernel_sizes needs {levels} entries (one per level), got {len(kernels)}")
        if any(v % 2 == 0 for k in kernels for v in k):
            raise ValueError(f"kernel_sizes {kernel_sizes}: kernels must be odd")
    return steps, kernels
