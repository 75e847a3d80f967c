"""The classic U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), 2D and 3D (Cicek et al. 2016).

`UNet` covers any depth and width, same or valid padding, transposed or interpolating
upsampling; `unet-original` is the paper's network: 572x572 in, 388x388 out.
"""
from __future__ import annotations

from typing import Sequence

from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.layers import LayerSpec, as_tuple
from unetkit.models.registry import register_model

CLASSIC_FEATURES = (64, 128, 256, 512, 1024)


@register_model("unet", tiny={"features": (4, 8, 16)}, any_size=True)
class UNet(SegmentationModel):
    """U-Net: plain-conv encoder, U-Net decoder, 1x1 head.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: input channels (modalities).
        num_classes: output channels (1 for binary with sigmoid; K for softmax).
        features: channels per level; depth = len(features).
        norm, act, dropout: normalisation, activation, bottleneck channel dropout.
        deep_supervision: return a list of logits (highest resolution first).
        up_mode: 'transpose' (2x2 up-convolution), 'nearest' or 'linear' (+1x1 conv).
        padding: 'same' (output size = input size, any size) or 'valid' (the paper's
            unpadded convolutions; see `output_size` and `valid_input_sizes`).
        down_mode: 'maxpool', 'conv' (a separate stride-2 2x2 convolution) or 'stride' (the first
            3x3 conv of each level is strided, as in nnU-Net's PlainConvUNet: same parameters and
            FLOPs at equal widths; inputs are padded to a multiple of 2**(depth - 1)).
        decoder_features: decoder widths per level above the deepest (default: encoder widths).
        conv_bias: None (default) gives convs a bias only when no norm follows them (and the
            up-convolutions one); True / False gives every conv and up-convolution one / none
            (nnU-Net's `conv_bias`; its plans use True).
        strides: per level below the top, the down-sampling factor per axis, e.g.
            [[1, 2, 2], [1, 2, 2], [2, 2, 2]] for thick-slice volumes (nnU-Net's
            `pool_op_kernel_sizes` / PlainConvUNet `strides`; a leading [1, 1, 1] is accepted).
            None: 2 on every axis. The decoder up-samples by the same factors.
        kernel_sizes: per level, the conv kernel per axis, e.g. [1, 3, 3] on levels where the
            thick axis is still much coarser (nnU-Net's `conv_kernel_sizes`). None: 3 everywhere.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = CLASSIC_FEATURES,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        up_mode: str = "transpose",
        padding: str = "same",
        down_mode: str = "maxpool",
        decoder_features: Sequence[int] | None = None,
        conv_bias: bool | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        encoder = PlainEncoder(spatial_dims, in_channels, features, norm, act, dropout, padding, down_mode, conv_bias,
                               strides, kernel_sizes)
        geometry = {"stage_strides": encoder.stage_strides, "kernel_sizes": encoder.kernel_sizes} \
            if encoder.anisotropic else {}
        decoder = UNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, decoder_features,
                              norm, act, 0.0, up_mode, padding, conv_bias=conv_bias, **geometry)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        self.padding = padding
        self.depth = len(features)

    # ---- valid-mode size arithmetic -------------------------------------------------------
    def check_input_size(self, size: Sequence[int]) -> None:
        """'valid' padding: every size must be one the network maps without misaligned skips
        (raises ValueError naming the nearest valid sizes); 'same' pads tiny inputs instead."""
        if self.padding == "valid":
            self.output_size(tuple(size))

    def output_size(self, input_size: int | Sequence[int]) -> tuple[int, ...]:
        """Output size for an input size. 'same': unchanged. 'valid': each level loses 4 px
        (two unpadded 3x3 convs) and sizes must be even before every pooling."""
        size = as_tuple(input_size, self.spatial_dims)
        if self.padding == "same":
            return tuple(int(s) for s in size)
        return tuple(valid_output_size(int(s), self.depth) for s in size)

    def valid_input_sizes(self, near: int, count: int = 2) -> list[int]:
        """Valid-mode input sizes closest to `near` (`count` below or equal and above)."""
        return nearest_valid_sizes(near, self.depth, count)


def valid_output_size(size: int, depth: int) -> int:
    """Output size of a valid-padding U-Net of `depth` levels; raises if `size` is not valid."""
    s = size
    for level in range(depth):
        s -= 4
        if s <= 0:
            raise ValueError(f"input size {size} is too small for a valid-padding U-Net of depth {depth}; "
                             f"nearest valid sizes: {nearest_valid_sizes(size, depth, 1)}")
        if level < depth - 1:
            if s % 2:
                near = nearest_valid_sizes(size, depth, 1)
                raise ValueError(
                    f"input size {size} is not valid for a valid-padding U-Net of depth {depth}: "
                    f"the map before pooling {level + 1} has odd size {s}; nearest valid sizes: {near}"
                )
            s //= 2
    for _ in range(depth - 1):
        s = 2 * s - 4
        if s <= 0:
            raise ValueError(f"input size {size} is too small for a valid-padding U-Net of depth {depth}; "
                             f"nearest valid sizes: {nearest_valid_sizes(size, depth, 1)}")
    return s


def nearest_valid_sizes(near: int, depth: int, count: int = 2) -> list[int]:
    """Valid input sizes around `near`: `count` at or below it and `count` above it."""
    # walk up from the bottom level's output size b: each level above doubles and adds 4 px
    def size_for_bottom(b: int) -> int:
        s = b
        for _ in range(depth - 1):
            s = 2 * (s + 4)
        return s + 4

    def output_positive(b: int) -> bool:
        for _ in range(depth - 1):
            b = 2 * b - 4
            if b <= 0:
                return False
        return True

    below, above, b = [], [], 1
    while len(above) < count:
        if output_positive(b):
            s = size_for_bottom(b)
            (below if s <= near else above).append(s)
        b += 1
    return below[-count:] + above


@register_model("unet-original", tiny={"features": (4, 8, 16)}, dims=(2,), any_size=False)
def unet_original(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    features: Sequence[int] = CLASSIC_FEATURES,
    dropout: float = 0.5,
    deep_supervision: bool = False,
) -> UNet:
    """The 2015 network: valid 3x3 convs + ReLU, no normalisation, 2x2 up-convolutions,
    dropout at the end of the contracting path; 572x572 -> 388x388 (overlap-tile inference)."""
    return UNet(spatial_dims, in_channels, num_classes, features, norm="none", act="relu", dropout=dropout,
                deep_supervision=deep_supervision, up_mode="transpose", padding="valid")
