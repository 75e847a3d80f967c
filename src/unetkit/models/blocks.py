"""Dimension-generic building blocks shared by every model in the family.

Tensors are (N, C, *spatial) with len(spatial) == spatial_dims.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.layers import LayerSpec

PADDINGS = ("same", "valid")
UP_MODES = ("transpose", "nearest", "linear")
DOWN_MODES = ("maxpool", "conv", "stride")  # "stride": the encoder strides its first conv


class ConvNormAct(nn.Sequential):
    """conv -> norm -> act (-> dropout). (N, in, *S) -> (N, out, *S') with S' = S for 'same'
    padding and stride 1, S - (k - 1) for 'valid'."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: str = "same",
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        groups: int = 1,
        bias: bool | None = None,
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got '{padding}'")
        if isinstance(kernel_size, (tuple, list)):  # per axis (anisotropic: 1 on a coarse axis)
            kernel_size = tuple(int(k) for k in kernel_size)
            pad: int | tuple = tuple((k - 1) // 2 for k in kernel_size) if padding == "same" else 0
        else:
            pad = (kernel_size - 1) // 2 if padding == "same" else 0
        if isinstance(stride, (tuple, list)):
            stride = tuple(int(t) for t in stride)
        bias = not layers.is_norm_bias_free(norm) if bias is None else bias
        super().__init__(
            layers.conv(spatial_dims)(
                in_channels, out_channels, kernel_size, stride=stride, padding=pad, groups=groups, bias=bias
            ),
            layers.make_norm(norm, spatial_dims, out_channels),
            layers.make_act(act),
        )
        if dropout > 0:
            self.append(layers.make_dropout(spatial_dims, dropout))


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise k x k(x k) ConvNormAct then pointwise 1x1 ConvNormAct (Howard et al. 2017,
    MobileNets): about k**d times fewer multiply-adds than a full conv.
    (N, in, *S) -> (N, out, *S') with S' = S for 'same' padding and stride 1."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: str = "same",
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, in_channels, kernel_size, stride, padding, norm, act,
                        groups=in_channels),
            ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=act, dropout=dropout),
        )


class ConvStack(nn.Sequential):
    """`convs` ConvNormAct in a row; the first one has `stride` (nnU-Net's StackedConvBlocks).
    (N, in, *S) -> (N, out, *ceil(S / stride)) in 'same' mode, each valid conv losing k - 1.
    `separable=True` uses DepthwiseSeparableConv (the MobileNet / lite decoders); `bias=None`
    gives the convs a bias only when no norm follows them. `stride` and `kernel_size` may be per
    axis (nnU-Net's anisotropic stages: kernel 1 along an axis that is still much coarser)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        convs: int = 2,
        stride: int | Sequence[int] = 1,
        mid_channels: int | None = None,
        padding: str = "same",
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        separable: bool = False,
        bias: bool | None = None,
        kernel_size: int | Sequence[int] = 3,
    ) -> None:
        if convs < 1:
            raise ValueError(f"a conv stack needs at least 1 conv, got {convs}")
        mid = mid_channels or out_channels
        widths = [in_channels] + [mid] * (convs - 1) + [out_channels]
        mods = []
        for i in range(convs):
            last = i == convs - 1
            if separable:
                mods.append(DepthwiseSeparableConv(spatial_dims, widths[i], widths[i + 1], kernel_size,
                                                   stride if i == 0 else 1,
                                                   padding, norm, act, dropout if last else 0.0))
            else:
                mods.append(ConvNormAct(spatial_dims, widths[i], widths[i + 1], kernel_size, stride if i == 0 else 1,
                                        padding,
                                        norm, act, dropout if last else 0.0, bias=bias))
        super().__init__(*mods)


class DoubleConv(ConvStack):
    """Two 3x3(x3) ConvNormAct: the U-Net level block. (N, in, *S) -> (N, out, *S)
    in 'same' mode, (N, out, *(S - 4)) in 'valid' mode. `separable=True` uses
    DepthwiseSeparableConv for both (the MobileNet / lite decoders)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        padding: str = "same",
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        separable: bool = False,
        stride: int | Sequence[int] = 1,
        bias: bool | None = None,
        kernel_size: int | Sequence[int] = 3,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, 2, stride, mid_channels, padding, norm, act,
                         dropout, separable, bias, kernel_size)


