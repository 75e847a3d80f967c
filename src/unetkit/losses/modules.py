"""Thin `nn.Module` wrappers over `functional`, registered in `LOSSES`.

Every module: `forward(logits (N, K, *S), target, weight=None) -> scalar` and the shared
constructor keywords `mode` ("auto" | "binary" | "multiclass" | "multilabel"), `ignore_index`,
`class_weights` (one per output channel). `weight` (per-pixel map `(N, 1, *S)` / `(N, *S)`) is used
by "ce", "focal" and the CE part of "combo"; Dice and Tversky ignore it.

`include_background` (Dice, Tversky, Combo) defaults to True, as in MONAI: the mean then includes
the background class in multiclass mode, which is stable for small batches; nnU-Net leaves it out
(`include_background=False`). Binary and multilabel outputs have no background channel, so the
option has no effect there.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn
from torch import Tensor

from unetkit.errors import ConfigError
from unetkit.losses import functional as LF
from unetkit.losses.registry import LOSSES
from unetkit.losses.targets import MODES, check_class_weights, resolve_mode


class SegLoss(nn.Module):
    """Base class: stores the shared options and checks them against the number of classes."""

    uses_weight = False  # whether forward() uses the per-pixel `weight` map

    def __init__(self, mode: str = "auto", ignore_index: int | None = None,
                 class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"{type(self).__name__}: mode '{mode}' is not one of {', '.join(MODES)}")
        self.mode = mode
        self.ignore_index = ignore_index
        self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)

    def check_num_classes(self, num_classes: int) -> None:
        """Raise ConfigError when this loss cannot be used with `num_classes` output channels."""
        try:
            resolve_mode(self.mode, num_classes)
            check_class_weights(self.class_weights, num_classes)
        except ConfigError as err:
            raise ConfigError(f"{type(self).__name__} does not fit num_classes={num_classes}: {err}") from None

    def options(self) -> dict[str, Any]:
        """Keyword arguments passed to the functional loss."""
        return {"mode": self.mode, "ignore_index": self.ignore_index, "class_weights": self.class_weights}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())


@LOSSES.register("ce", uses_weight=True)
class CrossEntropyLoss(SegLoss):
    """Cross-entropy (K > 1) or BCE with logits (K == 1 / multilabel) with per-pixel weight maps."""

    uses_weight = True

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return LF.cross_entropy(logits, target, weight, **self.options())


@LOSSES.register("focal", uses_weight=True)
class FocalLoss(SegLoss):
    """Focal loss (gamma, alpha); alpha for sigmoid modes only (multiclass: class_weights)."""

    uses_weight = True

    def __init__(self, mode: str = "auto", ignore_index: int | None = None,
                 class_weights: Sequence[float] | None = None, gamma: float = 2.0,
                 alpha: float | None = None) -> None:
        super().__init__(mode, ignore_index, class_weights)
        self.gamma, self.alpha = gamma, alpha

    def options(self) -> dict[str, Any]:
        return {**super().options(), "gamma": self.gamma, "alpha": self.alpha}

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return LF.focal_loss(logits, target, weight, **self.options())


class _RegionLoss(SegLoss):
    """Shared options of the overlap losses: include_background, smooth, per_image."""

    def __init__(self, mode: str = "auto", ignore_index: int | None = None,
                 class_weights: Sequence[float] | None = None, include_background: bool = True,
                 smooth: float = 1e-5, per_image: bool = False) -> None:
        super().__init__(mode, ignore_index, class_weights)
        self.include_background, self.smooth, self.per_image = include_background, smooth, per_image

    def options(self) -> dict[str, Any]:
        return {**super().options(), "include_background": self.include_background,
                "smooth": self.smooth, "per_image": self.per_image}


@LOSSES.register("dice")
class DiceLoss(_RegionLoss):
    """Soft Dice loss (per image or per batch); `weight` is ignored."""

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return LF.dice_loss(logits, target, **self.options())


@LOSSES.register("tversky")
class TverskyLoss(_RegionLoss):
    """Tversky loss (alpha weighs false positives, beta false negatives); `weight` is ignored."""

    def __init__(self, mode: str = "auto", ignore_index: int | None = None,
                 class_weights: Sequence[float] | None = None, include_background: bool = True,
                 smooth: float = 1e-5, per_image: bool = False, alpha: float = 0.3, beta: float = 0.7) -> None:
        super().__init__(mode, ignore_index, class_weights, include_background, smooth, per_image)
        self.alpha, self.beta = alpha, beta

    def options(self) -> dict[str, Any]:
        return {**super().options(), "alpha": self.alpha, "beta": self.beta}

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return LF.tversky_loss(logits, target, **self.options())


@LOSSES.register("combo", uses_weight=True)
class ComboLoss(_RegionLoss):
    """alpha * cross-entropy + (1 - alpha) * Dice; `weight` goes to the cross-entropy term."""

    uses_weight = True

    def __init__(self, mode: str = "auto", ignore_index: int | None = None,
                 class_weights: Sequence[float] | None = None, include_background: bool = True,
                 smooth: float = 1e-5, per_image: bool = False, alpha: float = 0.5) -> None:
        super().__init__(mode, ignore_index, class_weights, include_background, smooth, per_image)
        self.alpha = alpha

    def options(self) -> dict[str, Any]:
        return {**super().options(), "alpha": self.alpha}

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return LF.combo_loss(logits, target, weight, **self.options())


LOSSES.register("dice_ce", uses_weight=True)(ComboLoss)  # the nnU-Net name for the same loss
