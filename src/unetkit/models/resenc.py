"""Residual-encoder U-Net (nnU-Net ResEnc; Isensee et al., "nnU-Net Revisited", MICCAI 2024).

Encoder: a 3x3(x3) stem, then per stage `blocks[i]` ResNet-D basic blocks, the first strided
(stride 2 from the second stage on). Decoder: transposed conv, concatenation with the skip and
`decoder_convs` (1) ConvNormAct per level. Instance norm, leaky ReLU, conv biases, as in the
plans nnU-Net writes (`ResEncUNetPlanner`).

Presets. nnU-Net's M, L (and XL) presets share one network rule: widths 32 * 2**i capped at 320
(3D) or 512 (2D), encoder blocks (1, 3, 4, 6, 6, 6, 6, ...) and 1 conv per decoder level. They
differ only in the GPU-memory target the planner fits the patch and batch size to (M: 8 GB,
L: 24 GB), and so in the patch size the planner picks; at equal stage counts the networks are
identical. `RESENC_PRESETS` keeps that target for the planner; the default number of stages is
the one nnU-Net reaches for a 128^3 (3D) / 512^2 (2D) patch (6 / 7).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models.base import Encoder, SegmentationModel
from unetkit.models.blocks import ConvNormAct, ResidualBlock
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model

RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
RESENC_PRESETS = {"M": {"memory_target_gb": 8}, "L": {"memory_target_gb": 24}}
_MAX_FEATURES = {1: 512, 2: 512, 3: 320}
_DEFAULT_STAGES = {1: 7, 2: 7, 3: 6}
_TINY = {"features": (4, 8, 16), "blocks": (1, 1, 2)}


def resenc_features(spatial_dims: int, stages: int | None = None, base: int = 32) -> tuple[int, ...]:
    """nnU-Net's widths: base * 2**i, capped at 320 in 3D and 512 in 2D."""
    stages = stages or _DEFAULT_STAGES[spatial_dims]
    return tuple(min(_MAX_FEATURES[spatial_dims], base * 2**i) for i in range(stages))


class ResidualEncoder(Encoder):
    """Stem conv, then stage i = `blocks[i]` ResidualBlocks with `features[i]` channels at stride 2**i.
    (N, in_channels, *S) -> [(N, features[i], *(S / 2**i))]; sizes must be multiples of
    2**(stages - 1) (`size_divisor`; SegmentationModel pads)."""

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], blocks: Sequence[int],
                 norm: LayerSpec = "instance", act: LayerSpec = "leakyrelu", conv_bias: bool | None = True) -> None:
        super().__init__()
        if len(features) < 2 or len(blocks) != len(features) or min(blocks) < 1:
            raise ValueError(f"need >= 2 stages and one block count >= 1 per stage; got features "
                             f"{tuple(features)}, blocks {tuple(blocks)}")
        self.spatial_dims = spatial_dims
        self.out_channels = list(features)
        self.strides = [2**i for i in range(len(features))]
        self.size_divisor = self.strides[-1]
        self.stem = ConvNormAct(spatial_dims, in_channels, features[0], 3, norm=norm, act=act, bias=conv_bias)
        stages, prev = [], features[0]
        for i, (f, n) in enumerate(zip(features, blocks)):
            stages.append(nn.Sequential(*(
                ResidualBlock(spatial_dims, prev if j == 0 else f, f, 2 if (i > 0 and j == 0) else 1, norm, act,
                              conv_bias)
                for j in range(n))))
            prev = f
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@register_model("resenc-unet", tiny=_TINY, dims=(3, 2), any_size=True)
class ResEncUNet(SegmentationModel):
    """Residual-encoder U-Net (nnU-Net ResEnc M/L network rule; see the module docstring).

    Args:
        spatial_dims, in_channels, num_classes: as every unetkit model.
        features: widths per stage (default: nnU-Net's rule for `spatial_dims`).
        norm, act: 'instance' and 'leakyrelu' as nnU-Net.
        deep_supervision: a list of logits, highest resolution first.
        blocks: residual blocks per encoder stage (default 1, 3, 4, 6, 6, 6, ...).
        decoder_convs: ConvNormAct per decoder level (1).
        conv_bias: conv biases (True, as nnU-Net's plans; None: only where no norm follows).
        preset: 'M' or 'L' (recorded; both give the same network at equal stages).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] | None = None,
        norm: LayerSpec = "instance",
        act: LayerSpec = "leakyrelu",
        deep_supervision: bool = False,
        blocks: Sequence[int] | None = None,
        decoder_convs: int = 1,
        conv_bias: bool | None = True,
        preset: str = "M",
    ) -> None:
        if preset not in RESENC_PRESETS:
            raise ValueError(f"preset must be one of {sorted(RESENC_PRESETS)}, got '{preset}'")
        features = tuple(features) if features is not None else resenc_features(spatial_dims)
        blocks = tuple(blocks) if blocks is not None else RESENC_BLOCKS[:len(features)]
        encoder = ResidualEncoder(spatial_dims, in_channels, features, blocks, norm, act, conv_bias)
        decoder = UNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, None, norm, act,
                              convs=decoder_convs, conv_bias=conv_bias)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        self.preset = preset
        self.memory_target_gb = RESENC_PRESETS[preset]["memory_target_gb"]


def _preset(name: str):
    def factory(spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2,
                features: Sequence[int] | None = None, deep_supervision: bool = False,
                blocks: Sequence[int] | None = None) -> ResEncUNet:
        return ResEncUNet(spatial_dims, in_channels, num_classes, features, deep_supervision=deep_supervision,
                          blocks=blocks, preset=name)

    factory.__doc__ = (f"nnU-Net ResEnc {name} (Isensee et al. 2024): residual encoder 32..320 (3D) / 512 (2D), "
                       f"blocks 1,3,4,6,6,6; planner memory target {RESENC_PRESETS[name]['memory_target_gb']} GB.")
    factory.__name__ = f"resenc_unet_{name.lower()}"
    return factory


resenc_unet_m = register_model("resenc-unet-m", tiny=_TINY, dims=(3, 2), any_size=True)(_preset("M"))
resenc_unet_l = register_model("resenc-unet-l", tiny=_TINY, dims=(3, 2), any_size=True)(_preset("L"))
