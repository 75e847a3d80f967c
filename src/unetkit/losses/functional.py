"""Loss functions over tensors, one signature: `loss(logits, target, weight=None, *, mode, ...)`.

Shapes: `logits (N, K, *S)` with `len(S)` 2 or 3; `target` class indices `(N, 1, *S)` / `(N, *S)`
or dense `(N, K, *S)` (see `targets.py`); `weight` an optional per-pixel weight map `(N, 1, *S)` /
`(N, *S)`. All return a scalar.

- Pixel losses (cross-entropy, focal) average `weight * loss` over the non-ignored pixels
  (sigmoid modes: over non-ignored pixels x channels). With `class_weights` this is the sum
  divided by the pixel count, *not* torch's weighted mean (which divides by the summed weights).
- Region losses (Dice, Tversky) ignore `weight`; ignored pixels are left out of the soft counts.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from unetkit.errors import ConfigError
from unetkit.losses.targets import (add_channel, check_class_weights, class_weight_tensor, dense_target,
                                   probabilities, resolve_mode)


def _mean_over_valid(loss: Tensor, valid: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of `loss * weight` over valid entries; `loss` `(N, C, *S)`, `valid` broadcastable."""
    if weight is not None:
        loss = loss * add_channel(weight, loss).to(loss.dtype)
    valid = valid.expand_as(loss)
    return (loss * valid).sum() / valid.sum().clamp_min(1.0)


def _pixel_loss(logits: Tensor, dense: Tensor, mode: str, gamma: float, alpha: float | None,
                class_weights: Sequence[float] | None) -> Tensor:
    """Per-pixel (focal) cross-entropy: `(N, 1, *S)` for multiclass, `(N, K, *S)` for sigmoid modes."""
    cw = class_weight_tensor(class_weights, logits)
    if mode == "multiclass":
        log_p = F.log_softmax(logits, dim=1)
        loss = -dense * log_p
        if gamma:
            loss = loss * (1.0 - log_p.exp()).pow(gamma)
        return (loss if cw is None else loss * cw).sum(1, keepdim=True)
    loss = F.binary_cross_entropy_with_logits(logits, dense, reduction="none")
    if gamma:
        p = logits.sigmoid()
        p_true = p * dense + (1.0 - p) * (1.0 - dense)
        loss = loss * (1.0 - p_true).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * dense + (1.0 - alpha) * (1.0 - dense))
    return loss if cw is None else loss * cw


def cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None, *, mode: str = "auto",
                  ignore_index: int | None = None, class_weights: Sequence[float] | None = None) -> Tensor:
    """Cross-entropy (multiclass, softmax) or BCE with logits (binary / multilabel), per-pixel weighted."""
    mode = resolve_mode(mode, logits.shape[1])
    dense, valid = dense_target(logits, target, mode, ignore_index)
    return _mean_over_valid(_pixel_loss(logits, dense, mode, 0.0, None, class_weights), valid, weight)


def focal_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, *, mode: str = "auto",
               ignore_index: int | None = None, class_weights: Sequence[float] | None = None,
               gamma: float = 2.0, alpha: float | None = None) -> Tensor:
    """Focal loss -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017).

    `alpha` (e.g. 0.25, the paper's value) weighs positives and 1 - alpha negatives in the sigmoid
    modes; in multiclass mode it must stay None (use `class_weights`). gamma=0, alpha=None gives `cross_entropy`.
    """
    mode = resolve_mode(mode, logits.shape[1])
    if mode == "multiclass" and alpha is not None:
        raise ConfigError("focal loss: alpha applies to binary/multilabel (sigmoid) outputs; "
                          "for multiclass set alpha=None and use class_weights")
    dense, valid = dense_target(logits, target, mode, ignore_index)
    return _mean_over_valid(_pixel_loss(logits, dense, mode, gamma, alpha, class_weights), valid, weight)


