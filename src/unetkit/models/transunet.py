"""TransUNet (Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation", 2021): R50-ViT-B/16 hybrid encoder + cascaded upsampler with skips; 2D and 3D."""
from __future__ import annotations

from typing import Sequence

from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.encoders.vit import ViTEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model

TINY = {"features": (8, 8), "cnn_blocks": (1, 1), "cnn_width": 4, "hidden": 16, "depth": 1, "heads": 2,
        "mlp_dim": 32, "img_size": 32}


@register_model("transunet", tiny=TINY, any_size=True, paper_params=105_280_000)
class TransUNet(SegmentationModel):
    """CNN (ResNet stages) -> ViT on the CNN's deepest map (1x1 patches) -> 3x3 conv readout ->
    cascaded upsampler: linear 2x up-sampling, skip concatenation, two 3x3 ConvNormAct per level.

    Args:
        spatial_dims, in_channels, num_classes, norm, act, deep_supervision: as `UNet`.
        features: upsampler widths, highest resolution first (the paper's 256, 128, 64 read
            from the stride-2 level up: (64, 128, 256)); one per CNN skip.
        dropout: ViT dropout (0.1 in the paper's training).
        cnn_blocks, cnn_width, hidden, depth, heads, mlp_dim, patch_size, img_size: see `ViTEncoder`.
    The head works at stride 2 and its logits are linearly up-sampled (the paper's last,
    skip-less 16-channel stage is left out). Sizes are padded to a multiple of 16 internally;
    other sizes than `img_size` interpolate the position embedding.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (64, 128, 256),
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
    ) -> None:
        encoder = ViTEncoder(spatial_dims, in_channels, cnn_blocks, cnn_width, hidden, depth, heads, mlp_dim,
                             patch_size, img_size, readout_channels=2 * features[-1], norm=norm, act=act,
                             dropout=dropout)
        decoder = UNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, features, norm, act,
                              up_mode="linear")
        super().__init__(encoder, decoder, num_classes, deep_supervision)
