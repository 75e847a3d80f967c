"""`SegmentationDataset`: whole images (or whole volumes) with their masks, as torch samples.

Each item is a dict:
    "image":     float32 tensor (C, *S), normalised with the `normalize` spec
    "mask":      int64 tensor (1, *S), class indices (binary masks are {0, 1})
    "instances": int64 tensor (*S) instance ids (only with return_instances=True; zeros if none)
    "weight":    float32 tensor (1, *S) per-pixel loss weights (only with weight_map=...)
    "name":      the case name
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from unetkit.data.folder import Case, FolderScan, scan_folder
from unetkit.data.io import read_input, read_labels, stem_of
from unetkit.data.masks import MASK_KINDS, decide_mask_kind, is_palette_mask, profile_masks, to_semantic
from unetkit.data.normalize import default_spec, normalize_image, validate_spec
from unetkit.errors import ConfigError, DataError

WeightMap = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]  # (semantic, instances) -> weights


class SegmentationDataset(Dataset):
    """Images and masks from a folder (see `unetkit.data.folder`), a FolderScan, or a list of cases.

    source: a folder path, a `FolderScan`, a list of `Case`, or a list of `(image_path(s), mask_path)`.
    names / indices: keep only these cases (e.g. a fold of splits.json).
    transform: a callable `(image, mask, weight=None, instances=None) -> dict` from
        `unetkit.data.augment.build_augmentation`, applied after normalisation.
    normalize: a normalisation spec (None -> `default_spec()`).
    mask_kind: "auto" (decided from all masks, see `unetkit.data.masks.infer_mask_kind`), "binary",
        "classes" or "instances" (instance ids -> foreground class 1, ids kept for weight maps).
    weight_map: a callable `(semantic (*S) int64, instances (*S) int32 | None) -> (*S) float32`
        (e.g. the U-Net 2015 border weights), computed once per image and augmented with the mask.
    cache: keep decoded, normalised arrays in memory after the first read.
    regions: {case name: box} crops that case to the box `[(start, stop), ...]` after normalisation
        (the held-out part of a region split, `unetkit.data.splits.region_split`).
    target_spacing: 3D: each case is first resampled from its file's spacing to this (D, H, W)
        spacing (`unetkit.data.volume.resample`: image linear, mask nearest), as `PatchDataset` does.
    """

    def __init__(self, source: str | os.PathLike | FolderScan | Sequence[Any], *, names: Sequence[str] | None = None,
                 indices: Sequence[int] | None = None, transform: Callable | None = None,
                 normalize: dict[str, Any] | None = None, num_classes: int | None = None,
                 mask_kind: str = "auto", return_instances: bool = False, weight_map: WeightMap | None = None,
                 spatial_dims: int | None = None, cache: bool = True,
                 regions: dict[str, Sequence[Sequence[int]]] | None = None,
                 target_spacing: Sequence[float] | None = None, **scan_options: Any) -> None:
        if mask_kind not in MASK_KINDS:
            raise ConfigError(f"mask_kind must be one of {', '.join(MASK_KINDS)}, got {mask_kind!r}")
        cases = _as_cases(source, scan_options)
        if names is not None:
            wanted = set(names)
            missing = wanted - {c.name for c in cases}
            if missing:
                raise DataError(f"cases not found in the dataset: {', '.join(sorted(missing)[:10])}")
            cases = [c for c in cases if c.name in wanted]
        if indices is not None:
            cases = [cases[i] for i in indices]
        unpaired = [str(c.images[0]) for c in cases if c.mask is None]
        if unpaired:
            raise DataError(f"{unpaired[0]}: image without mask ({len(unpaired)} in all); run unetkit check-data")
        self.cases = cases
        self.transform = transform
        self.normalize = validate_spec(normalize) if normalize is not None else default_spec()
        self.num_classes = num_classes
        self.return_instances = return_instances
        self.weight_map = weight_map
        self.spatial_dims = spatial_dims
        self.cache = cache
        self.regions = dict(regions or {})
        self.target_spacing = tuple(float(v) for v in target_spacing) if target_spacing is not None else None
        self._cache: dict[int, dict[str, np.ndarray | None]] = {}
        self.mask_kind = mask_kind if mask_kind != "auto" else self._infer_kind()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def load(self, index: int) -> dict[str, np.ndarray | None]:
        """Decoded arrays of case `index` before augmentation: image (C,*S) float32, mask (1,*S) int64,
        instances (*S) int32 or None, weight (1,*S) float32 or None."""
        if index in self._cache:
            return self._cache[index]
        case = self.cases[index]
        image = _read_channels(case, self.spatial_dims)
        labels = read_labels(case.mask, self.spatial_dims)
        if labels.shape != image.shape[1:]:
            raise DataError(f"{case.mask}: size {labels.shape} differs from image {image.shape[1:]}")
        if self.target_spacing is not None:
            from unetkit.data.volume import resample

            meta = read_input(case.images[0], self.spatial_dims)[1]
            spacing = meta.spacing if meta is not None else (1.0,) * len(self.target_spacing)
            image, labels = resample(image, labels, spacing, self.target_spacing)
        image = normalize_image(image, self.normalize)  # on the whole image, after resampling
        semantic, instances = to_semantic(labels, self.mask_kind)
        if instances is None and case.instances is not None and (self.return_instances or self.weight_map):
            instances = read_labels(case.instances, self.spatial_dims).astype(np.int32)
            if instances.shape != semantic.shape:  # resampled to target_spacing above
                from unetkit.data.volume import resize

                instances = resize(instances[None], semantic.shape, order=0)[0]
        weight = None
        if self.weight_map is not None:
            weight = np.asarray(self.weight_map(semantic, instances), dtype=np.float32)[None]
        if case.name in self.regions:  # normalised on the whole image, then cropped
            from unetkit.data.patches import crop_box

            box = crop_box(self.regions[case.name], semantic.shape, case.name)
            image, semantic = image[(slice(None),) + box], semantic[box]
            instances = instances[box] if instances is not None else None
            weight = weight[(slice(None),) + box] if weight is not None else None
        arrays = {"image": image, "mask": semantic[None], "instances": instances, "weight": weight}
        if self.cache:
            self._cache[index] = arrays
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        arrays = self.load(index)
        image, mask, weight, instances = arrays["image"], arrays["mask"], arrays["weight"], arrays["instances"]
        if self.transform is not None:
            out = self.transform(image, mask, weight=weight, instances=instances)
            image, mask, weight, instances = out["image"], out["mask"], out.get("weight"), out.get("instances")
        return to_sample(image, mask, name=self.cases[index].name, weight=weight,
                         instances=instances if self.return_instances else None,
                         want_instances=self.return_instances)

    def class_presence(self) -> np.ndarray:
        """`(N, K)` bool: which classes each case contains (for `rare_class_sampler`)."""
        masks = [self.load(i)["mask"] for i in range(len(self))]
        k = max(self.num_classes or 2, max(int(m.max()) for m in masks) + 1 if masks else 2)
        return np.stack([np.bincount(m.ravel(), minlength=k)[:k] > 0 for m in masks])

    def reseed(self, seed: int) -> None:
        """Called in each DataLoader worker (see `make_loader`) so workers draw different augmentations."""
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(seed)

    def _infer_kind(self) -> str:
        profiles = profile_masks([c.mask for c in self.cases], load=lambda p: read_labels(p, self.spatial_dims))
        palette = any(is_palette_mask(c.mask) for c in self.cases)
        return decide_mask_kind(profiles, self.num_classes, palette=palette).kind


def to_sample(image: np.ndarray, mask: np.ndarray, name: str, weight: np.ndarray | None = None,
              instances: np.ndarray | None = None, want_instances: bool = False) -> dict[str, Any]:
    """Numpy arrays -> the sample dict of tensors (see the module docstring)."""
    sample: dict[str, Any] = {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
        "name": name,
    }
    if want_instances:
        inst = instances if instances is not None else np.zeros(mask.shape[1:], np.int64)
        sample["instances"] = torch.from_numpy(np.ascontiguousarray(inst).astype(np.int64))
    if weight is not None:
        sample["weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    return sample


def _as_cases(source: Any, scan_options: dict[str, Any]) -> list[Case]:
    if isinstance(source, (str, os.PathLike)):
        return scan_folder(source, **scan_options).cases
    if isinstance(source, FolderScan):
        return list(source.cases)
    cases = []
    for item in source:
        if isinstance(item, Case):
            cases.append(item)
            continue
        images, mask = item
        images = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        cases.append(Case(stem_of(images[0]), [Path(p) for p in images], Path(mask) if mask else None))
    return cases


def _read_channels(case: Case, spatial_dims: int | None) -> np.ndarray:
    """Read a case's files and stack their channels -> (C, *S)."""
    parts = [read_input(path, spatial_dims)[0] for path in case.images]
    for path, part in zip(case.images[1:], parts[1:]):
        if part.shape[1:] != parts[0].shape[1:]:
            raise DataError(f"{path}: size {part.shape[1:]} differs from {case.images[0]} {parts[0].shape[1:]}")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
