"""What a mask's values mean: binary (0/1 or 0/255), class indices, or instance ids.

`decide_mask_kind` decides for a whole dataset and says why (`MaskKindDecision.kind`, `.reason`);
`infer_mask_kind` returns only the kind. `to_semantic` converts one mask to class indices (and keeps
the instance ids when the mask holds instances).

The decision, in order (the first rule that applies wins; `mask_kind=` / `data.mask_kind` overrides):
1. binary: every non-empty mask holds only {0, 1} or {0, 255}, or most hold {0, 255};
2. num_classes given: > 2 -> classes; 2 -> instances (ids other than 0/1 cannot be two classes);
3. a palette (colour-mapped) PNG -> classes;
4. more than 255 ids in one mask -> instances (no plausible class count);
5. several masks with more than 16 ids in all, most of them found in one mask only -> instances
   (ids unique per image);
6. ids that each form many separate regions (median >= 4) -> classes (e.g. cell types);
7. several masks whose shared ids have unrelated sizes from mask to mask -> instances (classes keep
   their relative sizes: a liver is larger than a pancreas in every scan; cells of a tissue do not);
8. ids that each form one or a few regions and share most of their borders with each other (they
   tile an area, as in an atlas or a parcellation; also a single volume) -> classes;
   several masks otherwise: a small set (<= 16 ids) recurring -> classes; low ids in every mask and
   high ids only in crowded ones (objects numbered anew per mask) -> instances; else classes;
9. one mask (nothing recurs): <= 16 ids -> classes, else separate one-piece objects -> instances.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from unetkit.errors import ConfigError

MASK_KINDS = ("auto", "binary", "classes", "instances")
MAX_AUTO_CLASSES = 16  # a set of at most this many ids is read as classes unless the data says objects
MAX_PLAUSIBLE_CLASSES = 255  # more ids in one mask than this: instance ids
_TILING_BORDER = 0.45  # share of borders between two ids above which ids tile an area
_STRUCTURE_MASKS = 16  # masks whose connected regions are measured (evenly spread over the dataset)


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


@dataclass
class MaskProfile:
    """What one mask holds: its distinct values, their pixel counts and, when measured, how its ids
    form regions.

    pieces: per id, the number of connected regions that hold 90% of its pixels (None: not measured).
    shared_border: of the border pixel pairs between different values, the share between two ids
        (not an id and background): high when ids tile an area, as in an atlas (None: not measured).
    """

    values: np.ndarray
    sizes: np.ndarray | None = None
    pieces: list[int] | None = None
    shared_border: float | None = None

    @property
    def ids(self) -> np.ndarray:
        return self.values[self.values != 0]

    def id_sizes(self) -> dict[int, int]:
        return {} if self.sizes is None else {int(v): int(n) for v, n in zip(self.values, self.sizes) if v != 0}


@dataclass
class MaskKindDecision:
    """The kind chosen for a dataset's masks and a one-line reason (shown by check-data and plan)."""

    kind: str
    reason: str
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, **self.facts}


def mask_profile(labels: np.ndarray, structure: bool = True) -> MaskProfile:
    """The profile of one label mask `(*S)`; `structure` measures connected regions per id
    (only for masks with other values than 0/1/255 and at most MAX_PLAUSIBLE_CLASSES ids)."""
    labels = np.asarray(labels)
    values, sizes = np.unique(labels, return_counts=True)
    profile = MaskProfile(values, sizes)
    ids = profile.ids
    if (not structure or value_kind(values) in ("empty", "binary255") or len(ids) > MAX_PLAUSIBLE_CLASSES
            or labels.dtype.kind not in "iub" or values.min() < 0):
        return profile
    full = ndi.generate_binary_structure(labels.ndim, labels.ndim)
    boxes = ndi.find_objects(labels.astype(np.int64, copy=False))
    pieces = []
    for i in ids:
        parts, n = ndi.label(labels[boxes[int(i) - 1]] == i, structure=full)
        counts = np.sort(np.bincount(parts.ravel())[1:])[::-1]
        pieces.append(int(np.searchsorted(np.cumsum(counts), 0.9 * counts.sum()) + 1) if n else 0)
    profile.pieces = pieces
    between = edges = 0
    for axis in range(labels.ndim):
        view = np.moveaxis(labels, axis, 0)
        x, y = view[:-1], view[1:]
        differ = x != y
        between += int((differ & (x != 0) & (y != 0)).sum())
        edges += int(differ.sum())
    profile.shared_border = between / edges if edges else 0.0
    return profile


