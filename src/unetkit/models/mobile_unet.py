"""MobileNet U-Net: a MobileNetV2 encoder (Sandler et al., CVPR 2018) under a U-Net decoder of
depthwise-separable convolutions (Howard et al. 2017), 2D and 3D."""
from __future__ import annotations

from typing import Sequence

from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.encoders.mobilenet import MobileNetEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model


@register_model("mobile-unet", tiny={"width_mult": 0.25, "depth": 3}, any_size=True)
class MobileUNet(SegmentationModel):
    """MobileNetV2 encoder (levels at strides 2..32) + separable U-Net decoder; the head's
    stride-2 logits are linearly up-sampled to the input size.

    Args:
        spatial_dims, in_channels, num_classes, norm, act (default 'relu6'), deep_supervision:
            as `UNet`.
        features: decoder widths per level above the deepest, highest resolution first
            (default: the encoder's widths there, 16, 24, 32, 96 at width 1.0).
        dropout: channel dropout before the head.
        width_mult: MobileNetV2 width multiplier (1.0, 0.75, 0.5, 0.35, ...).
        depth: encoder levels (2-5; 5 reaches stride 32; others raise ValueError).
        up_mode: 'linear' (bilinear / trilinear + 1x1 conv, default), 'nearest' or 'transpose'.
    Sizes are padded to a multiple of 2**depth internally.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu6",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        width_mult: float = 1.0,
        depth: int = 5,
        up_mode: str = "linear",
    ) -> None:
        encoder = MobileNetEncoder(spatial_dims, in_channels, width_mult, depth, norm, act)
        decoder = UNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, features, norm, act,
                              up_mode=up_mode, separable=True)
        super().__init__(encoder, decoder, num_classes, deep_supervision, head_dropout=dropout)
