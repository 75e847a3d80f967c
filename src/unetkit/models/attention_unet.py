"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas",
MIDL 2018), 2D and 3D: a U-Net whose skips pass through additive attention gates."""
from __future__ import annotations

from typing import Sequence

import torch

from unetkit.models.base import SegmentationModel, _crop_fraction
from unetkit.models.decoders.attention import AttentionUNetDecoder
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model

# The paper's network is 3D with 16..256 channels (feature scale 4 of 64..1024 in its code).
ATTENTION_FEATURES = (16, 32, 64, 128, 256)


# The official `unet_CT_single_att_dsv_3D` (feature_scale 4, in_channels 1, n_classes 2) counted:
# 6,213,613 parameters. unetkit's 3D paper configuration with deep supervision has 2,194 fewer:
# the 2,176 biases of convolutions followed by batch norm (redundant: the norm's shift absorbs
# them; the whole family builds such convs without bias) and the official 1x1 conv (18) that
# fuses the four deep-supervision maps into its single output (unetkit keeps the family's
# deep-supervision contract: a loss on each head, the full-resolution head predicts).
ATTENTION_PAPER_PARAMS = 6_213_613


@register_model("attention-unet", tiny={"features": (4, 8, 16)}, any_size=True,
                paper_params=ATTENTION_PAPER_PARAMS, paper_config={"spatial_dims": 3, "deep_supervision": True},
                paper_difference=2_176 + 18)
class AttentionUNet(SegmentationModel):
    """Attention U-Net: plain-conv encoder, attention-gated U-Net decoder, 1x1 head, as in the
    authors' code: the three coarser skips are gated (not the finest), gates have the
    full skip width inside, an output transform and a combining layer, the deepest gate is
    driven by a 1x1 "gating signal" conv of the bottleneck, and the decoder up-samples linearly.

    Args: as `UNet` (spatial_dims, in_channels, num_classes, features, norm, act, dropout,
        deep_supervision, up_mode: default 'interp', the official linear up-sampling without a
        conv), plus `inter_channels` per gate (default the skip width).

    forward(x) -> logits (N, K, *S); `attention_maps(x)` -> the gates' coefficients.
    Deliberate differences from the official network: no conv biases before batch norm, and
    deep supervision as a loss on each head instead of a 1x1 conv fusing the heads.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = ATTENTION_FEATURES,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        up_mode: str = "interp",
        inter_channels: Sequence[int] | None = None,
    ) -> None:
        encoder = PlainEncoder(spatial_dims, in_channels, features, norm, act, dropout)
        decoder = AttentionUNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, None, norm, act, 0.0,
                                       up_mode, inter_channels)
        super().__init__(encoder, decoder, num_classes, deep_supervision)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return attention_maps(self, x)


def attention_maps(model: SegmentationModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Attention coefficients of a model with an attention-gated decoder (any encoder):
    x (N, C, *S) -> [(N, 1, *S_level) in [0, 1]] for each gated skip, highest resolution first,
    cropped like the input (the overlay tools resize them to the image)."""
    padded_x, size = model.prepare_input(x)
    _, alphas = model.decoder(model.encoder(padded_x), return_attention=True)
    return [_crop_fraction(a, size, list(padded_x.shape[2:])) for a in alphas]
