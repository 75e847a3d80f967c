"""Lite and real-time U-Net presets: the classic U-Net (Ronneberger et al. 2015) with reduced
width and depth and cheap resampling, for CPUs and small GPUs."""
from __future__ import annotations

from typing import Sequence

from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model
from unetkit.models.unet import UNet


@register_model("unet-lite", tiny={"features": (4, 8, 16)}, any_size=True)
def unet_lite(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    features: Sequence[int] = (16, 32, 64, 128, 256),
    norm: LayerSpec = "batch",
    act: LayerSpec = "relu",
    dropout: float = 0.0,
    deep_supervision: bool = False,
) -> UNet:
    """U-Net at a quarter of the classic width (16..256): ~1/16 of its FLOPs; max-pool down,
    linear up-sampling + 1x1 conv instead of 2x2 up-convolutions."""
    return UNet(spatial_dims, in_channels, num_classes, features, norm, act, dropout, deep_supervision,
                up_mode="linear", down_mode="maxpool")


@register_model("unet-realtime", tiny={"features": (4, 8, 16)}, any_size=True)
def unet_realtime(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    features: Sequence[int] = (8, 16, 32, 64),
    norm: LayerSpec = "batch",
    act: LayerSpec = "relu",
    dropout: float = 0.0,
    deep_supervision: bool = False,
) -> UNet:
    """Four levels at 8..64 channels, max-pool down, nearest up-sampling + 1x1 conv: the
    cheapest member of the family, for real-time CPU inference."""
    return UNet(spatial_dims, in_channels, num_classes, features, norm, act, dropout, deep_supervision,
                up_mode="nearest", down_mode="maxpool")
