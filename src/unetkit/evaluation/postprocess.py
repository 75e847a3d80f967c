"""Post-processing of predicted masks: connected components, small-object removal, hole filling,
and instances from semantic masks (splitting touching objects with a distance-transform watershed).

Masks are integer class labels `(H, W)` / `(D, H, W)` (0 = background); instances are integer
instance labels of the same shape (0 = background, 1..n objects). Connectivity is "full" by default
(8-neighbours in 2D, 26 in 3D), as in scikit-image's `label`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    return ndi.generate_binary_structure(ndim, connectivity or ndim)


def connected_components(mask: np.ndarray, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Label the connected components of a boolean (or nonzero) mask: (instances int32, count)."""
    labels, count = ndi.label(np.asarray(mask) != 0, structure=_structure(np.ndim(mask), connectivity))
    return labels.astype(np.int32, copy=False), int(count)


def remove_small_objects(labels: np.ndarray, min_size: int, connectivity: int | None = None) -> np.ndarray:
    """Set connected components smaller than `min_size` pixels/voxels of each class to background.

    `labels`: class labels (binary masks included). Returns a new array of the same dtype.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    if min_size <= 1:
        return out
    for cls in np.unique(labels):
        if cls == 0:
            continue
        comp, count = connected_components(labels == cls, connectivity)
        sizes = np.bincount(comp.ravel(), minlength=count + 1)
        small = sizes < min_size
        small[0] = False
        out[small[comp]] = 0
    return out


def remove_small_instances(instances: np.ndarray, min_size: int) -> np.ndarray:
    """Drop instances smaller than `min_size` and renumber the rest 1..n (in order of their labels)."""
    instances = np.asarray(instances)
    sizes = np.bincount(instances.ravel())
    keep = sizes >= min_size
    keep[0] = False
    lookup = np.zeros(len(sizes), dtype=np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1)
    return lookup[instances]


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background holes enclosed by one class with that class (per class, N-D)."""
    labels = np.asarray(labels)
    out = labels.copy()
    for cls in np.unique(labels):
        if cls == 0:
            continue
        filled = ndi.binary_fill_holes(labels == cls)
        out[filled & (out == 0)] = cls
    return out


def split_touching(mask: np.ndarray, min_distance: int = 5, footprint: int | None = None,
                   connectivity: int | None = None) -> np.ndarray:
    """Separate touching objects of a binary mask into instances (int32 labels).

    Markers are the local maxima of the Euclidean distance transform at least `min_distance`
    pixels apart (one per plateau); a watershed over -EDT restricted to the mask grows them.
    Components that receive no marker keep one label each, so no foreground pixel is lost.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = np.asarray(mask) != 0
    components, count = connected_components(mask, connectivity)
    if count == 0:
        return components
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=max(1, int(min_distance)), labels=components,
                           exclude_border=False,
                           footprint=None if footprint is None else np.ones((footprint,) * mask.ndim, bool))
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = 1
    markers, _ = ndi.label(markers, structure=_structure(mask.ndim, None))  # merge adjacent peak pixels
    instances = watershed(-distance, markers, mask=mask, connectivity=connectivity or mask.ndim)
    missed = mask & (instances == 0)
    if missed.any():
        extra, _ = connected_components(missed, connectivity)
        instances = np.where(extra > 0, extra + instances.max(), instances)
    return relabel_sequential(instances)


def instances_from_labels(labels: np.ndarray, split: bool = False, min_distance: int = 5,
                          connectivity: int | None = None) -> np.ndarray:
    """Instances from class labels: connected components of each class (watershed-split if `split`),
    numbered consecutively class by class. Use `measure_objects(instances, labels)` for their class."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.int32)
    offset = 0
    for cls in np.unique(labels):
        if cls == 0:
            continue
        if split:
            inst = split_touching(labels == cls, min_distance, connectivity=connectivity)
            count = int(inst.max())
        else:
            inst, count = connected_components(labels == cls, connectivity)
        out[inst > 0] = inst[inst > 0] + offset
        offset += count
    return out


def relabel_sequential(instances: np.ndarray) -> np.ndarray:
    """Renumber instance labels to 1..n in order of their current values (int32)."""
    values = np.unique(instances)
    values = values[values != 0]
    lookup = np.zeros(int(instances.max()) + 1 if instances.size else 1, dtype=np.int32)
    lookup[values] = np.arange(1, len(values) + 1)
    return lookup[instances]
