"""`PatchDataset`: random 2D or 3D patches from cases, with foreground oversampling.

Each case is read once (image files stacked as channels, optionally resampled to
`target_spacing`), normalised on the whole image, optionally cropped to a region (the training
part of a region split, `unetkit.data.splits.region_split`), and cached. Every item is one patch:
with probability `foreground_fraction` it is centred on a foreground pixel of a foreground class
drawn uniformly among those present (rare classes are favoured), otherwise placed uniformly. Cases
smaller than the patch are zero-padded. An epoch is `length` patches, however many or large the
images are. Items are the same dicts as `SegmentationDataset`'s, with name "<case>@corner".

`VolumeDataset` (unetkit.data.volume) is this class for 3D patches.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from unetkit.data.loader import split_seed
from unetkit.data.dataset import _as_cases, _read_channels, to_sample
from unetkit.data.folder import Case
from unetkit.data.io import read_input, read_labels
from unetkit.data.masks import decide_mask_kind, profile_masks, to_semantic
from unetkit.data.normalize import default_spec, normalize_image, validate_spec
from unetkit.errors import ConfigError, DataError

_MAX_FG_POINTS = 50000  # foreground coordinates kept per class and case

Box = Sequence[Sequence[int]]  # [(start, stop), ...] per spatial axis, half-open


class PatchDataset(Dataset):
    """Random patches from a folder (see `unetkit.data.folder`) or in-memory samples.

    source: folder, FolderScan, list of Case / (image_path, mask_path), or objects with `.image`
        `(C, *S)`, `.mask` `(1, *S)` or `(*S)` and optional `.spacing`/`.instances`.
    patch_size: (H, W) or (D, H, W); its length sets the spatial dimensions.
    length: items per epoch (default: samples_per_case per case).
    regions: {case name: box} keeps each patch of that case inside the box (half-open
        `[(start, stop), ...]`, in the coordinates of the array after resampling).
    weight_map: `(semantic, instances | None) -> weights (*S)`, computed once per case on the whole
        image (e.g. the U-Net 2015 border weights).
    """

    def __init__(self, source: str | os.PathLike | Sequence[Any], patch_size: Sequence[int], *,
                 samples_per_case: int = 4, length: int | None = None, foreground_fraction: float = 0.33,
                 target_spacing: Sequence[float] | None = None, normalize: dict[str, Any] | None = None,
                 transform: Callable | None = None, names: Sequence[str] | None = None,
                 num_classes: int | None = None, mask_kind: str = "auto", return_instances: bool = False,
                 regions: dict[str, Box] | None = None, weight_map: Callable | None = None,
                 seed: int = 0, **scan_options: Any) -> None:
        if not 0 <= foreground_fraction <= 1:
            raise ConfigError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ConfigError(f"patch_size must be (H, W) or (D, H, W) of positive sizes, got {list(patch_size)}")
        self.spatial_dims = len(self.patch_size)
        self.items = _as_items(source, scan_options, self.spatial_dims)
        if names is not None:
            wanted = set(names)
            missing = wanted - {it["name"] for it in self.items}
            if missing:
                raise DataError(f"cases not found in the dataset: {', '.join(sorted(missing)[:10])}")
            self.items = [it for it in self.items if it["name"] in wanted]
        if not self.items:
            raise DataError("no cases to sample patches from")
        self.length = length if length is not None else samples_per_case * len(self.items)
        self.foreground_fraction = foreground_fraction
        self.target_spacing = tuple(target_spacing) if target_spacing is not None else None
        self.normalize = validate_spec(normalize) if normalize is not None else default_spec()
        self.transform = transform
        self.num_classes = num_classes
        self.return_instances = return_instances
        self.regions = {k: [tuple(int(v) for v in ax) for ax in box] for k, box in (regions or {}).items()}
        self.weight_map = weight_map
        self.rng = np.random.default_rng(split_seed(seed)[0])  # not the stream of a transform seeded alike
        self._cache: dict[int, dict[str, Any]] = {}
        self.mask_kind = mask_kind if mask_kind != "auto" else decide_mask_kind(
            profile_masks(range(len(self.items)), load=lambda i: self._raw(i)[1]), num_classes).kind

    def __len__(self) -> int:
        return self.length

    @property
    def names(self) -> list[str]:
        return [it["name"] for it in self.items]

    def reseed(self, seed: int) -> None:
        own, augmentation = split_seed(seed)  # independent streams (see split_seed)
        self.rng = np.random.default_rng(own)
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(augmentation)

    def volume(self, index: int) -> dict[str, Any]:
        """The preprocessed case `index`: image (C,*S) float32, mask (1,*S), instances, weight, fg points."""
        if index in self._cache:
            return self._cache[index]
        from unetkit.data.volume import resample

        image, labels, spacing = self._raw(index)
        if self.target_spacing is not None:
            image, labels = resample(image, labels, spacing, self.target_spacing)
        image = normalize_image(image, self.normalize)  # on the whole image, as validation and prediction do
        semantic, instances = to_semantic(labels, self.mask_kind)
        item = self.items[index]
        if instances is None and item.get("instances") is not None and (self.weight_map or self.return_instances):
            found = item["instances"]
            instances = (np.asarray(found, dtype=np.int32) if isinstance(found, np.ndarray)
                         else read_labels(found, self.spatial_dims).astype(np.int32))
            if instances.shape != semantic.shape:  # the case was resampled to target_spacing
                from unetkit.data.volume import resize

                instances = resize(instances[None], semantic.shape, order=0)[0]
        weight = None
        if self.weight_map is not None:
            weight = np.asarray(self.weight_map(semantic, instances), dtype=np.float32)[None]
        box = self.regions.get(item["name"])
        if box is not None:
            box = crop_box(box, semantic.shape, item["name"])
            image, semantic = image[(slice(None),) + box], semantic[box]
            instances = instances[box] if instances is not None else None
            weight = weight[(slice(None),) + box] if weight is not None else None
        fg = {}
        for k in np.unique(semantic):
            if k == 0:
                continue
            points = np.argwhere(semantic == k)
            if len(points) > _MAX_FG_POINTS:
                points = points[np.random.default_rng(index).choice(len(points), _MAX_FG_POINTS, replace=False)]
            fg[int(k)] = points
        vol = {"image": image, "mask": semantic[None], "instances": instances, "weight": weight, "fg": fg,
               "spacing": self.target_spacing or spacing}
        self._cache[index] = vol
        return vol

    def patch_corner(self, shape: Sequence[int], fg: dict[int, np.ndarray], force_fg: bool) -> tuple[int, ...]:
        """Corner of a patch inside `shape` (already padded to at least the patch)."""
        if force_fg and fg:
            cls = list(fg)[self.rng.integers(len(fg))]
            centre = fg[cls][self.rng.integers(len(fg[cls]))]
            return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch_size, shape))
        return tuple(int(self.rng.integers(0, s - p + 1)) for p, s in zip(self.patch_size, shape))

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_index = index % len(self.items)
        vol = self.volume(case_index)
        image, mask, instances, weight = _pad_to(vol["image"], vol["mask"], vol["instances"], vol["weight"],
                                                 self.patch_size)
        force_fg = self.rng.random() < self.foreground_fraction
        corner = self.patch_corner(image.shape[1:], vol["fg"], force_fg)
        box = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
        image, mask = image[(slice(None),) + box], mask[(slice(None),) + box]
        instances = instances[box] if instances is not None else None
        weight = weight[(slice(None),) + box] if weight is not None else None
        if self.transform is not None:
            kwargs = {"weight": weight} if weight is not None else {}
            if getattr(self.transform, "accepts_spacing", False) and self.spatial_dims == 3:
                kwargs["spacing"] = vol["spacing"]  # rotations in mm; thick slices are not rotated out of plane
            out = self.transform(image, mask, instances=instances, **kwargs)
            image, mask, instances, weight = out["image"], out["mask"], out.get("instances"), out.get("weight")
        name = f"{self.items[case_index]['name']}@{','.join(map(str, corner))}"
        return to_sample(image, mask, name=name, weight=weight, instances=instances,
                         want_instances=self.return_instances)

    def whole(self, index: int) -> dict[str, Any]:
        """Case `index` whole (cropped to its region, if any), without augmentation: a sample dict."""
        vol = self.volume(index)
        return to_sample(vol["image"], vol["mask"], name=self.items[index]["name"], weight=vol["weight"],
                         instances=vol["instances"], want_instances=self.return_instances)

    def _raw(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        item = self.items[index]
        if "case" in item:
            case: Case = item["case"]
            image = _read_channels(case, self.spatial_dims)
            meta = read_input(case.images[0], self.spatial_dims)[1] if self.spatial_dims == 3 else None
            labels = read_labels(case.mask, self.spatial_dims)
            if labels.shape != image.shape[1:]:
                raise DataError(f"{case.mask}: size {labels.shape} differs from image {image.shape[1:]}")
            if image.ndim != self.spatial_dims + 1:
                raise DataError(f"{case.images[0]}: a {image.ndim - 1}D image, but the patches are "
                                f"{self.spatial_dims}D ({list(self.patch_size)})")
            spacing = tuple(meta.spacing) if meta is not None else (1.0,) * self.spatial_dims
            return image, labels, spacing
        return item["image"], item["labels"], item["spacing"]


class WholeCases(Dataset):
    """The cases of a `PatchDataset` whole, one item each (e.g. the held-out region of a region split)."""

    def __init__(self, patches: PatchDataset) -> None:
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.patches.whole(index)


def crop_box(box: Box, shape: Sequence[int], name: str = "case") -> tuple[slice, ...]:
    """A region `[(start, stop), ...]` as slices, checked against the case's `shape`."""
    if len(box) != len(shape) or any(not 0 <= a < b <= s for (a, b), s in zip(box, shape)):
        raise ConfigError(f"{name}: region {[list(ax) for ax in box]} is not inside its {list(shape)} image")
    return tuple(slice(a, b) for a, b in box)


