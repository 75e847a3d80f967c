"""Per-object measurements (cell counting, lesion measurement, defect inspection) and object matching.

`measure_objects` reports, for each instance: id, class, pixel count, area (2D) or volume (3D) in
physical units (`spacing` per axis, (H, W) or (D, H, W) order; pixels when None), perimeter (2D,
scikit-image's 4-neighbourhood estimate) or surface area (3D, marching cubes, optional), equivalent
diameter, centroid (physical units) and bounding box (pixel indices, end exclusive, as in regionprops).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from unetkit.io.atomic import atomic_path

AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def measure_objects(instances: np.ndarray, class_labels: np.ndarray | None = None,
                    spacing: Sequence[float] | None = None, surface: bool = False,
                    class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Measure every instance of `instances` `(H, W)` / `(D, H, W)` (0 = background).

    Args:
        class_labels: class map of the same shape; an object's class is its majority class (1 if None).
        spacing: physical size of a pixel per axis; None -> 1 (pixel units).
        surface: 3D only: also compute the surface area with marching cubes (slower).
        class_names: names indexed by class id, added as `class_name`.
    Returns:
        one dict per object, in increasing id order.
    """
    from skimage.measure import perimeter

    instances = np.asarray(instances)
    ndim = instances.ndim
    if ndim not in (2, 3):
        raise ValueError(f"instances must be 2D or 3D, got shape {instances.shape}")
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not match {ndim}D instances")
    if class_labels is not None and np.shape(class_labels) != instances.shape:
        raise ValueError(f"class_labels shape {np.shape(class_labels)} != instances shape {instances.shape}")
    unit = float(np.prod(spacing))
    axes = AXES[ndim]
    rows: list[dict[str, Any]] = []
    for index, box in enumerate(ndi.find_objects(instances)):
        if box is None:
            continue
        obj_id = index + 1
        obj = instances[box] == obj_id
        n = int(obj.sum())
        size = n * unit
        row: dict[str, Any] = {"id": obj_id, "class": _majority_class(class_labels, box, obj)}
        if class_names is not None:
            row["class_name"] = class_names[row["class"]] if row["class"] < len(class_names) else str(row["class"])
        row["pixels"] = n
        if ndim == 2:
            row["area"] = size
            row["perimeter"] = float(perimeter(obj, 4)) * _length_scale(spacing)
            row["equivalent_diameter"] = math.sqrt(4.0 * size / math.pi)
        else:
            row["volume"] = size
            if surface:
                row["surface_area"] = _surface_area(obj, spacing)
            row["equivalent_diameter"] = (6.0 * size / math.pi) ** (1.0 / 3.0)
        coords = np.nonzero(obj)
        for axis, name in enumerate(axes):
            row[f"centroid_{name}"] = float((coords[axis].mean() + box[axis].start) * spacing[axis])
        for axis, name in enumerate(axes):
            row[f"bbox_{name}0"] = int(box[axis].start)
        for axis, name in enumerate(axes):
            row[f"bbox_{name}1"] = int(box[axis].stop)
        rows.append(row)
    return rows


def _majority_class(class_labels: np.ndarray | None, box: tuple[slice, ...], obj: np.ndarray) -> int:
    if class_labels is None:
        return 1
    values = np.asarray(class_labels)[box][obj].astype(np.int64)
    values = values[values > 0]
    return int(np.bincount(values).argmax()) if values.size else 0


def _length_scale(spacing: np.ndarray) -> float:
    """Pixel-to-physical length factor: exact for square pixels, the geometric mean otherwise."""
    return float(math.sqrt(spacing[0] * spacing[1]))


def _surface_area(obj: np.ndarray, spacing: np.ndarray) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    verts, faces, _, _ = marching_cubes(np.pad(obj, 1).astype(np.float32), 0.5, spacing=tuple(spacing))
    return float(mesh_surface_area(verts, faces))


def count_objects(objects: Iterable[dict[str, Any]], class_names: Sequence[str] | None = None
                  ) -> dict[str, int]:
    """Objects per class, keyed by class name (or `class_<id>`), plus `total`."""
    counts: dict[str, int] = {}
    total = 0
    for row in objects:
        cls = int(row["class"])
        name = class_names[cls] if class_names is not None and cls < len(class_names) else f"class_{cls}"
        counts[name] = counts.get(name, 0) + 1
        total += 1
    return {**dict(sorted(counts.items())), "total": total}


def write_rows_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False,
                   columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV (columns: `columns` or the union of keys in first-seen order), atomically."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(v) for k, v in row.items()})
    return path


def write_objects_csv(objects: Sequence[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False,
                      spatial_dims: int = 2) -> Path:
    """Write `measure_objects` rows; an image without objects still gets the header row."""
    columns = None
    if not objects:
        axes = AXES[spatial_dims]
        size = ["area", "perimeter"] if spatial_dims == 2 else ["volume"]
        columns = (["id", "class", "pixels", *size, "equivalent_diameter"] + [f"centroid_{a}" for a in axes]
                   + [f"bbox_{a}0" for a in axes] + [f"bbox_{a}1" for a in axes])
    return write_rows_csv(objects, path, overwrite=overwrite, columns=columns)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def match_instances(pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Object-level detection scores: one-to-one matching of predicted and true instances.

    Pairs are matched by maximising the summed IoU (Hungarian) among pairs with IoU >= `iou_threshold`
    (for thresholds >= 0.5 each object has at most one such partner, so the matching is unique).
    Returns tp, fp, fn, precision, recall, f1 and mean_matched_iou (nan without matches); with no
    objects on either side precision = recall = f1 = 1.
    """
    from scipy.optimize import linear_sum_assignment

    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"pred shape {pred.shape} != true shape {true.shape}")
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_ids, t_inv = np.unique(true, return_inverse=True)
    inter = np.zeros((len(p_ids), len(t_ids)), dtype=np.int64)
    np.add.at(inter, (p_inv.ravel(), t_inv.ravel()), 1)
    p_fg, t_fg = p_ids != 0, t_ids != 0
    inter = inter[np.ix_(p_fg, t_fg)]
    p_area = np.bincount(p_inv.ravel(), minlength=len(p_ids))[p_fg]
    t_area = np.bincount(t_inv.ravel(), minlength=len(t_ids))[t_fg]
    union = p_area[:, None] + t_area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    n_pred, n_true = int(p_fg.sum()), int(t_fg.sum())
    matched: list[float] = []
    if n_pred and n_true:
        candidate = np.where(iou >= iou_threshold, iou, 0.0)
        rows, cols = linear_sum_assignment(-candidate)
        matched = [float(iou[r, c]) for r, c in zip(rows, cols) if iou[r, c] >= iou_threshold and iou[r, c] > 0]
    tp = len(matched)
    fp, fn = n_pred - tp, n_true - tp
    if n_pred == 0 and n_true == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
            "mean_matched_iou": float(np.mean(matched)) if matched else float("nan")}
