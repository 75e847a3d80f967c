"""What a mask's values mean: binary (0/1 or 0/255), class indices, or instance ids.

`infer_mask_kind` decides for a whole dataset; `to_semantic` converts one mask to class indices
(and keeps the instance ids when the mask holds instances).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from unetkit.errors import ConfigError

MASK_KINDS = ("auto", "binary", "classes", "instances")
MAX_AUTO_CLASSES = 16  # without num_classes, masks with more distinct values are read as instances


def value_kind(values: Iterable[int]) -> str:
    """'binary01', 'binary255' (a {0, 255} mask; {0, 65535} too, as 16-bit tools such as Fiji save
    binary masks), 'empty' (background only) or 'other'."""
    values = set(int(v) for v in values)
    if values <= {0}:
        return "empty"
    if values <= {0, 1}:
        return "binary01"
    if values <= {0, 255} or values <= {0, 65535}:
        return "binary255"
    return "other"


def infer_mask_kind(value_sets: list[np.ndarray], num_classes: int | None = None) -> str:
    """Dataset-level kind from each mask's distinct values.

    - binary: most non-empty masks hold {0, 1} or {0, 255};
    - classes: num_classes > 2 is given, or (no num_classes) every mask has <= 16 distinct values;
    - instances: otherwise (num_classes 2 or None with many distinct ids per mask).
    """
    kinds = [value_kind(v) for v in value_sets]
    nonempty = [k for k in kinds if k != "empty"]
    if not nonempty or sum(k != "other" for k in nonempty) * 2 > len(nonempty):
        return "binary"
    if num_classes is not None:
        return "classes" if num_classes > 2 else "instances"
    most = max(len(v) for v in value_sets)
    return "classes" if most <= MAX_AUTO_CLASSES else "instances"


def to_semantic(labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """`(semantic int64, instances int32 or None)` of a raw mask `(*S)` of the given (not 'auto') kind."""
    if kind == "binary":
        return (labels > 0).astype(np.int64), None
    if kind == "classes":
        return labels.astype(np.int64), None
    if kind == "instances":
        return (labels > 0).astype(np.int64), labels.astype(np.int32)
    raise ConfigError(f"mask_kind must be one of {', '.join(MASK_KINDS[1:])} here, got {kind!r}")


def mask_kind_of(labels: np.ndarray, num_classes: int | None = None) -> str:
    """The kind of a single mask (see `infer_mask_kind`)."""
    return infer_mask_kind([np.unique(labels)], num_classes)
