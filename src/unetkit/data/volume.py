"""`VolumeDataset`: 3D patches from volumes, with foreground oversampling and resampling.

Each volume is read once (NIfTI or TIFF stack), optionally resampled to `target_spacing`
(image: linear, mask: nearest), normalised, and cached. Every item is one patch:
with probability `foreground_fraction` it is centred on a foreground voxel (of a foreground class
drawn uniformly among those present, so rare classes are favoured), otherwise placed uniformly.
Volumes smaller than the patch are zero-padded (image and mask). Items are the same dicts as
`SegmentationDataset`'s, with name "<case>@z,y,x" (the patch corner).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from unetkit.data.patches import PatchDataset
from unetkit.errors import ConfigError


def resample(image: np.ndarray, labels: np.ndarray | None, spacing: Sequence[float],
             target: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample `image (C, D, H, W)` (linear) and `labels (D, H, W)` (nearest) from `spacing` to `target`.

    The new shape is round(shape * spacing / target); image and labels get the same shape.
    """
    new_shape = resampled_shape(image.shape[1:], spacing, target)
    if new_shape is None:
        return image, labels
    out = resize(image, new_shape, order=1)
    if labels is not None:
        labels = resize(labels[None], new_shape, order=0)[0]
    return out, labels


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...] | None:
    """The shape `resample` gives a `shape` at `spacing` at `target`; None when it leaves it unchanged
    (spacing and target equal to floating-point tolerance)."""
    factors = np.asarray(spacing, dtype=np.float64)[-len(shape):] / np.asarray(target, dtype=np.float64)
    if np.allclose(factors, 1.0):
        return None
    return tuple(max(1, int(round(s * f))) for s, f in zip(shape, factors))


def resize(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Each channel of `array (C, *S)` zoomed to `shape` (order 1: linear, as float32; order 0:
    nearest, dtype kept). `resample` uses it both ways; the Predictor brings probabilities back
    to the input's shape with it."""
    zoom = [n / s for n, s in zip(shape, array.shape[1:])]
    if order == 0:
        return np.stack([ndi.zoom(c, zoom, order=0, mode="nearest", grid_mode=True) for c in array])
    return np.stack([ndi.zoom(c.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)
                     for c in array])


class VolumeDataset(PatchDataset):
    """Random 3D patches from a folder of volumes (see `unetkit.data.folder`) or in-memory samples:
    `PatchDataset` with a (D, H, W) patch (see there for every option).

    source: folder, FolderScan, list of Case / (image_path, mask_path), or objects with `.image`
        `(C, D, H, W)`, `.mask` `(1, D, H, W)` or `(D, H, W)` and optional `.spacing`/`.instances`
        (e.g. `load_dataset("synthetic-cells", dims=3).samples`).
    patch_size: (D, H, W). length: items per epoch (default: samples_per_volume per volume).
    """

    def __init__(self, source: str | os.PathLike | Sequence[Any], patch_size: Sequence[int], *,
                 samples_per_volume: int = 4, **options: Any) -> None:
        if len(tuple(patch_size)) != 3:
            raise ConfigError(f"patch_size must be (D, H, W), got {patch_size}")
        super().__init__(source, patch_size, samples_per_case=samples_per_volume, **options)
