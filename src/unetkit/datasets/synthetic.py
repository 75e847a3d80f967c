"""A seeded generator of microscopy-like images (2D or 3D) with instance and semantic masks.

Objects are blobby ellipses/ellipsoids of several classes (class 1: large, bright, smooth nuclei;
class 2: smaller, dimmer, textured; class 3: elongated), placed so that some touch or overlap.
Each pixel belongs to the object whose normalised distance is smallest (touching objects split
cleanly); intensities of overlapping objects add up as in fluorescence. Then uneven illumination,
optical blur and Poisson + Gaussian noise are applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

# per-class appearance: (relative radius, brightness, texture strength, elongation)
_CLASS_LOOK = {1: (1.0, 1.0, 0.15, 1.2), 2: (0.7, 0.6, 0.45, 1.1), 3: (0.8, 0.8, 0.25, 2.2)}


@dataclass
class Sample:
    """One image with its labels.

    image: `(C, *S)` (uint16 or float32); mask: `(1, *S)` semantic class indices (uint8);
    instances: `(*S)` instance ids (int32, 0 = background); classes: instance id -> class.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    classes: dict[int, int] = field(default_factory=dict)
    spacing: tuple[float, ...] | None = None


def generate_cells(shape: tuple[int, ...] = (256, 256), count: int | None = None, num_classes: int = 2,
                   seed: int = 0, radius: float | None = None, channels: int = 1, blur: float = 1.0,
                   noise: float = 0.02, photons: float = 400.0, dtype: str = "uint16",
                   name: str = "cells") -> Sample:
    """Generate one image of `count` objects (default: fills ~35% of the area) in `shape` (2D or 3D).

    num_classes counts the background: 2 -> one object class, 3 -> two, 4 -> three.
    channels=2 adds a second stain (a diffuse "cytoplasm" ring around each object).
    Returns a `Sample` whose image is uint16 (12-bit range) or float32 in [0, 1] (`dtype`).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"shape must be 2D or 3D with sides >= 8, got {shape}")
    if not 2 <= num_classes <= 4:
        raise ValueError(f"num_classes must be 2, 3 or 4 (background included), got {num_classes}")
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    radius = radius or max(3.0, min(shape) / 14)
    if count is None:
        unit = np.pi * radius**2 if ndim == 2 else 4 / 3 * np.pi * radius**3
        count = max(1, int(0.35 * np.prod(shape) / unit))
    centres = _place_centres(rng, shape, count, radius)
    wobble = _smooth_noise(rng, shape, sigma=radius / 2)  # makes outlines blobby

    best = np.full(shape, np.inf, dtype=np.float32)
    instances = np.zeros(shape, dtype=np.int32)
    signal = np.zeros(shape, dtype=np.float32)
    texture = _smooth_noise(rng, shape, sigma=1.5)
    classes: dict[int, int] = {}
    for index, centre in enumerate(centres, start=1):
        cls = int(rng.integers(1, num_classes))
        rel_r, brightness, tex, elong = _CLASS_LOOK[cls]
        axes = radius * rel_r * rng.uniform(0.75, 1.25) * np.ones(ndim)
        axes[-1] *= elong * rng.uniform(0.9, 1.1)
        rotation = _random_rotation(rng, ndim)
        half = int(np.ceil(axes.max() * 1.4)) + 1
        box = tuple(slice(max(0, int(c) - half), min(s, int(c) + half + 1)) for c, s in zip(centre, shape))
        grids = np.meshgrid(*[np.arange(b.start, b.stop) - c for b, c in zip(box, centre)], indexing="ij")
        coords = np.stack([g.ravel() for g in grids])  # (ndim, n)
        local = (rotation @ coords) / axes[:, None]
        dist = np.sqrt((local**2).sum(0)).reshape(grids[0].shape) + 0.25 * wobble[box]
        inside = dist < 1.0
        closer = inside & (dist < best[box])
        best[box][closer] = dist[closer]
        instances[box][closer] = index
        profile = np.clip(1.0 - 0.35 * dist**2, 0, None) * inside
        signal[box] += brightness * rng.uniform(0.8, 1.2) * profile * (1.0 + tex * texture[box])
        classes[index] = cls
    instances, classes = _drop_hidden(instances, classes)
    semantic = np.zeros(shape, dtype=np.uint8)
    if classes:
        lut = np.zeros(instances.max() + 1, dtype=np.uint8)
        for i, c in classes.items():
            lut[i] = c
        semantic = lut[instances]

    stains = [signal]
    if channels >= 2:
        ring = ndi.gaussian_filter((instances > 0).astype(np.float32), radius / 2) * 0.5
        stains.append(ring + 0.2 * signal)
    stains += [_smooth_noise(rng, shape, radius) * 0.1 + 0.1 for _ in range(max(0, channels - 2))]
    illumination = _illumination(rng, shape)
    image = np.stack([_optics(rng, s * illumination + 0.05, blur, noise, photons) for s in stains])
    image = np.clip(image / max(1.0, float(np.percentile(image, 99.95))), 0, 1).astype(np.float32)
    if dtype == "uint16":
        image = np.round(image * 4095).astype(np.uint16)
    elif dtype != "float32":
        raise ValueError(f"dtype must be 'uint16' or 'float32', got {dtype!r}")
    return Sample(name=name, image=image, mask=semantic[None], instances=instances, classes=classes,
                  spacing=(1.0,) * ndim)


def _place_centres(rng: np.random.Generator, shape: tuple[int, ...], count: int, radius: float) -> np.ndarray:
    """Random centres; about a third are placed next to an earlier one so that objects touch/overlap."""
    centres = rng.uniform(radius * 0.5, np.array(shape) - radius * 0.5, size=(count, len(shape)))
    for i in range(1, count):
        if rng.random() < 0.35:
            j = rng.integers(0, i)
            direction = rng.normal(size=len(shape))
            direction /= np.linalg.norm(direction) + 1e-9
            candidate = centres[j] + direction * radius * rng.uniform(1.4, 2.0)
            if np.all(candidate >= 0) and np.all(candidate < np.array(shape)):
                centres[i] = candidate
    return centres


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return q * np.sign(np.diag(r))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    field_ = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field_ / (field_.std() + 1e-8)


def _illumination(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth field between ~0.6 and 1: a tilted plane plus a broad vignette."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    tilt = sum(g * rng.uniform(-0.15, 0.15) for g in grids)
    vignette = sum(g**2 for g in grids) / len(shape)
    return (0.9 + tilt - 0.25 * vignette).astype(np.float32)


def _optics(rng: np.random.Generator, image: np.ndarray, blur: float, noise: float, photons: float) -> np.ndarray:
    """Blur, Poisson shot noise (`photons` at intensity 1) and Gaussian read noise."""
    if blur > 0:
        image = ndi.gaussian_filter(image, blur)
    image = rng.poisson(np.clip(image, 0, None) * photons).astype(np.float32) / photons
    return image + rng.normal(0, noise, image.shape).astype(np.float32)


def _drop_hidden(instances: np.ndarray, classes: dict[int, int]) -> tuple[np.ndarray, dict[int, int]]:
    """Relabel ids 1..n in order, dropping objects fully hidden by their neighbours."""
    present = np.unique(instances)
    present = present[present > 0]
    lut = np.zeros(max(classes, default=0) + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[instances], {int(lut[i]): classes[int(i)] for i in present}


def describe() -> dict[str, Any]:
    return {"license": "generated (no restrictions)", "dims": (2, 3)}
