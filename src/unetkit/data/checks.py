"""Check a dataset folder before training and gather the statistics training uses.

    report = check_dataset("data/nuclei")
    print(report.format_table()); print(report.format_stats())
    report.raise_if_problems()          # DataError with the same table, as training does

Problems (one row per file): unreadable or truncated file, image without mask, mask without image,
size mismatch (mask vs image, or between a case's modalities), NIfTI label geometry (orientation,
spacing, origin) that differs from its image's, unexpected label values, mixed channel counts, and,
given the model (`in_channels`, `min_size`), images the model cannot take. Warnings: empty masks
(background only: normal negative examples; a problem with `strict=True`). Statistics: sizes, channels, dtypes, spacing, per-channel intensity
(min, max, mean, std, percentiles), class frequencies and suggested class weights.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unetkit.data.folder import FolderScan, scan_folder
from unetkit.data.io import read_input, read_labels
from unetkit.data.masks import decide_mask_kind, is_palette_mask, profile_masks, to_semantic, value_kind
from unetkit.data.sampling import class_weights_from_counts
from unetkit.errors import DataError

PERCENTILES = (0.5, 1.0, 99.0, 99.5, 99.8)
_SAMPLE_PER_IMAGE = 20000  # pixels per image and channel kept for dataset percentiles
_MAX_CLASS_LINES = 32  # format_stats lists at most this many classes
# NIfTI label vs image geometry: direction cosines, relative spacing, origin (in voxels of the image)
AFFINE_TOLERANCE = {"direction": 1e-3, "spacing": 1e-3, "origin_voxels": 0.01}


@dataclass
class CheckReport:
    """Problems found (file, problem) and statistics of a dataset folder."""

    root: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def _name(self, file: str) -> str:
        try:
            return str(Path(file).relative_to(self.root))
        except ValueError:
            return str(file)

    def format_table(self, warnings: bool = False) -> str:
        """The problems (or `warnings`) as an aligned two-column table (empty string when none)."""
        items = self.warnings if warnings else self.problems
        if not items:
            return ""
        rows = [(self._name(f), p) for f, p in items]
        width = max(len("file"), *(len(f) for f, _ in rows))
        lines = [f"{'file':<{width}}  problem", f"{'-' * width}  {'-' * 7}"]
        lines += [f"{f:<{width}}  {p}" for f, p in rows]
        return "\n".join(lines)

    def format_warnings(self) -> str:
        """One line per kind of warning (e.g. how many empty masks), or ''."""
        kinds = Counter(p for _, p in self.warnings)
        return "\n".join(f"warning: {n} file(s): {p}" for p, n in kinds.items())

    def format_stats(self) -> str:
        """Statistics as readable lines."""
        s = self.stats
        if not s.get("cases"):
            return "no readable cases"
        inten = s["intensity"]
        lines = [
            f"cases: {s['cases']} ({s['spatial_dims']}D), channels: {s['channels']}, dtypes: {', '.join(s['dtypes'])}",
            f"sizes: {_shape_counts(s['sizes'])}  (min {tuple(s['size_min'])}, max {tuple(s['size_max'])})",
        ]
        if s.get("spacing_median"):
            lines.append(f"spacing (median, D H W): {tuple(round(v, 4) for v in s['spacing_median'])}")
        for c in range(len(inten["mean"])):
            pct = ", ".join(f"p{q:g}={inten['percentiles'][str(q)][c]:.6g}" for q in PERCENTILES)
            lines.append(f"intensity ch{c}: min={inten['min'][c]:.6g} max={inten['max'][c]:.6g} "
                         f"mean={inten['mean'][c]:.6g} std={inten['std'][c]:.6g} {pct}")
        per_image = s.get("instances_per_image")
        lines.append(f"masks: {s['mask_kind']}, {s['num_classes']} classes"
                     + (f", {per_image:.1f} instances per image" if per_image else ""))
        reason = s.get("mask_kind_reason")
        if reason:
            hint = "" if reason.startswith("mask_kind=") else " (override: --mask-kind / data.mask_kind)"
            lines.append(f"  mask kind {s['mask_kind']}: {reason}{hint}")
        for k, (count, freq, present) in enumerate(zip(s["class_pixels"], s["class_frequency"],
                                                        s["class_images"])):
            if k == _MAX_CLASS_LINES:
                lines.append(f"  ... {len(s['class_pixels']) - k} more classes")
                break
            lines.append(f"  class {k}: {freq * 100:6.2f}% of pixels ({count} px) in {present} image(s), "
                         f"weight {s['class_weights'][k]:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "ok": self.ok,
                "problems": [{"file": self._name(f), "problem": p} for f, p in self.problems],
                "warnings": [{"file": self._name(f), "warning": p} for f, p in self.warnings],
                "stats": self.stats}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def message(self) -> str:
        n = len(self.problems)
        return f"{self.root}: {n} problem{'s' if n != 1 else ''} found by check-data:\n{self.format_table()}"

    def raise_if_problems(self) -> None:
        """Raise DataError listing every problem (the message training shows)."""
        if self.problems:
            raise DataError(self.message())


def check_dataset(root: str | os.PathLike, masks_dir: str | os.PathLike | None = None,
                  mask_suffix: str | None = None, channels: list[str] | None = None,
                  num_classes: int | None = None, mask_kind: str = "auto", spatial_dims: int | None = None,
                  allow_empty: bool = False, scan: FolderScan | None = None, strict: bool = False,
                  in_channels: int | None = None, min_size: int | Sequence[int] | None = None) -> CheckReport:
    """Read every file under `root` once; report problems and statistics (see the module docstring).

    Empty masks are warnings (`strict`: problems; `allow_empty`: not reported). `in_channels` /
    `min_size` (the model's input channels / smallest side) make images it cannot take problems.
    """
    scan = scan or scan_folder(root, masks_dir, mask_suffix, channels)
    report = CheckReport(Path(root))
    add = report.problems.append
    if not scan.cases:
        add((str(root), "no images found"))
    for mask in scan.orphan_masks:
        add((str(mask), "mask without image"))

    shapes: dict[str, tuple[int, ...]] = {}
    channel_count: dict[str, int] = {}
    first_file: dict[str, Path] = {}
    acc = _IntensityAccumulator()
    dtypes: set[str] = set()
    spacings: list[tuple[float, ...]] = []
    affines: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for case in scan.cases:
        parts, bad = [], False
        for path in case.images:
            try:
                array, meta = read_input(path, spatial_dims)
            except DataError as err:
                add((str(path), _strip_path(err, path)))
                bad = True
                continue
            if parts and array.shape[1:] != parts[0].shape[1:]:
                add((str(path), f"size {_fmt(array.shape[1:])} differs from {case.images[0].name} "
                                f"{_fmt(parts[0].shape[1:])}"))
                bad = True
                continue
            parts.append(array)
            dtypes.add(str(array.dtype))
            if meta is not None:
                spacings.append(meta.spacing)
                affines.setdefault(case.name, (meta.affine, meta.spacing))
        if case.mask is None:
            add((str(case.images[0]), "image without mask"))
        if bad or not parts:
            continue
        image = np.concatenate(parts) if len(parts) > 1 else parts[0]
        shapes[case.name] = image.shape[1:]
        channel_count[case.name] = image.shape[0]
        first_file[case.name] = case.images[0]
        acc.add(image, rng)
        _check_fits_model(image, case.images[0], in_channels, min_size, add)

    _check_channels(channel_count, first_file, add)
    labels_by_case = _read_masks(scan, shapes, spatial_dims, add)
    _check_label_geometry(scan, affines, add)
    empty = report.problems.append if strict else report.warnings.append
    report.stats = _statistics(scan, shapes, channel_count, dtypes, spacings, acc, labels_by_case,
                               num_classes, mask_kind, allow_empty, add, empty)
    return report


def _check_fits_model(image: np.ndarray, path: Path, in_channels: int | None,
                      min_size: int | Sequence[int] | None, add: Any) -> None:
    channels = image.shape[0]
    if in_channels is not None and channels != in_channels:
        what = " (RGB)" if channels == 3 else " (RGBA)" if channels == 4 else ""
        add((str(path), f"has {channels} channel(s){what} but the model takes in_channels={in_channels}; "
                        f"set --in-channels {channels} (model.in_channels: {channels} in the config)"
                        + (" or save the images as greyscale" if in_channels == 1 else "")))
    if min_size is None:
        return
    need = tuple(min_size) if isinstance(min_size, (tuple, list)) else (int(min_size),) * (image.ndim - 1)
    if any(n < m for n, m in zip(image.shape[1:], need)):
        per = f"{need[0]} per side" if len(set(need)) == 1 else f"{_fmt(need)} per axis"
        add((str(path), f"size {_fmt(image.shape[1:])} is smaller than the model's smallest input "
                        f"({per}: its total stride); use a shallower model or larger images"))


def _check_label_geometry(scan: FolderScan, affines: dict[str, Any], add: Any) -> None:
    """NIfTI labels must sit where their image sits: same orientation, spacing and origin."""
    from unetkit.data.io import NIFTI_SUFFIXES, suffix_of

    tol = AFFINE_TOLERANCE
    for case in scan.cases:
        if case.mask is None or case.name not in affines or suffix_of(case.mask) not in NIFTI_SUFFIXES:
            continue
        try:
            import nibabel as nib

            label_affine = np.asarray(nib.load(str(case.mask)).affine, dtype=np.float64)
        except Exception:  # unreadable masks are reported by _read_masks
            continue
        image_affine = np.asarray(affines[case.name][0], dtype=np.float64)
        img_zoom = np.linalg.norm(image_affine[:3, :3], axis=0)
        lab_zoom = np.linalg.norm(label_affine[:3, :3], axis=0)
        issues = []
        if np.any(np.abs(lab_zoom - img_zoom) > tol["spacing"] * np.maximum(img_zoom, 1e-12)):
            issues.append(f"spacing {_zooms(lab_zoom)} vs the image's {_zooms(img_zoom)}")
        cosines_img = image_affine[:3, :3] / np.maximum(img_zoom, 1e-12)
        cosines_lab = label_affine[:3, :3] / np.maximum(lab_zoom, 1e-12)
        if np.any(np.abs(cosines_img - cosines_lab) > tol["direction"]):
            issues.append(f"orientation {_axcodes(label_affine)} vs the image's {_axcodes(image_affine)}")
        shift = float(np.linalg.norm(label_affine[:3, 3] - image_affine[:3, 3]))
        if shift > tol["origin_voxels"] * float(img_zoom.min()):
            issues.append(f"origin shifted by {shift:.4g} mm")
        if issues:
            add((str(case.mask), "label geometry differs from its image: " + "; ".join(issues)
                 + " (resample the label onto the image grid)"))


def _zooms(z: np.ndarray) -> str:
    return "x".join(f"{v:.4g}" for v in z)


def _axcodes(affine: np.ndarray) -> str:
    try:
        import nibabel as nib

        return "".join(str(c) for c in nib.aff2axcodes(affine))
    except Exception:
        return "?"


def _read_masks(scan: FolderScan, shapes: dict[str, tuple[int, ...]], spatial_dims: int | None,
                add: Any) -> dict[str, np.ndarray]:
    out = {}
    for case in scan.cases:
        if case.mask is None:
            continue
        try:
            labels = read_labels(case.mask, spatial_dims)
        except DataError as err:
            add((str(case.mask), _strip_path(err, case.mask)))
            continue
        if case.name in shapes and labels.shape != shapes[case.name]:
            add((str(case.mask), f"size {_fmt(labels.shape)} differs from image {_fmt(shapes[case.name])}"))
            continue
        out[case.name] = labels
    return out


def _check_channels(channel_count: dict[str, int], first_file: dict[str, Path], add: Any) -> None:
    if len(set(channel_count.values())) <= 1:
        return
    common, _ = Counter(channel_count.values()).most_common(1)[0]
    for name, count in channel_count.items():
        if count != common:
            add((str(first_file[name]), f"mixed channel counts: {count} channel(s), most images have {common}"))


def _statistics(scan: FolderScan, shapes: dict, channel_count: dict, dtypes: set, spacings: list,
                acc: "_IntensityAccumulator", labels_by_case: dict[str, np.ndarray], num_classes: int | None,
                mask_kind: str, allow_empty: bool, add: Any, empty: Any = None) -> dict[str, Any]:
    profiles = profile_masks(list(labels_by_case.values()))
    uniques = {name: profile.values for name, profile in zip(labels_by_case, profiles)}
    palette = mask_kind == "auto" and any(is_palette_mask(c.mask) for c in scan.cases if c.name in uniques)
    decision = decide_mask_kind(profiles, num_classes, palette=palette, override=mask_kind)
    kind = decision.kind
    pixel_counts: Counter = Counter()
    image_counts: Counter = Counter()
    instances = []
    for name, labels in labels_by_case.items():
        values = uniques[name]
        mask_file = str(next(c.mask for c in scan.cases if c.name == name))
        unexpected = _unexpected(values, kind, num_classes)
        if unexpected:
            add((mask_file, f"unexpected label values {unexpected} for {kind} masks"
                            + (f" with {num_classes} classes" if num_classes and kind == "classes" else "")))
            continue
        if value_kind(values) == "empty" and not allow_empty:
            (empty or add)((mask_file, "empty mask (background only)"))
        semantic, inst = to_semantic(labels, kind)
        counts = np.bincount(semantic.ravel())
        for k, n in enumerate(counts):
            pixel_counts[k] += int(n)
            image_counts[k] += int(n > 0)
        if inst is not None:
            instances.append(len(values) - (1 if 0 in values else 0))
    classes = num_classes or (max(pixel_counts) + 1 if pixel_counts else 2)
    classes = max(classes, 2)
    pixels = [pixel_counts.get(k, 0) for k in range(classes)]
    total = max(1, sum(pixels))
    sizes = list(shapes.values())
    return {
        "cases": len(shapes),
        "spatial_dims": len(sizes[0]) if sizes else 2,
        "channels": sorted(set(channel_count.values())),
        "dtypes": sorted(dtypes),
        "sizes": {_fmt(s): n for s, n in Counter(sizes).items()},
        "size_min": [int(v) for v in np.min(sizes, axis=0)] if sizes else [],
        "size_max": [int(v) for v in np.max(sizes, axis=0)] if sizes else [],
        "size_median": [float(v) for v in np.median(sizes, axis=0)] if sizes else [],
        "spacing_median": [float(v) for v in np.median(spacings, axis=0)] if spacings else None,
        "intensity": acc.result(),
        "mask_kind": kind,
        "mask_kind_reason": decision.reason,
        "mask_kind_facts": decision.facts,
        "num_classes": classes,
        "class_pixels": pixels,
        "class_frequency": [p / total for p in pixels],
        "class_images": [image_counts.get(k, 0) for k in range(classes)],
        "class_weights": class_weights_from_counts(pixels),
        "instances_per_image": float(np.mean(instances)) if instances else None,
    }


def _unexpected(values: np.ndarray, kind: str, num_classes: int | None) -> list[int]:
    values = [int(v) for v in values]
    if kind == "binary":
        vk = value_kind(values)
        return [] if vk != "other" else [v for v in values if v not in (0, 1, 255)] or values
    if kind == "classes":
        limit = num_classes if num_classes else None
        return [v for v in values if v < 0 or (limit is not None and v >= limit)]
    return [v for v in values if v < 0]


class _IntensityAccumulator:
    """Exact per-channel min/max/mean/std and percentiles from a seeded subsample of each image."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.samples: list[np.ndarray] = []

    def add(self, image: np.ndarray, rng: np.random.Generator) -> None:
        flat = image.reshape(image.shape[0], -1)
        if self.sum is not None and flat.shape[0] != self.sum.shape[0]:
            return  # mixed channel counts are reported as a problem; keep the majority's statistics simple
        f64 = flat.astype(np.float64)
        s, ss = f64.sum(axis=1), np.square(f64).sum(axis=1)
        mn, mx = flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)
        if self.sum is None:
            self.sum, self.sumsq, self.min, self.max = s, ss, mn, mx
        else:
            self.sum, self.sumsq = self.sum + s, self.sumsq + ss
            self.min, self.max = np.minimum(self.min, mn), np.maximum(self.max, mx)
        self.n += flat.shape[1]
        take = min(flat.shape[1], _SAMPLE_PER_IMAGE)
        index = rng.choice(flat.shape[1], size=take, replace=False) if take < flat.shape[1] else slice(None)
        self.samples.append(flat[:, index].astype(np.float64))

    def result(self) -> dict[str, Any]:
        if self.sum is None:
            return {"min": [], "max": [], "mean": [], "std": [], "percentiles": {str(q): [] for q in PERCENTILES}}
        mean = self.sum / self.n
        std = np.sqrt(np.maximum(self.sumsq / self.n - mean**2, 0))
        pooled = np.concatenate(self.samples, axis=1)
        pct = np.percentile(pooled, PERCENTILES, axis=1)
        return {"min": self.min.tolist(), "max": self.max.tolist(), "mean": mean.tolist(), "std": std.tolist(),
                "percentiles": {str(q): pct[i].tolist() for i, q in enumerate(PERCENTILES)}}


def _strip_path(err: Exception, path: Path) -> str:
    """The problem part of a DataError message (the table names the file already)."""
    text = str(err)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _shape_counts(sizes: dict[str, int]) -> str:
    items = sorted(sizes.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{shape} x{n}" for shape, n in items[:5])
    return text + (f", ... ({len(items)} distinct)" if len(items) > 5 else "")
