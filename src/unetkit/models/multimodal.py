"""Multi-modal U-Net with middle (feature-level) fusion: one encoder per modality, one decoder.

Early fusion (stacking modalities as input channels) is what every other model does already.
Here each modality group (e.g. CT, MRI, PET; or T1 + T1c, T2, FLAIR) gets its own plain U-Net
encoder, and their feature maps are fused at every skip level before a shared U-Net decoder, as in
the multi-path / hyper-dense fusion networks (Dolz et al., "HyperDense-Net", IEEE TMI 2019;
Zhou et al., "A review: deep learning for medical image segmentation using multi-modality fusion",
Array 2019). Two fusion operators:

    "concat"     concatenate the M modality maps, then a 1x1 ConvNormAct back to C channels;
    "attention"  per-pixel softmax weights over modalities from a 1x1 conv on each map, then the
                 weighted sum (the model can lean on whichever modality is informative where).

Input (N, sum(modalities), *S), modalities in the order of `modalities` (channels per modality).
`modality_dropout` zeroes whole modalities during training (at least one is kept), so the model
copes with a missing modality at test time (Havaei et al., "HeMIS", MICCAI 2016).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from unetkit.models import layers
from unetkit.models.base import Encoder, SegmentationModel
from unetkit.models.blocks import ConvNormAct
from unetkit.models.decoders.unet import UNetDecoder
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model

FUSIONS = ("concat", "attention")


class ModalityFusion(nn.Module):
    """Fuse M maps (N, C, *S) of one level into one (N, C, *S) ('concat' or 'attention')."""

    def __init__(self, spatial_dims: int, channels: int, num_modalities: int, mode: str = "concat",
                 norm: LayerSpec = "batch", act: LayerSpec = "relu") -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got '{mode}'")
        self.mode = mode
        if mode == "concat":
            self.op = ConvNormAct(spatial_dims, channels * num_modalities, channels, kernel_size=1,
                                  norm=norm, act=act)
        else:
            self.op = layers.conv(spatial_dims)(channels, 1, 1)  # a score map per modality (shared)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.mode == "concat":
            return self.op(torch.cat(list(maps), dim=1))
        stacked = torch.stack(list(maps), dim=1)  # (N, M, C, *S)
        scores = torch.stack([self.op(m) for m in maps], dim=1)  # (N, M, 1, *S)
        return (torch.softmax(scores, dim=1) * stacked).sum(dim=1)


class MultiModalEncoder(Encoder):
    """One `PlainEncoder` per modality group, fused level by level; meets the encoder contract.

    forward(x (N, sum(modalities), *S)) -> [(N, features[i], *(S / 2**i)) for each level].
    """

    def __init__(self, spatial_dims: int, modalities: Sequence[int], features: Sequence[int],
                 norm: LayerSpec = "batch", act: LayerSpec = "relu", dropout: float = 0.0,
                 fusion: str = "concat", modality_dropout: float = 0.0) -> None:
        super().__init__()
        self.modalities = [int(m) for m in modalities]
        if not self.modalities or min(self.modalities) < 1:
            raise ValueError(f"modalities must be positive channel counts, got {tuple(modalities)}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.paths = nn.ModuleList(PlainEncoder(spatial_dims, c, features, norm, act, dropout)
                                   for c in self.modalities)
        self.spatial_dims = spatial_dims
        self.out_channels = list(self.paths[0].out_channels)
        self.strides = list(self.paths[0].strides)
        self.size_divisor = 1
        self.min_size = self.paths[0].min_size
        self.modality_dropout = modality_dropout
        self.fusions = nn.ModuleList(ModalityFusion(spatial_dims, c, len(self.modalities), fusion, norm, act)
                                     for c in self.out_channels)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, sum(modalities), *S) -> one (N, modalities[m], *S) tensor per modality."""
        if x.shape[1] != sum(self.modalities):
            raise ValueError(f"multimodal-unet expects {sum(self.modalities)} input channels split as "
                             f"modalities={tuple(self.modalities)} (channels per modality), got {x.shape[1]}")
        return list(torch.split(x, self.modalities, dim=1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = self.split(x)
        if self.training and self.modality_dropout > 0:
            parts = self._drop_modalities(parts)
        per_modality = [path(part) for path, part in zip(self.paths, parts)]
        return [fuse(level) for fuse, level in zip(self.fusions, zip(*per_modality))]

    def _drop_modalities(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        n, m = parts[0].shape[0], len(parts)
        keep = torch.rand(n, m, device=parts[0].device) >= self.modality_dropout
        keep[keep.sum(1) == 0, int(torch.randint(m, (1,)))] = True  # never drop them all
        shape = (n, 1) + (1,) * self.spatial_dims
        return [p * keep[:, i].view(shape).to(p.dtype) for i, p in enumerate(parts)]


@register_model("multimodal-unet", tiny={"features": (4, 8, 16)}, any_size=True)
class MultiModalUNet(SegmentationModel):
    """`MultiModalEncoder` (an encoder per modality, fused at every level) + a shared U-Net decoder.

    Args:
        spatial_dims, in_channels, num_classes, features, norm, act, dropout, deep_supervision:
            as `UNet`; `in_channels` must equal `sum(modalities)`.
        modalities: channels of each modality group, in input-channel order, e.g. (1, 1, 1) for
            CT, MRI, PET or (2, 1) for T1 + T1c, FLAIR. Default: one modality per input channel.
        fusion: "concat" (concatenation + 1x1 conv) or "attention" (softmax-weighted sum).
        modality_dropout: training-time probability of zeroing each modality (HeMIS-style).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 2,
        num_classes: int = 2,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        modalities: Sequence[int] | None = None,
        fusion: str = "concat",
        modality_dropout: float = 0.0,
    ) -> None:
        modalities = [1] * in_channels if modalities is None else list(modalities)
        if sum(modalities) != in_channels:
            raise ValueError(f"modalities {tuple(modalities)} (channels per modality) add up to {sum(modalities)}, "
                             f"not in_channels={in_channels}")
        encoder = MultiModalEncoder(spatial_dims, modalities, features, norm, act, dropout, fusion, modality_dropout)
        decoder = UNetDecoder(spatial_dims, encoder.out_channels, encoder.strides, None, norm, act)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
