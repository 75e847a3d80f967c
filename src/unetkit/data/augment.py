"""Augmentation applied identically to an image and its mask (and weight map / instance ids).

    augment = build_augmentation("default", spatial_dims=2, seed=0)
    out = augment(image, mask, weight=None, instances=None)
    out["image"]  (C, *S) float32     out["mask"]      (1, *S) int64
    out["weight"] (1, *S) float32     out["instances"] (*S) int64      (when given)

Spatial ops move every array alike; masks, weights and instance ids use nearest-neighbour sampling
and every array uses the same mirrored border, so labels stay on their pixels. Order: crop, flips,
90-degree rotations, affine, elastic, then intensity ops on the image only.
- 2D: crop, affine and elastic through albumentations 2.x (A.RandomResizedCrop / A.RandomCrop,
  A.Affine, A.ElasticTransform); 3D: the same set with scipy.ndimage (one map_coordinates call for
  affine + elastic).
- flips / rot90 (any dims) and intensity ops are numpy, shared by 2D and 3D. Intensity ops scale with
  each channel's range, so they suit both [0, 1] (percentile) and z-scored images, and gamma is
  applied on a [0, 1]-rescaled copy so negative values never produce NaN.
- 3D with `spacing` (the voxel size, given per call by the patch datasets): rotations, 90-degree
  turns and elastic displacements act in physical space, and an axis whose spacing is more than
  `ANISOTROPY_LIMIT` x the finest (thick slices) is never rotated into the others, as nnU-Net's
  "dummy 2D" augmentation: rotating a 14x96x96 patch of 5 mm slices about an in-plane axis would mix
  slices 8x further apart than its pixels.

Configuration: a preset name (`none`, `light`, `default`, `heavy`) or a dict of ops, optionally based
on a preset, e.g. `{"preset": "default", "elastic": {"p": 0.5}, "crop": {"size": 128}, "noise": None}`.
Ops and their options (p = probability):
    crop      size (int or tuple), scale (min, max) area fraction for a random-resized crop (2D only)
    flip      p (per axis)
    rot90     p (in a random plane of equal-sized axes)
    affine    p, rotate (degrees, +-), scale (min, max), shift (fraction of size, +-)
    elastic   p, alpha, sigma (as albumentations.ElasticTransform: RMS displacement ~0.07*alpha/sigma px,
              sigma = smoothness in pixels)
    brightness_contrast  p, brightness (+- fraction of the channel range), contrast (+- factor)
    gamma     p, range (min, max)
    noise     p, std (min, max) as a fraction of the channel range
    blur      p, sigma (min, max) in pixels
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from unetkit.errors import ConfigError

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "light": {
        "flip": {"p": 0.5},
        "rot90": {"p": 0.5},
        "brightness_contrast": {"p": 0.3, "brightness": 0.1, "contrast": 0.1},
    },
    "default": {
        "flip": {"p": 0.5},
        "rot90": {"p": 0.5},
        "affine": {"p": 0.5, "rotate": 15.0, "scale": (0.85, 1.15), "shift": 0.05},
        "elastic": {"p": 0.2, "alpha": 150.0, "sigma": 8.0},
        "brightness_contrast": {"p": 0.5, "brightness": 0.15, "contrast": 0.15},
        "gamma": {"p": 0.3, "range": (0.8, 1.25)},
        "noise": {"p": 0.2, "std": (0.01, 0.05)},
        "blur": {"p": 0.1, "sigma": (0.5, 1.0)},
    },
    "heavy": {
        "flip": {"p": 0.5},
        "rot90": {"p": 0.5},
        "affine": {"p": 0.7, "rotate": 45.0, "scale": (0.7, 1.4), "shift": 0.1},
        "elastic": {"p": 0.5, "alpha": 400.0, "sigma": 10.0},
        "brightness_contrast": {"p": 0.7, "brightness": 0.25, "contrast": 0.3},
        "gamma": {"p": 0.5, "range": (0.6, 1.6)},
        "noise": {"p": 0.4, "std": (0.01, 0.1)},
        "blur": {"p": 0.3, "sigma": (0.5, 1.5)},
    },
}
OPS = {
    "crop": {"size": None, "scale": None, "p": 1.0},
    "flip": {"p": 0.5},
    "rot90": {"p": 0.5},
    "affine": {"p": 0.5, "rotate": 15.0, "scale": (0.85, 1.15), "shift": 0.05},
    "elastic": {"p": 0.2, "alpha": 150.0, "sigma": 8.0},
    "brightness_contrast": {"p": 0.5, "brightness": 0.15, "contrast": 0.15},
    "gamma": {"p": 0.3, "range": (0.8, 1.25)},
    "noise": {"p": 0.2, "std": (0.01, 0.05)},
    "blur": {"p": 0.1, "sigma": (0.5, 1.0)},
}
# albumentations' ElasticTransform moves pixels by about 0.07 * alpha / sigma (RMS, measured on 2.0.8);
# the 3D version draws a smooth field of that RMS so alpha and sigma mean the same in 2D and 3D.
ELASTIC_SCALE = 0.07
ANISOTROPY_LIMIT = 3.0  # nnU-Net's anisotropy threshold: thicker axes are not rotated out of their plane
TURN_LIMIT = 1.25  # a 90-degree turn swaps two axes: only when their spacings (nearly) agree


def resolve_config(config: str | dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Preset name or dict -> `{op: options}` with every option filled in; ConfigError on unknown names."""
    if config is None:
        config = "none"
    if isinstance(config, str):
        if config not in PRESETS:
            raise ConfigError(f"unknown augmentation preset '{config}'; choose one of {', '.join(PRESETS)}")
        config = {"preset": config}
    config = dict(config)
    base = config.pop("preset", "none")
    if base not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{base}'; choose one of {', '.join(PRESETS)}")
    ops = copy.deepcopy(PRESETS[base])
    for name, options in config.items():
        if name not in OPS:
            raise ConfigError(f"unknown augmentation op '{name}'; known: {', '.join(OPS)}")
        if options in (None, False):
            ops.pop(name, None)
            continue
        options = {"p": float(options)} if isinstance(options, (int, float)) and name != "crop" else options
        options = {"size": options} if name == "crop" and not isinstance(options, dict) else options
        unknown = set(options) - set(OPS[name])
        if unknown:
            raise ConfigError(f"augmentation op '{name}' has no option(s) {sorted(unknown)}; "
                              f"known: {sorted(OPS[name])}")
        ops[name] = {**ops.get(name, {}), **options}
    resolved = {name: {**OPS[name], **options} for name, options in ops.items()}
    if "crop" in resolved and resolved["crop"]["size"] is None:
        raise ConfigError("augmentation op 'crop' needs a size")
    return resolved


