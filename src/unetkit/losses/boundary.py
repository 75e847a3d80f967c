"""Boundary loss (Kervadec et al., MIDL 2019 / MedIA 2021) and the signed distance maps it needs.

    L = c(t) * L_region + alpha(t) * mean_x sum_k phi_k(x) p_k(x)

phi_k is the signed distance map of target class k (negative inside, positive outside), p_k the
predicted probability. The boundary term is minimal when the prediction covers exactly the target.
alpha(t) = min(alpha_max, alpha + alpha_step * epoch); c(t) = 1, or 1 - alpha(t) with `rebalance`
(the paper's schedule: the region weight falls from 1 while the boundary weight grows).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from unetkit.losses.modules import SegLoss
from unetkit.losses.registry import LOSSES, create_loss
from unetkit.losses.targets import dense_target, probabilities, resolve_mode


def signed_distance_map(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed Euclidean distance of a boolean 2D/3D mask, float32, same shape.

    Outside pixels hold the distance to the nearest mask pixel (> 0), inside pixels minus the
    distance to the nearest background pixel (< 0), in units of `spacing`. Empty or full masks
    (no boundary) give zeros.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def signed_distance_maps(dense: Tensor, spacing: Sequence[float] | None = None) -> Tensor:
    """`(N, K, *S)` signed distance maps of a dense target (thresholded at 0.5), computed on the CPU."""
    masks = (dense.detach() > 0.5).cpu().numpy()
    maps = np.stack([[signed_distance_map(m, spacing) for m in sample] for sample in masks])
    return torch.from_numpy(maps).to(device=dense.device, dtype=dense.dtype)


def boundary_term(probs: Tensor, dist_maps: Tensor, valid: Tensor, channels: slice = slice(None)) -> Tensor:
    """Mean over valid pixels and the chosen channels of `probs * dist_maps`; all `(N, K, *S)`."""
    term = (probs * dist_maps)[:, channels]
    valid = valid.expand_as(probs)[:, channels]
    return (term * valid).sum() / valid.sum().clamp_min(1.0)


@LOSSES.register("boundary", uses_weight=True, schedule=True)
class BoundaryLoss(SegLoss):
    """Region loss + alpha(t) * boundary term; call `set_epoch(e)` or `step()` once per epoch.

    `region`: a registered loss name or module (default "dice"), built with the shared options and
    `region_kwargs`; `weight` goes to it. `dist_maps` `(N, K, *S)` may be passed to `forward`
    precomputed (e.g. by the dataset); otherwise they are computed from `target` with scipy.
    `include_background` (multiclass only): also apply the boundary term to channel 0.
    """

    uses_weight = True

    def __init__(self, mode: str = "auto", ignore_index: int | None = None,
                 class_weights: Sequence[float] | None = None, region: str | SegLoss = "dice",
                 region_kwargs: dict[str, Any] | None = None, alpha: float = 0.01, alpha_step: float = 0.01,
                 alpha_max: float = 1.0, rebalance: bool = False, include_background: bool = False,
                 spacing: Sequence[float] | None = None) -> None:
        super().__init__(mode, ignore_index, class_weights)
        if isinstance(region, str):
            region = create_loss(region, mode=mode, ignore_index=ignore_index, class_weights=class_weights,
                                 **(region_kwargs or {}))
        self.region = region
        self.alpha, self.alpha_step, self.alpha_max = alpha, alpha_step, alpha_max
        self.rebalance, self.include_background, self.spacing = rebalance, include_background, spacing
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the schedule position (0-based epoch)."""
        self.epoch = int(epoch)

    def step(self) -> None:
        """Advance the schedule by one epoch."""
        self.epoch += 1

    @property
    def boundary_weight(self) -> float:
        """alpha(t) at the current epoch."""
        return min(self.alpha_max, self.alpha + self.alpha_step * self.epoch)

    def check_num_classes(self, num_classes: int) -> None:
        super().check_num_classes(num_classes)
        check = getattr(self.region, "check_num_classes", None)
        if check is not None:
            check(num_classes)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None,
                dist_maps: Tensor | None = None) -> Tensor:
        mode = resolve_mode(self.mode, logits.shape[1])
        dense, valid = dense_target(logits, target, mode, self.ignore_index)
        if dist_maps is None:
            dist_maps = signed_distance_maps(dense, self.spacing)
        skip_background = mode == "multiclass" and not self.include_background
        channels = slice(1, None) if skip_background else slice(None)
        boundary = boundary_term(probabilities(logits, mode), dist_maps.to(logits.dtype), valid, channels)
        alpha = self.boundary_weight
        region_weight = 1.0 - alpha if self.rebalance else 1.0
        return region_weight * self.region(logits, target, weight) + alpha * boundary
