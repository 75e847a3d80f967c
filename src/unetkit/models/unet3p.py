"""UNet 3+ (Huang et al., "UNet 3+: A Full-Scale Connected UNet for Medical Image
Segmentation", ICASSP 2020), 2D and 3D: full-scale skips, full-scale deep supervision and the
classification-guided module (CGM)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.base import SegmentationModel
from unetkit.models.decoders.unet3p import UNet3PlusDecoder
from unetkit.models.encoders.plain import PlainEncoder
from unetkit.models.layers import LayerSpec
from unetkit.models.registry import register_model

UNET3P_FEATURES = (64, 128, 256, 512, 1024)
SUPPRESS = 100.0  # logit magnitude of the "no organ" output the CGM substitutes


class ClassificationGuidedModule(nn.Module):
    """Dropout(0.5) -> 1x1 conv to 2 -> global max-pool: does the image contain the target?
    (N, C, *S) -> (N, 2) logits (class 1: present).

    `trained_steps` (a saved buffer) counts the training steps that gave the module a
    classification loss; the model gates its output with the CGM only once it is > 0.
    """

    def __init__(self, spatial_dims: int, in_channels: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.conv = layers.conv(spatial_dims)(in_channels, 2, 1)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(x)).flatten(2).amax(dim=2)

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before the counter existed: their CGM never had a loss (untrained)
        state_dict.setdefault(prefix + "trained_steps", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# The authors' UNet_3Plus (UNet-Version/models/UNet_3Plus.py; RGB in, one class) counted.
UNET3P_PAPER_PARAMS = 26_971_777


@register_model("unet3+", tiny={"features": (4, 8, 16)}, any_size=True, paper_params=UNET3P_PAPER_PARAMS,
                paper_config={"in_channels": 3, "num_classes": 1}, paper_difference=6_528)
class UNet3Plus(SegmentationModel):
    """UNet 3+: plain-conv encoder, full-scale decoder, heads on every decoder stage and on the
    bottleneck (deep supervision, highest resolution first).

    Args: as `UNet` (spatial_dims, in_channels, num_classes, features, norm, act, dropout,
        deep_supervision), plus `cat_channels` (width of each full-scale branch, default
        features[0] = 64) and `classification_guided` (add the CGM).

    With the CGM, `forward_with_classification(x)` -> (segmentation output, (N, 2) image-level
    logits). In train mode `forward` keeps the CGM logits of its batch and the Trainer adds
    `auxiliary_loss(target)`: cross-entropy of the CGM against "the image holds foreground"
    (any label > 0), the paper's classification task. In eval mode `forward` replaces the
    segmentation of images the CGM calls empty by confident background logits (the paper
    multiplies the maps by the CGM's arg-max), but only once the CGM has been trained
    (`cgm.trained_steps > 0`): an untrained CGM never gates.

    The output heads are 3x3 convs, as the authors' `outconv` layers. Deliberate difference from
    their code: convolutions followed by batch norm have no bias (redundant: the norm's shift
    absorbs it), 6,528 parameters fewer in the paper configuration.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        features: Sequence[int] = UNET3P_FEATURES,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        cat_channels: int | None = None,
        classification_guided: bool = False,
    ) -> None:
        encoder = PlainEncoder(spatial_dims, in_channels, features, norm, act, dropout)
        decoder = UNet3PlusDecoder(spatial_dims, encoder.out_channels, encoder.strides, cat_channels, norm, act)
        super().__init__(encoder, decoder, num_classes, deep_supervision)
        conv = layers.conv(spatial_dims)
        self.head = nn.Sequential(conv(decoder.out_channels[0], num_classes, 3, padding=1))  # authors' outconv
        if deep_supervision:
            self.aux_heads = nn.ModuleList(nn.Sequential(conv(c, num_classes, 3, padding=1))
                                           for c in decoder.out_channels[1:])
        self.cgm = ClassificationGuidedModule(spatial_dims, encoder.out_channels[-1]) if classification_guided else None

    def forward_with_classification(self, x: torch.Tensor):
        """(segmentation output as `forward` without CGM gating, (N, 2) CGM logits)."""
        if self.cgm is None:
            raise ValueError("this UNet 3+ has no classification-guided module: build it with classification_guided=True")
        padded, size = self.prepare_input(x)
        feats = self.encoder(padded)
        return self.head_outputs(self.decoder(feats), size, list(padded.shape[2:])), self.cgm(feats[-1])

    def forward(self, x: torch.Tensor):
        self._cgm_logits = None
        if self.cgm is None or (not self.training and int(self.cgm.trained_steps) == 0):
            return super().forward(x)
        out, cls = self.forward_with_classification(x)
        if self.training:
            self._cgm_logits = cls
            return out
        present = cls.argmax(dim=1) == 1
        return [suppress_absent(o, present) for o in out] if isinstance(out, list) else suppress_absent(out, present)

    def auxiliary_loss(self, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor | None:
        """The CGM's classification loss for the last training forward: cross-entropy of its (N, 2)
        logits against "the image holds foreground" (any label > 0 in `target` (N, *S) or
        (N, 1, *S), `ignore_index` excluded). None without a CGM or outside training. The
        Trainer adds it to the segmentation loss (the generic auxiliary-loss hook)."""
        cls = getattr(self, "_cgm_logits", None)
        if cls is None:
            return None
        self._cgm_logits = None
        labels = target.reshape(target.shape[0], -1)
        foreground = labels > 0 if not labels.is_floating_point() else labels > 0.5
        if ignore_index is not None:
            foreground = foreground & (labels != ignore_index)
        present = foreground.any(dim=1).long()
        self.cgm.trained_steps += 1
        return F.cross_entropy(cls.float(), present)


def suppress_absent(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Logits of images where `present` (N,) is False become confident background
    (sigmoid ~ 0 for K = 1; class 0 for K > 1)."""
    fill = torch.full_like(logits, -SUPPRESS)
    if logits.shape[1] > 1:
        fill[:, 0] = SUPPRESS
    keep = present.reshape(-1, *([1] * (logits.dim() - 1)))
    return torch.where(keep, logits, fill)