def build_augmentation(config: str | dict[str, Any] | None = "default", spatial_dims: int = 2,
                       seed: int | None = None) -> "Augmentation":
    """A callable `(image (C,*S), mask (1,*S), weight=None, instances=None) -> dict` (module docstring)."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return Augmentation(resolve_config(config), spatial_dims, seed)


class Augmentation:
    """The augmentation pipeline; `reseed(seed)` is called per DataLoader worker by `make_loader`."""

    def __init__(self, ops: dict[str, dict[str, Any]], spatial_dims: int, seed: int | None = None) -> None:
        self.ops = ops
        self.spatial_dims = spatial_dims
        self._albu = _build_albumentations(ops) if spatial_dims == 2 else None
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)
        if self._albu is not None:
            self._albu.set_random_seed(None if seed is None else int(seed) % 2**32)

    def __repr__(self) -> str:
        return f"Augmentation({self.spatial_dims}D, {self.ops})"

    accepts_spacing = True  # the patch datasets pass each case's voxel spacing (3D)

    def __call__(self, image: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None,
                 instances: np.ndarray | None = None, spacing: Any = None) -> dict[str, np.ndarray]:
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask)
        mask = mask[None] if mask.ndim == image.ndim - 1 else mask
        if image.ndim != self.spatial_dims + 1 or mask.shape[1:] != image.shape[1:]:
            raise ConfigError(f"augmentation ({self.spatial_dims}D) expects image (C, *S) and mask (1, *S), "
                              f"got {image.shape} and {mask.shape}")
        labels = [mask[0].astype(np.float32)]  # nearest-sampled arrays, float32 for cv2/scipy
        if weight is not None:
            labels.append(np.asarray(weight, dtype=np.float32).reshape(image.shape[1:]))
        if instances is not None:
            labels.append(np.asarray(instances, dtype=np.float32))
        image, labels = self._spatial(image, labels, _relative_spacing(spacing, self.spatial_dims))
        image = self._intensity(image)
        out = {"image": np.ascontiguousarray(image, dtype=np.float32),
               "mask": np.rint(labels[0])[None].astype(np.int64)}
        if weight is not None:
            out["weight"] = np.ascontiguousarray(labels[1][None])
        if instances is not None:
            out["instances"] = np.rint(labels[-1]).astype(np.int64)
        return out

    # ---------------------------------------------------------------- spatial

    def _spatial(self, image: np.ndarray, labels: list[np.ndarray], spacing: np.ndarray
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
        ops, rng = self.ops, self.rng
        if self.spatial_dims == 3 and "crop" in ops:
            image, labels = _crop_nd(image, labels, ops["crop"]["size"], rng)
        if "flip" in ops:
            for axis in range(self.spatial_dims):
                if rng.random() < ops["flip"]["p"]:
                    image = np.flip(image, axis + 1)
                    labels = [np.flip(a, axis) for a in labels]
        if "rot90" in ops and rng.random() < ops["rot90"]["p"]:
            planes = [(a, b) for a in range(self.spatial_dims) for b in range(a + 1, self.spatial_dims)
                      if image.shape[a + 1] == image.shape[b + 1] and _ratio(spacing, a, b) <= TURN_LIMIT]
            if planes:
                a, b = planes[rng.integers(len(planes))]
                k = int(rng.integers(1, 4))
                image = np.rot90(image, k, axes=(a + 1, b + 1))
                labels = [np.rot90(x, k, axes=(a, b)) for x in labels]
        if self.spatial_dims == 2:
            return self._albumentations(image, labels)
        return _warp_nd(image, labels, ops, rng, spacing)

    def _albumentations(self, image: np.ndarray, labels: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        if self._albu is None:
            return image, labels
        targets = {"image": np.ascontiguousarray(np.moveaxis(image, 0, -1)), "mask": np.ascontiguousarray(labels[0])}
        for i, extra in enumerate(labels[1:]):
            targets[f"extra{i}"] = np.ascontiguousarray(extra)
        out = self._albu(**targets)
        image = np.moveaxis(out["image"], -1, 0)
        if image.ndim == 2:  # albumentations drops a single channel in some ops
            image = image[None]
        return image, [out["mask"]] + [out[f"extra{i}"] for i in range(len(labels) - 1)]

    # ---------------------------------------------------------------- intensity

    def _intensity(self, image: np.ndarray) -> np.ndarray:
        ops, rng = self.ops, self.rng
        if not any(k in ops for k in ("brightness_contrast", "gamma", "noise", "blur")):
            return image
        image = np.array(image, dtype=np.float32)
        bshape = (image.shape[0],) + (1,) * (image.ndim - 1)
        flat = image.reshape(image.shape[0], -1)
        lo, hi = flat.min(axis=1).reshape(bshape), flat.max(axis=1).reshape(bshape)
        span = np.maximum(hi - lo, 1e-6)
        if "blur" in ops and rng.random() < ops["blur"]["p"]:
            sigma = rng.uniform(*ops["blur"]["sigma"])
            image = ndi.gaussian_filter(image, (0,) + (sigma,) * (image.ndim - 1), mode="mirror")
        if "brightness_contrast" in ops and rng.random() < ops["brightness_contrast"]["p"]:
            o = ops["brightness_contrast"]
            mean = image.reshape(image.shape[0], -1).mean(axis=1).reshape(bshape)
            factor = 1.0 + rng.uniform(-o["contrast"], o["contrast"])
            image = (image - mean) * factor + mean + rng.uniform(-o["brightness"], o["brightness"]) * span
        if "gamma" in ops and rng.random() < ops["gamma"]["p"]:
            gamma = rng.uniform(*ops["gamma"]["range"])
            unit = np.clip((image - lo) / span, 0, 1)
            image = unit**gamma * span + lo
        if "noise" in ops and rng.random() < ops["noise"]["p"]:
            std = rng.uniform(*ops["noise"]["std"])
            image = image + rng.standard_normal(image.shape, dtype=np.float32) * (std * span)
        return image.astype(np.float32)


def _build_albumentations(ops: dict[str, dict[str, Any]]) -> Any:
    """The 2D spatial part (crop, affine, elastic) as an albumentations 2.x Compose, or None."""
    if not any(k in ops for k in ("crop", "affine", "elastic")):
        return None
    import albumentations as A
    import cv2

    border = cv2.BORDER_REFLECT_101
    transforms = []
    if "crop" in ops:
        size = ops["crop"]["size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if ops["crop"]["scale"] is not None:
            transforms.append(A.RandomResizedCrop(size=(h, w), scale=tuple(ops["crop"]["scale"]),
                                                  interpolation=cv2.INTER_LINEAR,
                                                  mask_interpolation=cv2.INTER_NEAREST, p=1.0))
        else:
            transforms.append(A.RandomCrop(height=h, width=w, pad_if_needed=True, border_mode=border, p=1.0))
    if "affine" in ops:
        o = ops["affine"]
        transforms.append(A.Affine(scale=tuple(o["scale"]), translate_percent=(-o["shift"], o["shift"]),
                                   rotate=(-o["rotate"], o["rotate"]), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST, border_mode=border, p=o["p"]))
    if "elastic" in ops:
        o = ops["elastic"]
        transforms.append(A.ElasticTransform(alpha=o["alpha"], sigma=o["sigma"], interpolation=cv2.INTER_LINEAR,
                                             mask_interpolation=cv2.INTER_NEAREST, border_mode=border, p=o["p"]))
    extra = {f"extra{i}": "mask" for i in range(2)}
    return A.Compose(transforms, additional_targets=extra, is_check_shapes=True)


def _crop_nd(image: np.ndarray, labels: list[np.ndarray], size: Any, rng: np.random.Generator
             ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Random crop of the spatial axes to `size`, mirror-padding axes that are too small."""
    spatial = image.shape[1:]
    size = (size,) * len(spatial) if isinstance(size, int) else tuple(size)
    pad = [(0, max(0, s - n)) for s, n in zip(size, spatial)]
    if any(p for _, p in pad):
        image = np.pad(image, [(0, 0)] + pad, mode="reflect")
        labels = [np.pad(a, pad, mode="reflect") for a in labels]
    starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(image.shape[1:], size)]
    box = tuple(slice(a, a + s) for a, s in zip(starts, size))
    return image[(slice(None),) + box], [a[box] for a in labels]


