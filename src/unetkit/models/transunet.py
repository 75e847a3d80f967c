"""TransUNet (Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation", 2021): R50-ViT-B/16 hybrid encoder + cascaded upsampler with skips; 2D and 3D."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.transunet import CascadedUpsampler
from unetkit.models.encoders.vit import ViTEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model

TINY = {"features": (4, 8, 8), "cnn_blocks": (1, 1), "cnn_width": 4, "hidden": 16, "depth": 1, "heads": 2,
        "mlp_dim": 32, "img_size": 32}
# The authors' code (networks/vit_seg_modeling.py, R50-ViT-B_16, img 224, 9 Synapse classes, RGB input).
TRANSUNET_PAPER_PARAMS = 105_277_081


@register_model("transunet", tiny=TINY, any_size=True, paper_params=TRANSUNET_PAPER_PARAMS,
                paper_config={"in_channels": 3, "num_classes": 9})
class TransUNet(SegmentationModel):
    """CNN (ResNet stages, weight-standardised convs + GroupNorm as the published R50) -> ViT on
    the CNN's deepest map (1x1 patches) -> 3x3 ConvNormAct readout (512) -> cascaded upsampler:
    bilinear 2x up-sampling, skip concatenation, two 3x3 ConvNormAct per level, a last skip-less
    level at full resolution -> 3x3 conv head, as the authors' code.

    Args:
        spatial_dims, in_channels, num_classes, norm, act, deep_supervision: as `UNet`
            (`norm` is the decoder's; the R50's follows `cnn_style`).
        features: upsampler widths, highest resolution first (the paper's 256, 128, 64, 16 read
            from the full-resolution level up: (16, 64, 128, 256)); one per CNN skip plus one.
        dropout: ViT dropout (0.1 in the paper's training).
        cnn_blocks, cnn_width, hidden, depth, heads, mlp_dim, patch_size, img_size: see `ViTEncoder`.
        cnn_style: 'bit' (default; loads the published R50+ViT-B_16 weights) or 'torchvision'.
    One input channel is repeated to RGB for the R50 stem, as the authors do. Sizes are padded
    to a multiple of 16 internally; sizes other than `img_size` interpolate the position
    embedding. `unetkit.models.pretrained.load_pretrained(model, "R50+ViT-B_16.npz")` loads
    the published ImageNet-21k weights.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (16, 64, 128, 256),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        cnn_blocks: Sequence[int] = (3, 4, 9),
        cnn_width: int = 64,
        hidden: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int = 3072,
        patch_size: int = 1,
        img_size: int = 224,
        cnn_style: str = "bit",
    ) -> None:
        encoder = ViTEncoder(spatial_dims, in_channels, cnn_blocks, cnn_width, hidden, depth, heads, mlp_dim,
                             patch_size, img_size, readout_channels=2 * features[-1], norm=norm, act=act,
                             dropout=dropout, cnn_style=cnn_style)
        decoder = CascadedUpsampler(spatial_dims, encoder.out_channels, encoder.strides, features, norm, act)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        # the authors' head is a 3x3 conv (same parameter name as the family's 1x1 head)
        self.head = nn.Sequential(layers.conv(spatial_dims)(features[0], num_classes, 3, padding=1))
