"""Post-processing of predicted masks: connected components, small-object removal, hole filling,
keeping the largest component, and instances from semantic masks (splitting touching objects with
a distance-transform watershed).

A post-processing *plan* is a JSON-able list of steps, applied in order by `apply_postprocessing`:
    {"op": "keep_largest", "classes": [c]}            keep only the largest component of each class c
    {"op": "keep_largest_foreground"}                 keep only the largest component of all foreground
    {"op": "remove_small", "classes": [c], "min_size": n}   drop components of class c below n pixels
    {"op": "fill_holes", "classes": [c]}              fill holes enclosed by class c
`select_postprocessing` chooses a plan on cross-validation predictions by nnU-Net's rule (a step is
kept only when the mean Dice improves and no class gets worse); model files store it in their
metadata (`postprocessing`) and `Predictor` applies it.

Masks are integer class labels `(H, W)` / `(D, H, W)` (0 = background); instances are integer
instance labels of the same shape (0 = background, 1..n objects). Connectivity is "full" by default
(8-neighbours in 2D, 26 in 3D), as in scikit-image's `label`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from unetkit.errors import ConfigError


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    return ndi.generate_binary_structure(ndim, connectivity or ndim)


def connected_components(mask: np.ndarray, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Label the connected components of a boolean (or nonzero) mask: (instances int32, count)."""
    labels, count = ndi.label(np.asarray(mask) != 0, structure=_structure(np.ndim(mask), connectivity))
    return labels.astype(np.int32, copy=False), int(count)


def _classes(labels: np.ndarray, classes: Sequence[int] | None) -> list[int]:
    present = [int(c) for c in np.unique(labels) if c != 0]
    return present if classes is None else [c for c in present if c in set(int(k) for k in classes)]


def remove_small_objects(labels: np.ndarray, min_size: int, connectivity: int | None = None,
                         classes: Sequence[int] | None = None) -> np.ndarray:
    """Set connected components smaller than `min_size` pixels/voxels of each class to background.

    `labels`: class labels (binary masks included); `classes`: only these (default: all).
    Returns a new array of the same dtype.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    if min_size <= 1:
        return out
    for cls in _classes(labels, classes):
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


def fill_holes(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Fill background holes enclosed by one class with that class (per class, N-D; `classes`: only these)."""
    labels = np.asarray(labels)
    out = labels.copy()
    for cls in _classes(labels, classes):
        filled = ndi.binary_fill_holes(labels == cls)
        out[filled & (out == 0)] = cls
    return out


def keep_largest_component(labels: np.ndarray, classes: Sequence[int] | None = None, merged: bool = False,
                           connectivity: int | None = None) -> np.ndarray:
    """Keep only the largest connected component of each class (`classes`: only these; default all);
    with `merged`, of the foreground as a whole (all classes together). The rest becomes background."""
    labels = np.asarray(labels)
    out = labels.copy()
    groups = [labels != 0] if merged else [labels == c for c in _classes(labels, classes)]
    for region in groups:
        comp, count = connected_components(region, connectivity)
        if count > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp > 0) & (comp != int(sizes.argmax()))] = 0
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


# ---- post-processing plans (chosen on cross-validation predictions) ---------------------------
PLAN_OPS = ("keep_largest", "keep_largest_foreground", "remove_small", "fill_holes")


def check_postprocessing(steps: Any, source: str = "post-processing") -> list[dict[str, Any]]:
    """Validate a plan (see the module docstring); returns it as a list of dicts."""
    if not isinstance(steps, (list, tuple)):
        raise ConfigError(f"{source}: a post-processing plan is a list of steps, got {type(steps).__name__}")
    for step in steps:
        op = step.get("op") if isinstance(step, dict) else None
        if op not in PLAN_OPS:
            raise ConfigError(f"{source}: unknown post-processing step {step!r}; known ops: {', '.join(PLAN_OPS)}")
        if op == "remove_small" and not isinstance(step.get("min_size"), int):
            raise ConfigError(f"{source}: step {step!r} needs an integer min_size")
    return [dict(s) for s in steps]


def apply_postprocessing(labels: np.ndarray, steps: Sequence[dict[str, Any]]) -> np.ndarray:
    """Apply a plan to class labels `(*S)`; returns a new array (the input is left as is)."""
    out = np.asarray(labels)
    for step in steps:
        op, classes = step["op"], step.get("classes")
        if op == "keep_largest":
            out = keep_largest_component(out, classes)
        elif op == "keep_largest_foreground":
            out = keep_largest_component(out, merged=True)
        elif op == "remove_small":
            out = remove_small_objects(out, int(step["min_size"]), classes=classes)
        elif op == "fill_holes":
            out = fill_holes(out, classes)
        else:
            raise ConfigError(f"unknown post-processing step {step!r}")
    return out if out is not labels else out.copy()