def _relative_spacing(spacing: Any, dims: int) -> np.ndarray:
    """Spacing divided by its finest axis (ones when not given)."""
    if spacing is None:
        return np.ones(dims)
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (dims,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ConfigError(f"augmentation: spacing must be {dims} positive numbers, got {spacing}")
    return sp / sp.min()


def _ratio(spacing: np.ndarray, a: int, b: int) -> float:
    return float(max(spacing[a], spacing[b]) / min(spacing[a], spacing[b]))


def _warp_nd(image: np.ndarray, labels: list[np.ndarray], ops: dict[str, dict[str, Any]],
             rng: np.random.Generator, spacing: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Affine (rotation about each axis, scale, shift) and elastic deformation in one resampling.

    `spacing` (relative, finest axis 1): rotations are physical (voxel coordinates scaled to mm,
    rotated, scaled back), planes with an axis over ANISOTROPY_LIMIT x the finest are not rotated, and
    the elastic field's smoothness and displacement are the same in mm on every axis."""
    do_affine = "affine" in ops and rng.random() < ops["affine"]["p"]
    do_elastic = "elastic" in ops and rng.random() < ops["elastic"]["p"]
    if not (do_affine or do_elastic):
        return image, labels
    shape = image.shape[1:]
    ndim = len(shape)
    centre = (np.array(shape) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    coords = grid.reshape(ndim, -1) - centre[:, None]
    if do_affine:
        o = ops["affine"]
        matrix = np.eye(ndim) / rng.uniform(*o["scale"])
        for a in range(ndim):
            for b in range(a + 1, ndim):
                angle = np.deg2rad(rng.uniform(-o["rotate"], o["rotate"]))  # drawn always: same stream
                if _ratio(spacing, a, b) <= ANISOTROPY_LIMIT:
                    rotation = _plane_rotation(ndim, a, b, angle)
                    matrix = np.diag(1 / spacing) @ rotation @ np.diag(spacing) @ matrix  # in mm
        shift = rng.uniform(-o["shift"], o["shift"], size=ndim) * np.array(shape)
        coords = matrix.astype(np.float32) @ coords - shift[:, None].astype(np.float32)
    coords = coords + centre[:, None]
    coords = coords.reshape((ndim,) + shape)
    if do_elastic:
        o = ops["elastic"]
        magnitude = ELASTIC_SCALE * o["alpha"] / o["sigma"]
        sigmas = [o["sigma"] / s for s in spacing]  # the same smoothness in mm on every axis
        for axis in range(ndim):
            field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigmas, mode="wrap")
            coords[axis] += field * (magnitude / spacing[axis] / (field.std() + 1e-8))
    warped = np.stack([ndi.map_coordinates(c, coords, order=1, mode="mirror") for c in image])
    labels = [ndi.map_coordinates(a, coords, order=0, mode="mirror") for a in labels]
    return warped, labels


def _plane_rotation(ndim: int, a: int, b: int, angle: float) -> np.ndarray:
    rot = np.eye(ndim)
    rot[a, a] = rot[b, b] = np.cos(angle)
    rot[a, b], rot[b, a] = -np.sin(angle), np.sin(angle)
    return rot
