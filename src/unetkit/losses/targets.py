"""Shared input handling for losses: mode, dense targets, valid-pixel masks, class weights.

Every loss turns its `target` into a dense `(N, K, *S)` float tensor and a `valid` mask, so the
binary, multi-class and multi-label cases share one code path:

- class indices `(N, 1, *S)` or `(N, *S)` (any integer dtype) -> one-hot (multi-class) or the
  0/1 mask itself (binary, K == 1);
- dense `(N, K, *S)` (float, bool or integer) -> used as is (multi-label, soft labels, one-hot).

`ignore_index` pixels get `valid == 0` and contribute nothing. For multi-class the mask is
`(N, 1, *S)`; for the sigmoid modes it is per channel, `(N, K, *S)`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from unetkit.errors import ConfigError

MODES = ("auto", "binary", "multiclass", "multilabel")


def resolve_mode(mode: str, num_classes: int) -> str:
    """'auto' -> 'binary' when K == 1 else 'multiclass'; raise ConfigError when `mode` does not fit K."""
    if mode not in MODES:
        raise ConfigError(f"loss mode '{mode}' is not one of {', '.join(MODES)}")
    if mode == "auto":
        return "binary" if num_classes == 1 else "multiclass"
    if mode == "binary" and num_classes != 1:
        raise ConfigError(
            f"mode='binary' needs 1 output channel (sigmoid), got num_classes={num_classes}; "
            "use mode='multiclass' (softmax) or 'multilabel' (sigmoid per channel)")
    if mode == "multiclass" and num_classes < 2:
        raise ConfigError("mode='multiclass' needs at least 2 output channels (softmax), got 1; "
                          "use mode='binary'")
    return mode


def check_class_weights(class_weights: Sequence[float] | None, num_classes: int) -> None:
    """Raise ConfigError when the class weights do not have one entry per output channel."""
    if class_weights is not None and len(class_weights) != num_classes:
        raise ConfigError(f"class_weights has {len(class_weights)} entries but the model has "
                          f"num_classes={num_classes} output channels")


def class_weight_tensor(class_weights: Sequence[float] | None, like: Tensor) -> Tensor | None:
    """Class weights as a `(1, K, 1, ..)` tensor broadcasting against `like` `(N, K, *S)`."""
    if class_weights is None:
        return None
    check_class_weights(class_weights, like.shape[1])
    shape = (1, -1) + (1,) * (like.dim() - 2)
    return torch.as_tensor(class_weights, dtype=like.dtype, device=like.device).view(shape)


def add_channel(x: Tensor, like: Tensor) -> Tensor:
    """`(N, *S)` -> `(N, 1, *S)` when `x` lacks the channel axis that `like` `(N, K, *S)` has."""
    return x.unsqueeze(1) if x.dim() == like.dim() - 1 else x


def dense_target(logits: Tensor, target: Tensor, mode: str,
                 ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """Return `(dense (N, K, *S) float, valid (N, 1|K, *S) float)` for a resolved `mode`."""
    n, k, *spatial = logits.shape
    target = add_channel(target, logits)
    if target.shape[0] != n or list(target.shape[2:]) != spatial:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    if target.shape[1] == k:  # dense: binary masks, multi-label, one-hot or soft labels
        if mode == "multiclass":
            valid = valid.all(1, keepdim=True)
        dense = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
        return dense, valid.to(logits.dtype)
    if target.shape[1] != 1 or mode != "multiclass" or target.is_floating_point():
        raise ValueError(f"target of shape {tuple(target.shape)} and dtype {target.dtype} does not fit "
                         f"mode='{mode}' with {k} channels: give class indices (N, 1, *S) for "
                         f"multiclass or a dense (N, {k}, *S) target")
    index = torch.where(valid, target, torch.zeros_like(target))[:, 0]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= k):
        raise ValueError(f"target holds class indices outside [0, {k - 1}] "
                         f"(min {int(index.min())}, max {int(index.max())}); set ignore_index?")
    dense = F.one_hot(index.long(), k).movedim(-1, 1).to(logits.dtype)
    return dense, valid.to(logits.dtype)


def probabilities(logits: Tensor, mode: str) -> Tensor:
    """Softmax over channels for 'multiclass', sigmoid per channel otherwise; `(N, K, *S)`."""
    return logits.softmax(1) if mode == "multiclass" else logits.sigmoid()