def soft_counts(probs: Tensor, dense: Tensor, valid: Tensor, per_image: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Soft tp, fp, fn over valid pixels: `(N, K)` when `per_image`, else `(K,)` (summed over the batch).

    Batch counts while training under DDP are summed over every process (a differentiable
    all-reduce), so batch Dice sees the global batch, as in a single process.
    """
    dims = tuple(range(2, probs.dim())) if per_image else (0, *range(2, probs.dim()))
    p, t = probs * valid, dense * valid
    tp = (p * t).sum(dims)
    counts = torch.stack([tp, p.sum(dims) - tp, t.sum(dims) - tp])
    if not per_image and torch.is_grad_enabled() and _world_size() > 1:  # not in (uneven) validation
        from torch.distributed.nn.functional import all_reduce

        counts = all_reduce(counts)
    return counts[0], counts[1], counts[2]


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _class_mean(score: Tensor, mode: str, include_background: bool,
                class_weights: Sequence[float] | None) -> Tensor:
    """Average a `(..., K)` score over classes (weighted), dropping channel 0 in multiclass if asked."""
    check_class_weights(class_weights, score.shape[-1])
    weights = torch.ones(score.shape[-1], dtype=score.dtype, device=score.device) if class_weights is None \
        else torch.as_tensor(class_weights, dtype=score.dtype, device=score.device)
    if mode == "multiclass" and not include_background:
        score, weights = score[..., 1:], weights[1:]
    return ((score * weights).sum(-1) / weights.sum()).mean()


def dice_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, *, mode: str = "auto",
              ignore_index: int | None = None, class_weights: Sequence[float] | None = None,
              include_background: bool = True, smooth: float = 1e-5, per_image: bool = False) -> Tensor:
    """1 - soft Dice, `(2 tp + smooth) / (2 tp + fp + fn + smooth)`, averaged over classes.

    `per_image`: one Dice per image and class, then averaged; otherwise counts are summed over the
    batch first ("batch Dice", as nnU-Net). `include_background` only matters for multiclass
    (channel 0). `weight` is ignored.
    """
    mode = resolve_mode(mode, logits.shape[1])
    dense, valid = dense_target(logits, target, mode, ignore_index)
    tp, fp, fn = soft_counts(probabilities(logits, mode), dense, valid, per_image)
    score = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    return 1.0 - _class_mean(score, mode, include_background, class_weights)


def tversky_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, *, mode: str = "auto",
                 ignore_index: int | None = None, class_weights: Sequence[float] | None = None,
                 include_background: bool = True, smooth: float = 1e-5, per_image: bool = False,
                 alpha: float = 0.3, beta: float = 0.7) -> Tensor:
    """1 - Tversky index `(tp + s) / (tp + alpha fp + beta fn + s)` (Salehi et al. 2017).

    alpha = beta = 0.5 is Dice; beta > alpha penalises missed foreground more. `weight` is ignored.
    """
    mode = resolve_mode(mode, logits.shape[1])
    dense, valid = dense_target(logits, target, mode, ignore_index)
    tp, fp, fn = soft_counts(probabilities(logits, mode), dense, valid, per_image)
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return 1.0 - _class_mean(score, mode, include_background, class_weights)


def combo_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, *, mode: str = "auto",
               ignore_index: int | None = None, class_weights: Sequence[float] | None = None,
               include_background: bool = True, smooth: float = 1e-5, per_image: bool = False,
               alpha: float = 0.5) -> Tensor:
    """`alpha * cross_entropy + (1 - alpha) * dice_loss`; `weight` goes to the cross-entropy term."""
    ce = cross_entropy(logits, target, weight, mode=mode, ignore_index=ignore_index,
                       class_weights=class_weights)
    dice = dice_loss(logits, target, mode=mode, ignore_index=ignore_index, class_weights=class_weights,
                     include_background=include_background, smooth=smooth, per_image=per_image)
    return alpha * ce + (1.0 - alpha) * dice
