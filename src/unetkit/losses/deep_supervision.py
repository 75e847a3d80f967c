"""Deep supervision: one loss over a list of outputs, highest resolution first (nnU-Net style)."""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from unetkit.errors import ConfigError
from unetkit.losses.registry import create_loss


def resize_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a target or weight map `(N, C, *S)` / `(N, *S)` to spatial `size`.

    Integer/bool tensors (labels) use nearest neighbour, so class indices and `ignore_index`
    survive; float tensors (dense targets, weight maps) use area averaging.
    """
    squeeze = x.dim() == len(size) + 1
    y = x.unsqueeze(1) if squeeze else x
    if tuple(y.shape[2:]) != tuple(size):
        if y.is_floating_point():
            y = F.interpolate(y, size=tuple(size), mode="area")
        else:
            y = F.interpolate(y.float(), size=tuple(size), mode="nearest").to(x.dtype)
    return y.squeeze(1) if squeeze else y


def default_weights(levels: int) -> list[float]:
    """1, 1/2, 1/4, ... normalised to sum to 1."""
    raw = [0.5 ** i for i in range(levels)]
    return [w / sum(raw) for w in raw]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of `base_loss` over outputs `[(N, K, *S0), (N, K, *S1), ...]`, highest resolution first.

    The full-resolution `target` (and `weight` map) is resized to each output. `weights` default
    to halving per level, normalised; given weights are used as they are (the list may be longer than
    the number of outputs). A plain tensor output is passed to `base_loss` unchanged.
    `base_loss` may be a module or a registered name (then built with `**base_kwargs`).
    """

    def __init__(self, base_loss: nn.Module | str, weights: Sequence[float] | None = None,
                 **base_kwargs: Any) -> None:
        super().__init__()
        self.base = create_loss(base_loss, **base_kwargs) if isinstance(base_loss, str) else base_loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def level_weights(self, levels: int) -> list[float]:
        if self.weights is None:
            return default_weights(levels)
        if len(self.weights) < levels:
            raise ConfigError(f"deep supervision: {levels} outputs but only {len(self.weights)} weights")
        return self.weights[:levels]

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor, weight: Tensor | None = None) -> Tensor:
        if isinstance(outputs, Tensor):
            return self.base(outputs, target, weight)
        total = 0.0
        for w, out in zip(self.level_weights(len(outputs)), outputs):
            size = out.shape[2:]
            level_weight = None if weight is None else resize_to(weight, size)
            total = total + w * self.base(out, resize_to(target, size), level_weight)
        return total

    def check_num_classes(self, num_classes: int) -> None:
        check = getattr(self.base, "check_num_classes", None)
        if check is not None:
            check(num_classes)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to a scheduled base loss (e.g. "boundary")."""
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def step(self) -> None:
        if hasattr(self.base, "step"):
            self.base.step()
