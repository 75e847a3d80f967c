"""The original U-Net weight map (Ronneberger et al. 2015, eq. 2), for 2D and 3D label arrays.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))    on background pixels
    w(x) = w_c(x)                                                    on object pixels

d1, d2: distances to the nearest and second-nearest object; w_c balances the class frequencies.
Touching instances are first split by a one-pixel background line (`separate_touching`), so the
high-weight ridge lies on the line between them, as in the paper's figure 3. Use the same
separated mask as the training target so weights and labels agree.

Speed: each object's distance transform is computed only inside its bounding box grown by
`margin = sigma * sqrt(2 ln(w0 / tol))`. Pixels outside the box are farther than `margin` from
that object, and whenever the true d2 exceeds `margin` the true border term is below
`w0 exp(-margin^2 / (2 sigma^2)) = tol`; the cropped result never over-estimates it, so every
weight is within `tol` of the exact map (tol=0: exact, full-image transforms).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from unetkit.io.figures import new_figure, save_figure


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Instance labels with a one-pixel gap wherever two instances touch (full connectivity).

    A pixel becomes background when a neighbour belongs to an instance with a smaller id.
    """
    labels = np.asarray(labels)
    none = int(labels.max(initial=0)) + 1  # stands for "no instance" (background, outside the array)
    others = np.where(labels > 0, labels, none).astype(np.int64)
    smallest_neighbour = ndimage.minimum_filter(others, size=3, mode="constant", cval=none)
    return np.where((labels > 0) & (smallest_neighbour < labels), 0, labels)


def object_labels(labels: np.ndarray, instances: bool = True) -> np.ndarray:
    """Instance ids (0 = background): `labels` as is when `instances` and it holds ids > 1,
    otherwise connected components of `labels > 0` (binary masks)."""
    labels = np.asarray(labels)
    if instances and labels.dtype != bool and labels.max(initial=0) > 1:
        return labels.astype(np.int64)
    return ndimage.label(labels > 0)[0]


def _balanced_weights(foreground: np.ndarray, class_weights: str | Mapping[int, float] | None) -> np.ndarray:
    """w_c(x): "balanced" gives class c the weight n / (2 n_c) (mean weight 1); a dict {0: w, 1: w}."""
    if class_weights is None:
        return np.ones(foreground.shape, np.float32)
    if class_weights == "balanced":
        n_fg = int(foreground.sum())
        n_bg = foreground.size - n_fg
        if n_fg == 0 or n_bg == 0:
            return np.ones(foreground.shape, np.float32)
        class_weights = {0: foreground.size / (2 * n_bg), 1: foreground.size / (2 * n_fg)}
    elif not isinstance(class_weights, Mapping):
        raise ValueError(f"class_weights must be 'balanced', None or a dict {{0: w, 1: w}}, got {class_weights!r}")
    return np.where(foreground, class_weights[1], class_weights[0]).astype(np.float32)


def two_nearest_distances(objects: np.ndarray, margin: float = math.inf,
                          spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances to the nearest and second-nearest object (inf when none within reach).

    Each object's distance transform covers its bounding box grown by `margin` (in spacing units).
    """
    d1 = np.full(objects.shape, np.inf, np.float64)
    d2 = np.full(objects.shape, np.inf, np.float64)
    step = np.ones(objects.ndim) if spacing is None else np.asarray(spacing, float)
    pad = np.full(objects.ndim, objects.size) if math.isinf(margin) else np.ceil(margin / step).astype(int)
    for obj_id, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(box, pad, objects.shape))
        dist = ndimage.distance_transform_edt(objects[grown] != obj_id, sampling=spacing)
        near, second = d1[grown], d2[grown]  # views
        second[...] = np.minimum(second, np.maximum(near, dist))
        near[...] = np.minimum(near, dist)
    return d1, d2


def unet_weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                    class_weights: str | Mapping[int, float] | None = "balanced", instances: bool = True,
                    spacing: Sequence[float] | None = None, tol: float = 1e-3) -> np.ndarray:
    """U-Net weight map `(H, W)` / `(D, H, W)` float32 from instance labels or a binary mask.

    labels: instance ids (0 = background; touching instances are split) or a binary mask (split
    into connected components; also with `instances=False`). sigma in pixels, or in `spacing`
    units when given. tol: largest absolute error allowed by the cropped computation (0 = exact).
    """
    objects = separate_touching(object_labels(labels, instances))
    weights = _balanced_weights(objects > 0, class_weights)
    if w0 == 0 or objects.max(initial=0) < 2:
        return weights
    margin = math.inf if tol <= 0 else sigma * math.sqrt(2.0 * math.log(max(w0 / tol, 1.0)))
    d1, d2 = two_nearest_distances(objects, margin, spacing)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))
    return (weights + np.where(objects == 0, border, 0.0)).astype(np.float32)


def plot_weight_map(image_or_mask: np.ndarray, weight_map: np.ndarray, path: str | Path,
                    overwrite: bool = False, title: str = "U-Net weight map") -> Path:
    """Write a PNG: the image (or mask) beside its weight map with a colour bar; returns the path.

    Accepts `(H, W)`, channel-first `(C, H, W)` images, or 3D `(D, H, W)` arrays with a matching
    3D weight map (the middle slice is shown).
    """

    weight_map = np.asarray(weight_map)
    image = np.asarray(image_or_mask)
    if weight_map.ndim == 3:
        mid = weight_map.shape[0] // 2
        weight_map, image = weight_map[mid], image[mid] if image.ndim == 3 else image
    if image.ndim == 3:  # channel-first image
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    fig = new_figure((10, 4.5))
    axes = fig.subplots(1, 2)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input")
    shown = axes[1].imshow(weight_map, cmap="jet")
    axes[1].set_title(title)
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, overwrite=overwrite)
