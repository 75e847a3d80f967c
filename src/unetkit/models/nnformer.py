"""nnFormer (Zhou et al., "nnFormer: Interleaved Transformer for Volumetric Segmentation",
2021): a 3D transformer U-Net with convolutional embedding and down-sampling, local volume
self-attention, global attention at the bottleneck and skip attention in the decoder."""
from __future__ import annotations

from typing import Sequence

from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.nnformer import NNFormerDecoder
from unetkit.models.encoders.nnformer import NNFormerEncoder
from unetkit.models.registry import register_model

TINY = {"features": (8, 16, 32), "depths": (1, 1, 1), "heads": (1, 1, 2), "window": (2, 2), "patch_size": 2}


@register_model("nnformer", tiny=TINY, dims=(3,), any_size=True, paper_params=150_500_000)
class NNFormer(SegmentationModel):
    """nnFormer (Synapse configuration by default): ConvEmbed (patch 4) -> LV-SA stages with
    3x3x3 stride-2 conv down-sampling -> GV-SA bottleneck -> decoder of transposed-conv
    up-sampling and skip-attention LV-SA blocks -> transposed-conv expansion -> 1x1 head.

    Args:
        spatial_dims: 3 (default; 2 also works); in_channels, num_classes, deep_supervision: as `UNet`.
        features: stage widths (192, 384, 768, 1536).
        dropout: MLP dropout. (No `norm` / `act`: LayerNorm and GELU are part of the design.)
        depths, heads: per stage; the decoder mirrors the first len - 1.
        window: LV-SA window per non-bottleneck stage ((4, 4, 8) for Synapse's 128^3 crops).
        patch_size: embedding stride (4; the paper's (2, 4, 4) suits anisotropic CT).
    Sizes are padded to a multiple of patch_size * 2**(stages - 1) (32) internally.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = (192, 384, 768, 1536),
        dropout: float = 0.0,
        deep_supervision: bool = False,
        depths: Sequence[int] = (2, 2, 2, 2),
        heads: Sequence[int] = (6, 12, 24, 48),
        window: int | Sequence[int] = (4, 4, 8),
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        encoder = NNFormerEncoder(spatial_dims, in_channels, features, depths, heads, window, patch_size, mlp_ratio,
                                  dropout)
        decoder = NNFormerDecoder(spatial_dims, encoder.out_channels, encoder.strides, depths[:-1], heads[:-1],
                                  window, mlp_ratio=mlp_ratio, dropout=dropout)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