class ResidualBlock(nn.Module):
    """ResNet-D basic block (He et al. 2019), as in nnU-Net's residual encoder (BasicBlockD):
    conv-norm-act (stride) -> conv-norm, plus a shortcut (avg-pool when strided, then 1x1
    conv-norm when the width changes), then act. (N, in, *S) -> (N, out, *ceil(S / stride))."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 norm: LayerSpec = "instance", act: LayerSpec = "leakyrelu", bias: bool | None = None) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, stride, norm=norm, act=act, bias=bias)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm=norm, act=None, bias=bias)
        skip: list[nn.Module] = []
        if stride != 1:
            skip.append(layers.avg_pool(spatial_dims)(stride, stride))
        if in_channels != out_channels:
            skip.append(ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=None, bias=False))
        self.skip = nn.Sequential(*skip)  # empty Sequential = identity
        self.act = layers.make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return self.act(out.add_(self.skip(x)))


class Downsample(nn.Module):
    """Halve every spatial size: 2x max-pool, or a stride-2 ConvNormAct (mode='conv').
    (N, C, *S) -> (N, C_out, *(S // 2)). `factor` may be per axis ((1, 2, 2): keep the depth)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        mode: str = "maxpool",
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        factor: int | Sequence[int] = 2,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        factor = tuple(int(f) for f in factor) if isinstance(factor, (tuple, list)) else int(factor)
        if mode == "maxpool":
            if out_channels != in_channels:
                raise ValueError("max-pool downsampling keeps the channel count")
            self.op: nn.Module = layers.max_pool(spatial_dims)(factor)
        elif mode == "conv":
            self.op = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size=factor, stride=factor,
                                  padding="valid", norm=norm, act=act)
        elif mode == "stride":
            raise ValueError("down_mode='stride' has no separate downsampling layer: the encoder strides "
                             "the first conv of each level")
        else:
            raise ValueError(f"down_mode must be one of {DOWN_MODES}, got '{mode}'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double every spatial size and map channels in -> out.

    'transpose': a 2x2(x2) stride-2 transposed conv (the paper's up-convolution);
    'nearest' / 'linear': interpolation followed by a 1x1 conv. (N, in, *S) -> (N, out, *(2S)).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, mode: str = "transpose",
                 bias: bool = True, factor: int | Sequence[int] = 2) -> None:
        super().__init__()
        if mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got '{mode}'")
        self.mode = mode
        self.spatial_dims = spatial_dims
        # per axis ((1, 2, 2): an anisotropic stage that kept its depth); an int keeps the old layer
        self.factor = tuple(int(f) for f in factor) if isinstance(factor, (tuple, list)) else int(factor)
        if mode == "transpose":
            self.op: nn.Module = layers.conv_transpose(spatial_dims)(in_channels, out_channels, self.factor,
                                                                     stride=self.factor, bias=bias)
        else:
            self.op = layers.conv(spatial_dims)(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Upsample by 2, or to `size` exactly for the interpolating modes."""
        if self.mode == "transpose":
            return self.op(x)
        mode = "nearest" if self.mode == "nearest" else layers.interp_mode(self.spatial_dims)
        kw = {} if mode == "nearest" else {"align_corners": False}
        if size is None:
            scale = tuple(float(f) for f in self.factor) if isinstance(self.factor, tuple) else float(self.factor)
            x = F.interpolate(x, scale_factor=scale, mode=mode, **kw)
        else:
            x = F.interpolate(x, size=tuple(size), mode=mode, **kw)
        return self.op(x)


def pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial dims of `x` (split evenly, extra at the end) up to `size`."""
    pads: list[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(list(size))):
        diff = int(want) - int(have)
        if diff < 0:
            raise ValueError(f"cannot pad size {tuple(x.shape[2:])} to smaller size {tuple(size)}")
        pads += [diff // 2, diff - diff // 2]
    return F.pad(x, pads) if any(pads) else x


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop the spatial dims of `x` around their centre to `size` (the paper's skip cropping)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size):
        if want > have:
            raise ValueError(f"cannot crop size {tuple(x.shape[2:])} to larger size {tuple(size)}")
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pad or crop each spatial dim of `x` to `size` (centre-aligned)."""
    size = list(size)
    bigger = [max(h, w) for h, w in zip(x.shape[2:], size)]
    return center_crop(pad_to(x, bigger), size)


class UpBlock(nn.Module):
    """Decoder level: upsample the deeper map, join the skip, DoubleConv.

    'same' padding pads the upsampled map to the skip's size (odd inputs work);
    'valid' padding centre-crops the skip to the upsampled map's size (Ronneberger et al. 2015).
    (N, in, *S), skip (N, skip, *S_skip) -> (N, out, *S_skip) in 'same' mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        up_mode: str = "transpose",
        padding: str = "same",
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        up_channels: int | None = None,
        separable: bool = False,
        convs: int = 2,
        bias: bool | None = None,
        factor: int | Sequence[int] = 2,
        kernel_size: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        up_channels = up_channels or out_channels
        self.padding = padding
        # bias=None: the up conv has a bias and the convs before a norm have none (True/False: all convs)
        self.up = Upsample(spatial_dims, in_channels, up_channels, up_mode, bias=bias is not False, factor=factor)
        self.conv = ConvStack(spatial_dims, up_channels + skip_channels, out_channels, convs, padding=padding,
                              norm=norm, act=act, dropout=dropout, separable=separable, bias=bias,
                              kernel_size=kernel_size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = pad_to(self.up(x, skip.shape[2:] if self.up.mode != "transpose" else None), skip.shape[2:])
        else:
            x = self.up(x)
            skip = center_crop(skip, x.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


class SegmentationHead(nn.Sequential):
    """1x1(x1) conv to class logits (with optional dropout before it). (N, C, *S) -> (N, K, *S)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dropout > 0:
            self.append(layers.make_dropout(spatial_dims, dropout))
        self.append(layers.conv(spatial_dims)(in_channels, num_classes, 1))
