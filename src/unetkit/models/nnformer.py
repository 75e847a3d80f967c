"""nnFormer (Zhou et al., "nnFormer: Interleaved Transformer for Volumetric Segmentation",
2021): a 3D transformer U-Net with convolutional embedding and down-sampling, local volume
self-attention, global attention at the bottleneck and skip attention in the decoder."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.nnformer import NNFormerDecoder
from unetkit.models.encoders.nnformer import NNFormerEncoder
from unetkit.models.layers import as_tuple
from unetkit.models.registry import register_model

TINY = {"features": (8, 16, 32), "depths": (1, 1, 1), "heads": (1, 1, 2), "window": (2, 2, 2), "patch_size": 2}
# The authors' nnFormer_synapse.py: crop 64x128x128, embedding 192, patch (2, 4, 4), 14 classes,
# deep supervision (three output heads).
NNFORMER_PAPER_PARAMS = 150_054_210


@register_model("nnformer", tiny=TINY, dims=(3,), any_size=True, paper_params=NNFORMER_PAPER_PARAMS,
                paper_config={"num_classes": 14, "patch_size": (2, 4, 4), "deep_supervision": True})
class NNFormer(SegmentationModel):
    """nnFormer (Synapse configuration by default), as the authors' code: ConvEmbed (four 3x3x3
    convs) -> LV-SA stages (relative position bias, stochastic depth) with GELU + LayerNorm +
    3x3x3 stride-2 conv down-sampling and a LayerNorm on every stage output -> bottleneck
    attention over the whole map (windows of 4 on the paper's crops) -> decoder of LayerNorm +
    transposed-conv expansion and skip attention (keys/values from the skip, residual = expanded
    map + skip) -> output heads that are transposed convs by the patch size, on every decoder
    level with deep supervision.

    Args:
        spatial_dims: 3 (default; 2 also works); in_channels, num_classes, deep_supervision: as `UNet`.
        features: stage widths (192, 384, 768, 1536).
        dropout: MLP dropout. (No `norm` / `act`: LayerNorm and GELU are part of the design.)
        depths, heads: per stage; the decoder mirrors the first len - 1.
        window: window per stage, the bottleneck's last ((4, 4, 8, 4) for Synapse).
        patch_size: embedding stride, an int or one per axis (default 4; the paper's (2, 4, 4)
            suits anisotropic CT).
        drop_path: stochastic-depth rate (0.2, the authors').
    Sizes are padded to a multiple of max(patch_size) * 2**(stages - 1) (32) internally.
    The relative-position index of 3D windows is the standard one; the authors' code computes
    it with a different (non-injective) stride, so its trained weights would not transfer.
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
        window: int | Sequence[int] = (4, 4, 8, 4),
        patch_size: int | Sequence[int] = 4,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.2,
    ) -> None:
        encoder = NNFormerEncoder(spatial_dims, in_channels, features, depths, heads, window, patch_size, mlp_ratio,
                                  dropout, drop_path)
        windows = list(as_tuple(window, len(features)))
        decoder = NNFormerDecoder(spatial_dims, encoder.out_channels, encoder.strides, depths[:-1], heads[:-1],
                                  windows[:len(features) - 1], mlp_ratio=mlp_ratio, dropout=dropout,
                                  drop_path=drop_path)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        patch = tuple(int(p) for p in as_tuple(patch_size, spatial_dims))
        up = layers.conv_transpose(spatial_dims)
        # the authors' heads ("final_patch_expanding"): transposed convs by the patch size
        self.head = nn.Sequential(up(decoder.out_channels[0], num_classes, patch, stride=patch))
        if deep_supervision:
            self.aux_heads = nn.ModuleList(nn.Sequential(up(c, num_classes, patch, stride=patch))
                                           for c in decoder.out_channels[1:])