def _as_items(source: Any, scan_options: dict[str, Any], spatial_dims: int) -> list[dict[str, Any]]:
    if isinstance(source, (list, tuple)) and source and hasattr(source[0], "image"):
        items = []
        for i, s in enumerate(source):
            labels = np.asarray(s.mask)
            labels = labels[0] if labels.ndim == spatial_dims + 1 else labels
            instances = getattr(s, "instances", None)
            items.append({"name": getattr(s, "name", f"case_{i:03d}"), "image": np.asarray(s.image),
                          "labels": labels, "spacing": tuple(getattr(s, "spacing", None) or (1.0,) * spatial_dims),
                          "instances": np.asarray(instances) if instances is not None else None})
        return items
    cases = _as_cases(source, scan_options)
    unpaired = [str(c.images[0]) for c in cases if c.mask is None]
    if unpaired:
        raise DataError(f"{unpaired[0]}: image without mask ({len(unpaired)} in all); run unetkit check-data")
    return [{"name": c.name, "case": c, "instances": c.instances} for c in cases]


def _pad_to(image: np.ndarray, mask: np.ndarray, instances: np.ndarray | None, weight: np.ndarray | None,
            size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    pad = [(0, max(0, p - s)) for p, s in zip(size, image.shape[1:])]
    if not any(after for _, after in pad):
        return image, mask, instances, weight
    return (np.pad(image, [(0, 0)] + pad), np.pad(mask, [(0, 0)] + pad),
            np.pad(instances, pad) if instances is not None else None,
            np.pad(weight, [(0, 0)] + pad, constant_values=1.0) if weight is not None else None)