def is_palette_mask(path: str | os.PathLike | None) -> bool:
    """True for a palette ("P" mode) PNG/GIF: class indices painted with a colour map."""
    if path is None or Path(path).suffix.lower() not in (".png", ".gif", ".bmp"):
        return False
    try:
        from PIL import Image

        with Image.open(path) as img:
            return img.mode == "P"
    except Exception:  # unreadable files are reported by the readers
        return False


def profile_masks(masks: Sequence[Any], load: Callable[[Any], np.ndarray] | None = None) -> list[MaskProfile]:
    """Profiles of a sequence of masks (or of anything `load` turns into a mask, e.g. file paths, read
    one at a time); regions are measured on up to 16 of them, spread evenly."""
    n = len(masks)
    measured = set(np.linspace(0, n - 1, min(n, _STRUCTURE_MASKS)).round().astype(int).tolist()) if n else set()
    return [mask_profile(load(m) if load is not None else m, structure=i in measured) for i, m in enumerate(masks)]


def decide_mask_kind(profiles: Sequence[MaskProfile | np.ndarray], num_classes: int | None = None,
                     palette: bool = False, override: str = "auto") -> MaskKindDecision:
    """The dataset-level kind with its reason (rules in the module docstring).

    profiles: `MaskProfile`s (from `profile_masks`), or plain arrays of each mask's distinct values
        (then only the value rules apply, not the region rules).
    palette: some mask file is a palette PNG (`is_palette_mask`).
    override: a kind other than "auto" is taken as given.
    """
    if override not in MASK_KINDS:
        raise ConfigError(f"mask_kind must be one of {', '.join(MASK_KINDS)}, got {override!r}")
    if override != "auto":
        return MaskKindDecision(override, f"mask_kind={override} given")
    profiles = [p if isinstance(p, MaskProfile) else MaskProfile(np.unique(np.asarray(p))) for p in profiles]
    kinds = [value_kind(p.values) for p in profiles]
    nonempty = [k for k in kinds if k != "empty"]
    if not nonempty:
        return MaskKindDecision("binary", "every mask is background only")
    if all(k != "other" for k in nonempty):
        return MaskKindDecision("binary", f"all {len(nonempty)} non-empty masks hold only 0/1 or 0/255")
    if kinds.count("binary255") * 2 > len(nonempty):
        return MaskKindDecision("binary", f"{kinds.count('binary255')} of {len(nonempty)} non-empty masks hold "
                                          "only 0/255 (other values read as foreground)")
    if num_classes is not None:
        if num_classes > 2:
            return MaskKindDecision("classes", f"num_classes={num_classes} given")
        return MaskKindDecision("instances", f"num_classes={num_classes} given and masks hold other ids than 0/1")

    # masks holding ids: "other" and {0, 1} ones (a class map with class 1 only, or a single object)
    others = [p for p, k in zip(profiles, kinds) if k in ("other", "binary01")]
    id_sets = [set(p.ids.tolist()) for p in others]
    union = set().union(*id_sets)
    most = max(len(s) for s in id_sets)
    facts: dict[str, Any] = {"masks": len(others), "distinct_ids": len(union), "max_ids_per_mask": most,
                             "ids_contiguous_from_0": union == set(range(1, len(union) + 1))}

    def decide(kind: str, reason: str) -> MaskKindDecision:
        return MaskKindDecision(kind, reason, facts)

    if palette:
        return decide("classes", "palette (colour-mapped) PNG masks hold class indices")
    if most > MAX_PLAUSIBLE_CLASSES:
        return decide("instances", f"up to {most} ids in one mask, more than any plausible class count "
                                   f"({MAX_PLAUSIBLE_CLASSES})")
    several = len(others) >= 2
    if several and len(union) > MAX_AUTO_CLASSES:
        shared = sum(sum(i in s for s in id_sets) >= 2 for i in union) / len(union)
        facts["recurring_ids"] = round(shared, 3)
        if shared < 0.5:
            return decide("instances", f"ids are unique to each mask: only {shared:.0%} of the {len(union)} ids "
                                       "occur in more than one mask")
    measured = [p for p in others if p.pieces is not None and len(p.ids) >= 2]
    border = None
    if measured:
        median_pieces = float(np.median([n for p in measured for n in p.pieces]))
        border = float(np.median([p.shared_border for p in measured if len(p.ids) >= 3] or [0.0]))
        facts.update(median_regions_per_id=median_pieces, shared_border=round(border, 3))
        if median_pieces >= 4:
            return decide("classes", f"each id forms many separate regions (median {median_pieces:g} per mask): "
                                     "class labels, not objects")
    if several:  # before the tiling rule: cells of a tissue tile an area too, but their sizes are random
        consistency = _size_consistency(others[:_STRUCTURE_MASKS])
        facts["id_size_consistency"] = None if consistency is None else round(consistency, 3)
        if consistency is not None and consistency < 0.5:
            return decide("instances", f"an id's size in one mask says nothing of its size in another (rank "
                                       f"correlation {consistency:.2f}): object ids, not classes")
    if border is not None and border >= _TILING_BORDER:
        return decide("classes", f"each id forms one or a few regions and neighbouring ids share "
                                 f"{border:.0%} of the borders (they tile the area): a region/atlas label map")
    if several:
        if len(union) <= MAX_AUTO_CLASSES:
            return decide("classes", f"the same small set of {len(union)} ids recurs across {len(others)} masks")
        ids = np.array(sorted(union))
        presence = np.array([sum(i in s for s in id_sets) for i in ids])
        rho = _rank_correlation(ids, presence)
        facts["id_presence_rank_correlation"] = None if rho is None else round(rho, 3)
        if rho is not None and rho <= -0.5:
            return decide("instances", f"low ids occur in every mask, high ids only in masks with many objects "
                                       f"(rank correlation {rho:.2f}): each mask numbers its objects anew")
        return decide("classes", f"the same {len(union)} ids recur across {len(others)} masks, whatever their value")
    if most <= MAX_AUTO_CLASSES:
        return decide("classes", f"one mask with {most} ids (at most {MAX_AUTO_CLASSES}): read as classes")
    return decide("instances", f"one mask with {most} ids, each one separate object, not regions tiling an area")


def _size_consistency(profiles: Sequence[MaskProfile]) -> float | None:
    """Median over neighbouring pairs of masks of the rank correlation of their shared ids' sizes
    (classes keep their relative sizes: a liver is larger than a pancreas in every scan; object ids
    do not). None without a pair sharing at least 6 ids."""
    values = []
    for a, b in zip(profiles, profiles[1:]):
        sa, sb = a.id_sizes(), b.id_sizes()
        shared = sorted(set(sa) & set(sb))
        if len(shared) >= 6:
            rho = _rank_correlation(np.array([sa[i] for i in shared]), np.array([sb[i] for i in shared]))
            values.append(0.0 if rho is None else rho)
    return float(np.median(values)) if values else None


def _rank_correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (None when either is constant)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)  # ties share their mean rank
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def infer_mask_kind(value_sets: Sequence[MaskProfile | np.ndarray], num_classes: int | None = None) -> str:
    """The kind only (see `decide_mask_kind`)."""
    return decide_mask_kind(value_sets, num_classes).kind


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
    """The kind of a single mask (see `decide_mask_kind`)."""
    return decide_mask_kind(profile_masks([labels]), num_classes).kind
