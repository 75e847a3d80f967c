"""Overlap metrics from confusion counts: Dice, IoU, precision, recall, specificity, accuracy.

    labels = logits_to_labels(logits)                          # (N, 1, *S) long
    counts = confusion_counts(labels, target, num_classes=3)   # (N, K, 4): tp, fp, fn, tn
    dice(counts)                                               # (N, K) float64

Empty cases: a ratio whose denominator is 0 scores 1.0 when the class has no errors in that image
(fp == fn == 0: e.g. prediction and target both empty) and 0.0 otherwise (e.g. recall of an empty
target when something was predicted). Pass `empty_score=float("nan")` to get NaN instead (to skip
such cases with nanmean, like MONAI's `ignore_empty`). A non-empty prediction on an empty target
gives Dice = IoU = 0 without any special case. Means over images and classes (MetricAccumulator,
evaluate, validation) always leave both-empty pairs out: see `unetkit.metrics.aggregate`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from unetkit.losses.targets import resolve_mode
from unetkit.metrics.registry import register_metric


def logits_to_labels(logits: Tensor, mode: str = "auto", threshold: float = 0.5) -> Tensor:
    """`(N, K, *S)` logits -> `(N, 1, *S)` long labels (binary: sigmoid > threshold; multiclass:
    argmax), or `(N, K, *S)` bool for multilabel."""
    mode = resolve_mode(mode, logits.shape[1])
    if mode == "multiclass":
        return logits.argmax(1, keepdim=True)
    above = logits.sigmoid() > threshold
    return above if mode == "multilabel" else above.long()


def class_masks(labels: Tensor, num_classes: int) -> Tensor:
    """`(N, K, *S)` bool masks from labels `(N, 1, *S)` / `(N, *S)`, or a bool `(N, K, *S)` as is."""
    labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool and labels.dim() > 2 and labels.shape[1] == num_classes:
        return labels
    if labels.dim() > 1 and labels.shape[1] == 1:
        labels = labels[:, 0]
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, *([1] * (labels.dim() - 1)))
    return labels.unsqueeze(1) == classes


def confusion_counts(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Per image and class `(N, K, 4)` int64 counts tp, fp, fn, tn over the non-ignored pixels.

    pred, target: integer labels `(N, 1, *S)` / `(N, *S)`, or bool multilabel masks `(N, K, *S)`.
    Binary outputs are two classes (0, 1): use num_classes=2.
    """
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    p, t = class_masks(pred, num_classes), class_masks(target, num_classes)
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} do not match")
    valid = torch.ones_like(t[:, :1])
    if ignore_index is not None and target.dtype != torch.bool:
        valid = (target if target.dim() == t.dim() else target.unsqueeze(1))[:, :1] != ignore_index
    dims = tuple(range(2, t.dim()))
    tp = (p & t & valid).sum(dims)
    fp = (p & ~t & valid).sum(dims)
    fn = (~p & t & valid).sum(dims)
    tn = valid.sum(dims) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=-1)


def _ratio(numerator: Tensor, denominator: Tensor, counts: Tensor, empty_score: float | None) -> Tensor:
    """numerator / denominator, with the documented value where the denominator is 0."""
    counts = torch.as_tensor(counts).double()
    numerator, denominator = numerator.double(), denominator.double()
    if empty_score is None:
        fallback = ((counts[..., 1] == 0) & (counts[..., 2] == 0)).double()
    else:
        fallback = torch.full_like(denominator, float(empty_score))
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), fallback)


def _unpack(counts: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.as_tensor(counts).double().unbind(-1)


@register_metric("dice", kind="counts")
def dice(counts: Tensor, empty_score: float | None = None) -> Tensor:
    """2 tp / (2 tp + fp + fn) from counts `(..., 4)` -> `(...)`."""
    tp, fp, fn, _ = _unpack(counts)
    return _ratio(2 * tp, 2 * tp + fp + fn, counts, empty_score)


@register_metric("iou", kind="counts")
def iou(counts: Tensor, empty_score: float | None = None) -> Tensor:
    """Jaccard index tp / (tp + fp + fn) from counts `(..., 4)` -> `(...)`."""
    tp, fp, fn, _ = _unpack(counts)
    return _ratio(tp, tp + fp + fn, counts, empty_score)


@register_metric("precision", kind="counts")
def precision(counts: Tensor, empty_score: float | None = None) -> Tensor:
    """tp / (tp + fp) from counts `(..., 4)` -> `(...)`."""
    tp, fp, _, _ = _unpack(counts)
    return _ratio(tp, tp + fp, counts, empty_score)


@register_metric("recall", kind="counts")
def recall(counts: Tensor, empty_score: float | None = None) -> Tensor:
    """Sensitivity tp / (tp + fn) from counts `(..., 4)` -> `(...)`."""
    tp, _, fn, _ = _unpack(counts)
    return _ratio(tp, tp + fn, counts, empty_score)


@register_metric("specificity", kind="counts")
def specificity(counts: Tensor, empty_score: float | None = None) -> Tensor:
    """tn / (tn + fp) from counts `(..., 4)` -> `(...)`."""
    _, fp, _, tn = _unpack(counts)
    return _ratio(tn, tn + fp, counts, empty_score)


@register_metric("accuracy", kind="counts")
def accuracy(counts: Tensor, empty_score: float | None = None) -> Tensor:
    """(tp + tn) / all valid pixels from counts `(..., 4)` -> `(...)`."""
    tp, fp, fn, tn = _unpack(counts)
    return _ratio(tp + tn, tp + fp + fn + tn, counts, empty_score)


register_metric("jaccard", kind="counts")(iou)
