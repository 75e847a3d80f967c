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
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from torch.utils.data import Dataset

from unetkit.data.dataset import _as_cases, to_sample
from unetkit.data.folder import Case
from unetkit.data.io import read_labels, read_volume
from unetkit.data.masks import decide_mask_kind, profile_masks, to_semantic
from unetkit.data.normalize import default_spec, normalize_image, validate_spec
from unetkit.errors import ConfigError, DataError

_MAX_FG_POINTS = 50000  # foreground coordinates kept per class and volume


def resample(image: np.ndarray, labels: np.ndarray | None, spacing: Sequence[float],
             target: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample `image (C, D, H, W)` (linear) and `labels (D, H, W)` (nearest) from `spacing` to `target`.

    The new shape is round(shape * spacing / target); image and labels get the same shape.
    """
    factors = np.asarray(spacing, dtype=np.float64) / np.asarray(target, dtype=np.float64)
    if np.allclose(factors, 1.0):
        return image, labels
    new_shape = tuple(max(1, int(round(s * f))) for s, f in zip(image.shape[1:], factors))
    zoom = [n / s for n, s in zip(new_shape, image.shape[1:])]
    out = np.stack([ndi.zoom(c.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True) for c in image])
    if labels is not None:
        labels = ndi.zoom(labels, zoom, order=0, mode="nearest", grid_mode=True)
    return out, labels


class VolumeDataset(Dataset):
    """Random 3D patches from a folder of volumes (see `unetkit.data.folder`) or in-memory samples.

    source: folder, FolderScan, list of Case / (image_path, mask_path), or objects with `.image`
        `(C, D, H, W)`, `.mask` `(1, D, H, W)` or `(D, H, W)` and optional `.spacing`/`.instances`
        (e.g. `load_dataset("synthetic-cells", dims=3).samples`).
    patch_size: (D, H, W). length: items per epoch (default: samples_per_volume per volume).
    """

    def __init__(self, source: str | os.PathLike | Sequence[Any], patch_size: Sequence[int], *,
                 samples_per_volume: int = 4, length: int | None = None, foreground_fraction: float = 0.33,
                 target_spacing: Sequence[float] | None = None, normalize: dict[str, Any] | None = None,
                 transform: Callable | None = None, names: Sequence[str] | None = None,
                 num_classes: int | None = None, mask_kind: str = "auto", return_instances: bool = False,
                 seed: int = 0, **scan_options: Any) -> None:
        if not 0 <= foreground_fraction <= 1:
            raise ConfigError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3:
            raise ConfigError(f"patch_size must be (D, H, W), got {patch_size}")
        self.items = _as_items(source, scan_options)
        if names is not None:
            self.items = [it for it in self.items if it["name"] in set(names)]
        self.length = length if length is not None else samples_per_volume * len(self.items)
        self.foreground_fraction = foreground_fraction
        self.target_spacing = tuple(target_spacing) if target_spacing is not None else None
        self.normalize = validate_spec(normalize) if normalize is not None else default_spec()
        self.transform = transform
        self.num_classes = num_classes
        self.return_instances = return_instances
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, dict[str, Any]] = {}
        self.mask_kind = mask_kind if mask_kind != "auto" else decide_mask_kind(
            profile_masks(range(len(self.items)), load=lambda i: self._raw(i)[1]), num_classes).kind

    def __len__(self) -> int:
        return self.length

    @property
    def names(self) -> list[str]:
        return [it["name"] for it in self.items]

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(seed)

    def volume(self, index: int) -> dict[str, Any]:
        """The preprocessed volume `index`: image (C,D,H,W) float32, mask (1,D,H,W), instances, fg points."""
        if index in self._cache:
            return self._cache[index]
        image, labels, spacing = self._raw(index)
        if self.target_spacing is not None:
            image, labels = resample(image, labels, spacing, self.target_spacing)
        image = normalize_image(image, self.normalize)
        semantic, instances = to_semantic(labels, self.mask_kind)
        fg = {}
        for k in np.unique(semantic):
            if k == 0:
                continue
            points = np.argwhere(semantic == k)
            if len(points) > _MAX_FG_POINTS:
                points = points[np.random.default_rng(index).choice(len(points), _MAX_FG_POINTS, replace=False)]
            fg[int(k)] = points
        vol = {"image": image, "mask": semantic[None], "instances": instances, "fg": fg}
        self._cache[index] = vol
        return vol

    def patch_corner(self, shape: Sequence[int], fg: dict[int, np.ndarray], force_fg: bool) -> tuple[int, ...]:
        """Top-left-front corner of a patch inside `shape` (already padded to at least the patch)."""
        if force_fg and fg:
            cls = list(fg)[self.rng.integers(len(fg))]
            centre = fg[cls][self.rng.integers(len(fg[cls]))]
            return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch_size, shape))
        return tuple(int(self.rng.integers(0, s - p + 1)) for p, s in zip(self.patch_size, shape))

    def __getitem__(self, index: int) -> dict[str, Any]:
        vol_index = index % len(self.items)
        vol = self.volume(vol_index)
        image, mask, instances = _pad_to(vol["image"], vol["mask"], vol["instances"], self.patch_size)
        force_fg = self.rng.random() < self.foreground_fraction
        corner = self.patch_corner(image.shape[1:], vol["fg"], force_fg)
        box = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
        image, mask = image[(slice(None),) + box], mask[(slice(None),) + box]
        instances = instances[box] if instances is not None else None
        if self.transform is not None:
            out = self.transform(image, mask, instances=instances)
            image, mask, instances = out["image"], out["mask"], out.get("instances")
        name = f"{self.items[vol_index]['name']}@{','.join(map(str, corner))}"
        return to_sample(image, mask, name=name, instances=instances, want_instances=self.return_instances)

    def _raw(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        item = self.items[index]
        if "case" in item:
            case: Case = item["case"]
            image, meta = read_volume(case.images[0])
            if len(case.images) > 1:
                image = np.concatenate([image] + [read_volume(p)[0] for p in case.images[1:]])
            labels = read_labels(case.mask, 3)
            if labels.shape != image.shape[1:]:
                raise DataError(f"{case.mask}: size {labels.shape} differs from image {image.shape[1:]}")
            return image, labels, meta.spacing
        return item["image"], item["labels"], item["spacing"]


def _as_items(source: Any, scan_options: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(source, (list, tuple)) and source and hasattr(source[0], "image"):
        items = []
        for i, s in enumerate(source):
            labels = np.asarray(s.mask)
            labels = labels[0] if labels.ndim == 4 else labels
            items.append({"name": getattr(s, "name", f"volume_{i:03d}"), "image": np.asarray(s.image),
                          "labels": labels, "spacing": tuple(s.spacing or (1.0, 1.0, 1.0))})
        return items
    cases = _as_cases(source, scan_options)
    unpaired = [str(c.images[0]) for c in cases if c.mask is None]
    if unpaired:
        raise DataError(f"{unpaired[0]}: image without mask ({len(unpaired)} in all); run unetkit check-data")
    return [{"name": c.name, "case": c} for c in cases]


def _pad_to(image: np.ndarray, mask: np.ndarray, instances: np.ndarray | None, size: Sequence[int]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    pad = [(0, max(0, p - s)) for p, s in zip(size, image.shape[1:])]
    if not any(after for _, after in pad):
        return image, mask, instances
    image = np.pad(image, [(0, 0)] + pad)
    mask = np.pad(mask, [(0, 0)] + pad)
    return image, mask, np.pad(instances, pad) if instances is not None else None
