"""Swin-UNet (Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image
Segmentation", 2021): Swin encoder, symmetric Swin decoder with patch expanding; 2D and 3D."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.swin import SwinDecoder
from unetkit.models.encoders.swin import SwinEncoder
from unetkit.models.registry import register_model
from unetkit.models.transformer import drop_path_rates

TINY = {"features": (8, 16, 32), "depths": (1, 1, 1), "heads": (1, 1, 2), "window": 3, "patch_size": 2}


# The authors' SwinTransformerSys (Swin-T, window 7, img 224, RGB, 9 Synapse classes).
SWIN_UNET_PAPER_PARAMS = 27_168_900


@register_model("swin-unet", tiny=TINY, any_size=True, paper_params=SWIN_UNET_PAPER_PARAMS,
                paper_config={"in_channels": 3, "num_classes": 9})
class SwinUNet(SegmentationModel):
    """Swin-UNet: patch embedding (4x4), Swin stages with shifted windows and patch merging,
    a mirrored decoder (patch expanding, skip concatenation + linear, Swin blocks), a final
    4x patch expansion and a bias-free 1x1 head, as the authors' code: skips are each stage's
    input (before its blocks), stochastic depth rises linearly to `drop_path` over the encoder
    blocks and the decoder reuses the mirrored stage's rates, and patch merging orders the
    neighbours as official Swin, so `load_pretrained(model, "swin_tiny_patch4_window7_224.pth")`
    loads the ImageNet Swin-T weights into the encoder and (mirrored) the decoder stages.

    Args:
        spatial_dims, in_channels, num_classes, deep_supervision: as `UNet`.
        features: stage widths (96, 192, 384, 768); patch merging maps each to the next.
        dropout: MLP dropout. (No `norm` / `act`: LayerNorm and GELU are part of the design.)
        drop_path: stochastic-depth rate of the last encoder block (0.1, the authors' default).
        depths, heads: blocks and heads per stage; the decoder mirrors the first len - 1.
        window: attention window (7); patch_size: embedding patch (4).
    Sizes are padded to a multiple of patch_size * 2**(stages - 1) (32) internally; windows
    pad their maps themselves, so any size works.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (96, 192, 384, 768),
        dropout: float = 0.0,
        deep_supervision: bool = False,
        depths: Sequence[int] = (2, 2, 2, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        window: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
    ) -> None:
        encoder = SwinEncoder(spatial_dims, in_channels, features, depths, heads, window, patch_size, mlp_ratio,
                              dropout, drop_path)
        decoder = SwinDecoder(spatial_dims, encoder.out_channels, encoder.strides, None, depths[:-1], heads[:-1],
                              window, mlp_ratio, dropout, drop_path_rates(drop_path, depths)[:-1])
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        # the authors' output layer: a bias-free 1x1 conv
        self.head = nn.Sequential(layers.conv(spatial_dims)(decoder.out_channels[0], num_classes, 1, bias=False))
