"""Surface-distance metrics on boolean 2D/3D masks: Hausdorff (and HD95), average surface distance.

Surfaces are the mask pixels removed by one binary erosion (face connectivity; pixels on the
array border count as surface). Distances come from `scipy.ndimage.distance_transform_edt` with
`sampling=spacing`, so results are in physical units when `spacing` is given.

Empty cases: both masks empty -> 0.0; exactly one empty -> inf (no surface to measure to).
HD at a percentile q is max(q-th percentile of pred->target distances, q-th percentile of
target->pred distances) (as MONAI); q = None or 100 is the Hausdorff distance.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from unetkit.metrics.registry import register_metric


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a mask: its pixels with a face neighbour outside the mask (or the array)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def surface_distances(pred: np.ndarray, target: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(distances pred surface -> target surface, target surface -> pred surface), or None when
    either mask is empty."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} do not match")
    if not pred.any() or not target.any():
        return None
    s_pred, s_target = surface(pred), surface(target)
    to_target = ndimage.distance_transform_edt(~s_target, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    return to_target[s_pred], to_pred[s_target]


def _empty_value(pred: np.ndarray, target: np.ndarray) -> float:
    return 0.0 if not np.any(pred) and not np.any(target) else math.inf


@register_metric("hausdorff", kind="surface")
def hausdorff_distance(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None,
                       percentile: float | None = None) -> float:
    """Symmetric Hausdorff distance between two boolean masks (`percentile=95`: HD95)."""
    distances = surface_distances(pred, target, spacing)
    if distances is None:
        return _empty_value(pred, target)
    if percentile is None:
        return float(max(d.max() for d in distances))
    return float(max(np.percentile(d, percentile) for d in distances))


@register_metric("hd95", kind="surface")
def hausdorff_distance_95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance."""
    return hausdorff_distance(pred, target, spacing, percentile=95)


@register_metric("assd", kind="surface")
def average_surface_distance(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None,
                             symmetric: bool = True) -> float:
    """Average symmetric surface distance: mean over both surfaces' distances to the other surface.

    `symmetric=False`: mean distance from the prediction's surface to the target's.
    """
    distances = surface_distances(pred, target, spacing)
    if distances is None:
        return _empty_value(pred, target)
    return float(np.concatenate(distances).mean() if symmetric else distances[0].mean())
