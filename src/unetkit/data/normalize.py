"""Intensity normalisation from a JSON-able spec, applied alike in training and prediction.

The spec is a dict stored in model files, e.g. `{"mode": "percentile", "lower": 1.0, "upper": 99.8}`.
Every mode works per channel on a channel-first image `(C, *S)` and returns float32 `(C, *S)`:

| mode       | keys (defaults)                                | result per channel                          |
|------------|------------------------------------------------|---------------------------------------------|
| percentile | lower=1.0, upper=99.8                          | clip to the image's [p_lower, p_upper], scale to [0, 1] |
| zscore     | lower=None, upper=None (optional percentile clip) | (x - mean) / std of this image (after the clip) |
| dataset    | mean=[...], std=[...] (one per channel), clip=None ([lo, hi] per channel or shared) | (x - mean) / std with fixed dataset values |
| minmax     | -                                              | (x - min) / (max - min) of this image       |
| ct         | level+width or min+max (HU)                    | clip to the window, scale to [0, 1]         |
| none       | -                                              | cast to float32                              |

A constant channel maps to 0 rather than dividing by zero.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from unetkit.errors import ConfigError

MODES = ("percentile", "zscore", "dataset", "minmax", "ct", "none")
_KEYS = {
    "percentile": {"lower", "upper"},
    "zscore": {"lower", "upper"},
    "dataset": {"mean", "std", "clip"},
    "minmax": set(),
    "ct": {"level", "width", "min", "max"},
    "none": set(),
}
EPS = 1e-8


def default_spec() -> dict[str, Any]:
    """The default: per-image, per-channel percentile scaling to [0, 1]."""
    return {"mode": "percentile", "lower": 1.0, "upper": 99.8}


def dataset_spec(stats: dict[str, Any]) -> dict[str, Any]:
    """A "dataset" spec from check-data statistics (`stats["intensity"]["mean"/"std"]`, one per channel)."""
    intensity = stats["intensity"]
    return {"mode": "dataset", "mean": [float(m) for m in intensity["mean"]],
            "std": [float(s) for s in intensity["std"]]}


def validate_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    """Return a complete copy of `spec` (None -> default), raising ConfigError on unknown modes/keys."""
    if spec is None:
        return default_spec()
    if not isinstance(spec, dict) or "mode" not in spec:
        raise ConfigError(f"normalisation spec must be a dict with a 'mode' ({', '.join(MODES)}), got {spec!r}")
    mode = spec["mode"]
    if mode not in MODES:
        raise ConfigError(f"unknown normalisation mode '{mode}'; choose one of {', '.join(MODES)}")
    unknown = set(spec) - _KEYS[mode] - {"mode"}
    if unknown:
        raise ConfigError(f"normalisation mode '{mode}' has no option(s) {sorted(unknown)}; "
                          f"known: {sorted(_KEYS[mode])}")
    out = dict(spec)
    if mode == "percentile":
        out.setdefault("lower", 1.0)
        out.setdefault("upper", 99.8)
    if mode in ("percentile", "zscore") and out.get("lower") is not None:
        if not 0 <= out["lower"] < out.get("upper", 100) <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {spec}")
    if mode == "dataset" and ("mean" not in out or "std" not in out):
        raise ConfigError("normalisation mode 'dataset' needs 'mean' and 'std' (one per channel)")
    if mode == "ct":
        has_level = "level" in out and "width" in out
        has_range = "min" in out and "max" in out
        if has_level == has_range:
            raise ConfigError("normalisation mode 'ct' needs either level+width or min+max")
    return out


def normalize_image(image: np.ndarray, spec: dict[str, Any] | None = None) -> np.ndarray:
    """Normalise a channel-first image `(C, *S)` following `spec`; returns float32 of the same shape."""
    spec = validate_spec(spec)
    x = np.asarray(image, dtype=np.float32)
    if x.ndim < 2:
        raise ConfigError(f"normalize_image expects a channel-first image (C, *S), got shape {x.shape}")
    mode = spec["mode"]
    if mode == "none":
        return x.copy() if x is image else x
    flat = x.reshape(x.shape[0], -1)
    bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
    if mode == "percentile":
        lo, hi = _percentiles(flat, spec["lower"], spec["upper"], bshape)
        return _scale(x, lo, hi)
    if mode == "minmax":
        return _scale(x, flat.min(axis=1).reshape(bshape), flat.max(axis=1).reshape(bshape))
    if mode == "ct":
        if "level" in spec:
            lo = float(spec["level"]) - float(spec["width"]) / 2
            hi = float(spec["level"]) + float(spec["width"]) / 2
        else:
            lo, hi = float(spec["min"]), float(spec["max"])
        return _scale(x, np.float32(lo), np.float32(hi))
    if mode == "zscore":
        if spec.get("lower") is not None:
            lo, hi = _percentiles(flat, spec["lower"], spec.get("upper", 100.0), bshape)
            x = np.clip(x, lo, hi)
            flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(axis=1, dtype=np.float64).reshape(bshape)
        std = flat.std(axis=1, dtype=np.float64).reshape(bshape)
        return ((x - mean) / np.maximum(std, EPS)).astype(np.float32)
    # dataset
    mean = _per_channel(spec["mean"], x.shape[0], "mean").reshape(bshape)
    std = _per_channel(spec["std"], x.shape[0], "std").reshape(bshape)
    if spec.get("clip") is not None:
        clip = np.asarray(spec["clip"], dtype=np.float32).reshape(-1, 2)
        clip = np.broadcast_to(clip, (x.shape[0], 2))
        x = np.clip(x, clip[:, 0].reshape(bshape), clip[:, 1].reshape(bshape))
    return ((x - mean) / np.maximum(std, EPS)).astype(np.float32)


def _percentiles(flat: np.ndarray, lower: float, upper: float, bshape: tuple[int, ...]
                 ) -> tuple[np.ndarray, np.ndarray]:
    q = np.percentile(flat, [float(lower), float(upper)], axis=1)
    return q[0].astype(np.float32).reshape(bshape), q[1].astype(np.float32).reshape(bshape)


def _scale(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Clip to [lo, hi] and map to [0, 1]; a zero-width range maps to 0."""
    width = hi - lo
    out = (np.clip(x, lo, hi) - lo) / np.where(width > 0, width, 1.0)
    return out.astype(np.float32)


def _per_channel(values: Any, channels: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise ConfigError(f"normalisation '{name}' has {arr.size} values for an image with {channels} channels")
    return arr
