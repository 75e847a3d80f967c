"""Averaging per-image, per-class scores: the one place that decides what a mean is taken over.

    present = present_classes(counts)                  # (images, K) bool: in the truth or the prediction
    summary = aggregate_scores(values, present, names) # mean, std, per_class, images, classes, both_empty

Convention (as nnU-Net, and MONAI's `ignore_empty`): a class absent from both the ground truth and
the prediction of an image has no score there (NaN): it is neither a success nor a failure and is
left out of every mean. So
- an image's score is the mean over the classes present in its truth or its prediction;
- a class's score is the mean over the images where it is present in either;
- the headline `mean` is the mean over classes of the class scores (nnU-Net's foreground mean),
  over the classes present somewhere; `image_mean` / `std` are over images of the image scores.
A binary task is one class: an image whose truth and prediction are both empty is left out and
counted in `both_empty`. A prediction on an empty truth still scores 0 (the class is present in
the prediction). A summary over nothing present is NaN, never a made-up 0 or 1.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

CONVENTION = ("a class absent from both the ground truth and the prediction of an image is left out "
              "(NaN), as in nnU-Net and MONAI ignore_empty; per image: mean over the classes present; "
              "per class: mean over the images where it is present; mean: over classes")


def present_classes(counts: np.ndarray | torch.Tensor) -> np.ndarray:
    """`(..., K)` bool from confusion counts `(..., K, 4)` (tp, fp, fn, tn): the class occurs in the
    truth or the prediction (over the non-ignored pixels)."""
    counts = np.asarray(counts)
    return (counts[..., 0] + counts[..., 1] + counts[..., 2]) > 0


def nan_stats(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """mean, std, median and count of the non-NaN values (NaN statistics when there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "count": 0}
    with np.errstate(invalid="ignore"):  # inf surface distances give inf means and NaN spreads
        return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)), "count": len(v)}


def aggregate_scores(values: np.ndarray, present: np.ndarray, class_names: Sequence[str] | None = None,
                     global_values: np.ndarray | None = None) -> dict[str, Any]:
    """Summary of per-image, per-class scores `(images, classes)` under the module's convention.

    present: `(images, classes)` bool from `present_classes`; other pairs are left out.
    global_values: optional `(classes,)` scores of the counts pooled over images (NaN where a class
        is absent everywhere); their mean over present classes is `global`.
    Returns mean, std, image_mean, global, images (images with a present class), classes (classes
    present somewhere), pairs (image-class pairs averaged), both_empty (pairs left out),
    empty_images (images where nothing is present) and per_class {name: mean, std, median, images}.
    """
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if values.shape != present.shape or values.ndim != 2:
        raise ValueError(f"values {values.shape} and present {present.shape} must be the same (images, classes)")
    names = list(class_names) if class_names is not None else [str(k) for k in range(values.shape[1])]
    scored = np.where(present, values, np.nan)
    per_class = {}
    for j, name in enumerate(names):
        stats = nan_stats(scored[:, j])
        per_class[name] = {"mean": stats["mean"], "std": stats["std"], "median": stats["median"],
                           "images": stats["count"]}
    over_images = nan_stats(image_scores(values, present))
    over_classes = nan_stats([c["mean"] for c in per_class.values()])
    result = {
        "mean": over_classes["mean"], "std": over_images["std"], "image_mean": over_images["mean"],
        "images": over_images["count"], "classes": over_classes["count"], "pairs": int(present.sum()),
        "both_empty": int((~present).sum()), "empty_images": int((~present.any(1)).sum()) if len(present) else 0,
        "per_class": per_class,
    }
    if global_values is not None:
        result["global"] = nan_stats(np.asarray(global_values, dtype=np.float64))["mean"]
    return result


def image_scores(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """`(images,)` mean over each image's present classes (NaN where none is present)."""
    scored = np.where(np.asarray(present, bool), np.asarray(values, np.float64), np.nan)
    return np.array([nan_stats(row)["mean"] for row in scored])