def describe_postprocessing(steps: Sequence[dict[str, Any]]) -> str:
    """One line for people: 'keep the largest component of class 1; fill holes of class 2'."""
    if not steps:
        return "none"
    words = []
    for step in steps:
        of = ", ".join(str(c) for c in step.get("classes") or [])
        words.append({"keep_largest": f"keep the largest component of class {of}",
                      "keep_largest_foreground": "keep the largest foreground component",
                      "remove_small": f"remove objects of class {of} under {step.get('min_size')} px",
                      "fill_holes": f"fill holes of class {of}"}[step["op"]])
    return "; ".join(words)


def object_sizes(labels: np.ndarray, cls: int, connectivity: int | None = None) -> np.ndarray:
    """Sizes (pixels/voxels) of the connected components of class `cls`."""
    comp, count = connected_components(np.asarray(labels) == cls, connectivity)
    return np.bincount(comp.ravel(), minlength=count + 1)[1:]


Pair = tuple[Any, Any]  # (prediction, reference): (*S) label arrays, or zero-argument callables returning them


def select_postprocessing(pairs: Sequence[Pair], num_classes: int, min_sizes: dict[int, int] | None = None,
                          tolerance: float = 1e-6) -> dict[str, Any]:
    """Choose a post-processing plan on (prediction, reference) pairs by nnU-Net's rule.

    Candidates, tried in this order, each on top of the steps already accepted: the largest
    foreground component (several classes only); then per class the largest component; removing
    objects smaller than `min_sizes[c]` (default: half the 5th percentile of the reference objects'
    sizes of class c); filling holes. A step is accepted only when the mean foreground Dice rises
    (by more than `tolerance`) and no class's mean Dice falls. Dice is per case and class
    (`unetkit.metrics`: a class absent from both masks of a case is left out), averaged over cases.

    `num_classes`: model outputs (1 = binary). Returns {"steps", "baseline", "final", "trials"}, where
    baseline/final/each trial hold {"mean_dice", "per_class": {class: Dice}}.
    """
    classes = list(range(1, max(2, num_classes)))
    if min_sizes is None:
        min_sizes = _reference_min_sizes(pairs, classes)
    candidates: list[dict[str, Any]] = []
    if len(classes) > 1:
        candidates.append({"op": "keep_largest_foreground"})
    candidates += [{"op": "keep_largest", "classes": [c]} for c in classes]
    candidates += [{"op": "remove_small", "classes": [c], "min_size": int(min_sizes[c])}
                   for c in classes if min_sizes.get(c, 0) > 1]
    candidates += [{"op": "fill_holes", "classes": [c]} for c in classes]

    baseline = _score(pairs, [], num_classes)
    current, accepted, trials = baseline, [], []
    for step in candidates:
        trial = _score(pairs, accepted + [step], num_classes)
        worse = [c for c in trial["per_class"]  # NaN: the class is now absent everywhere (only false positives)
                 if trial["per_class"][c] < current["per_class"][c] - tolerance]
        better = trial["mean_dice"] > current["mean_dice"] + tolerance
        ok = better and not worse
        if ok:
            reason = "accepted"
        elif worse:
            reason = f"class {worse[0]} gets worse" if len(worse) == 1 else f"classes {', '.join(worse)} get worse"
        else:
            reason = "mean Dice does not improve"
        trials.append({"step": step, **trial, "accepted": ok, "reason": reason})
        if ok:
            accepted.append(step)
            current = trial
    return {"steps": accepted, "baseline": baseline, "final": current, "trials": trials,
            "rule": "a step is kept only when the mean Dice improves and no class gets worse"}


def _load(item: Any) -> np.ndarray:
    return np.asarray(item() if callable(item) else item)


def _reference_min_sizes(pairs: Sequence[Pair], classes: list[int]) -> dict[int, int]:
    sizes: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    for _, ref in pairs:
        ref = _load(ref)
        for c in classes:
            sizes[c].append(object_sizes(ref, c))
    out = {}
    for c, parts in sizes.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        out[c] = int(0.5 * np.percentile(values, 5)) if len(values) else 0
    return out


def _score(pairs: Sequence[Pair], steps: list[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    import torch

    from unetkit.metrics import MetricAccumulator

    acc = MetricAccumulator(num_classes=max(2, num_classes), metrics=("dice",), include_background=False)
    for pred, ref in pairs:
        pred = apply_postprocessing(_load(pred), steps) if steps else _load(pred)
        acc.update(torch.from_numpy(pred.astype(np.int64))[None, None],
                   torch.from_numpy(_load(ref).astype(np.int64))[None, None])
    dice = acc.compute()["dice"]
    per_class = {name: float(v["mean"]) for name, v in dice["per_class"].items()}
    scored = [v for v in per_class.values() if np.isfinite(v)]  # classes present somewhere (unetkit.metrics)
    return {"mean_dice": float(np.mean(scored)) if scored else float("nan"), "per_class": per_class}
