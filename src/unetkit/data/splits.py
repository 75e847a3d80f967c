"""Train/validation splits and k-fold folds over case names, saved to splits.json (no file copies).

splits.json holds `{"version": 1, "seed": s, "kind": "split"|"kfold", "folds": [{"train": [...],
"val": [...]}, ...]}`: a single split is a one-fold list. A run records the file and its fold index.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unetkit.errors import ConfigError, DataError
from unetkit.io.atomic import atomic_path


def make_split(names: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """A seeded split: `{"train": [...], "val": [...]}`, sorted, disjoint, covering `names`.

    At least one case goes to each side when there are two or more cases.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = _unique(names)
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = int(round(len(names) * val_fraction))
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    val = {names[i] for i in order[:n_val]}
    return {"train": [n for n in names if n not in val], "val": [n for n in names if n in val]}


def make_kfold(names: Sequence[str], k: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    """k seeded folds: each case is in exactly one fold's "val"; fold sizes differ by at most one."""
    names = _unique(names)
    if not 2 <= k <= len(names):
        raise ConfigError(f"k must be between 2 and the number of cases ({len(names)}), got {k}")
    order = np.random.default_rng(seed).permutation(len(names))
    folds = []
    for part in np.array_split(order, k):
        val = {names[i] for i in part}
        folds.append({"train": [n for n in names if n not in val], "val": [n for n in names if n in val]})
    return folds


def save_splits(path: str | os.PathLike, folds: dict | list[dict], seed: int | None = None,
                overwrite: bool = False, **info: Any) -> Path:
    """Write a split (dict) or folds (list) to `path` as splits.json, atomically."""
    kind = "split" if isinstance(folds, dict) else "kfold"
    folds = [folds] if isinstance(folds, dict) else list(folds)
    payload = {"version": 1, "kind": kind, "seed": seed, "folds": folds, **info}
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_splits(path: str | os.PathLike) -> dict[str, Any]:
    """Read splits.json; raises DataError naming the file when it is malformed."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        folds = payload["folds"]
        if not all(set(f) >= {"train", "val"} for f in folds):
            raise KeyError("train/val")
    except FileNotFoundError:
        raise DataError(f"{path}: splits file not found") from None
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a unetkit splits file ({err})") from None
    return payload


def get_fold(path_or_payload: str | os.PathLike | dict, fold: int = 0) -> dict[str, list[str]]:
    """The `{"train", "val"}` names of fold `fold` from a splits file or its loaded payload."""
    payload = path_or_payload if isinstance(path_or_payload, dict) else load_splits(path_or_payload)
    folds = payload["folds"]
    if not 0 <= fold < len(folds):
        raise ConfigError(f"fold {fold} out of range: the splits file has {len(folds)} fold(s)")
    return folds[fold]


def _unique(names: Sequence[str]) -> list[str]:
    out = sorted(set(names))
    if len(out) != len(names):
        raise DataError("case names must be unique")
    return out


MAX_REGION_FRACTION = 0.5  # a held-out slab may grow to half an axis to reach the foreground


def region_split(shape: Sequence[int], val_fraction: float = 0.2, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Split ONE image or volume by region: a slab at one end of one axis is held out for
    validation, the rest is for training.

    Without `mask`: `val_fraction` of the far end of the longest axis (the last axis on ties); a 2D
    image of width W is split at x = round(W * (1 - val_fraction)), as the demo does. With `mask`
    (the labels, `*S`), validation must measure something and training must see objects: among
    both ends of every axis, the slab of `val_fraction` whose share of the foreground is closest to
    `val_fraction` while leaving foreground on both sides. When no slab of that size holds at least
    half of `val_fraction` of the foreground (one compact object: a tumour in the middle of a CT
    volume touches no end slab, or only a sliver of its edge), the slab grows, up to half the axis,
    until it holds `val_fraction` of the foreground (or as much as it can while training keeps
    some); the smallest such slab wins. Validating on a few boundary columns of the only object
    measures noise. The default slab only when even that fails.
    Returns `{"axis", "side": "far" | "near", "train": box, "val": box}`, boxes `[[start, stop], ...]`
    per spatial axis (half-open).
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"a single image or volume is split by region: val_fraction must be in (0, 1), "
                          f"got {val_fraction}")
    shape = [int(s) for s in shape]
    longest = max(range(len(shape)), key=lambda a: (shape[a], a))
    choice = (longest, "far", shape[longest] - int(round(shape[longest] * (1 - val_fraction))))
    if mask is not None and np.any(mask):
        fg = np.asarray(mask) > 0
        total = float(fg.sum())
        best = grown = None
        for axis in sorted(range(len(shape)), key=lambda a: (-shape[a], -a)):
            profile = fg.sum(axis=tuple(i for i in range(fg.ndim) if i != axis)).astype(np.float64)
            n = shape[axis] - int(round(shape[axis] * (1 - val_fraction)))
            if not 0 < n < shape[axis]:
                continue
            for side in ("far", "near"):
                # share of the foreground in the end slab of each length 1..len along this axis
                shares = np.cumsum(profile[::-1] if side == "far" else profile) / total
                share = float(shares[n - 1])
                if 0 < share < 1 and (best is None or abs(share - val_fraction) < best[0] - 1e-9):
                    best = (abs(share - val_fraction), axis, side, n, share)
                # the smallest longer slab (up to half the axis) holding val_fraction of the foreground
                limit = max(n, int(shape[axis] * MAX_REGION_FRACTION))
                ok = [k + 1 for k in range(n - 1, limit) if shares[k] < 1 and shares[k] >= val_fraction]
                some = [k + 1 for k in range(n - 1, limit) if 0 < shares[k] < 1]
                length = ok[0] if ok else (some[-1] if some else None)
                if length is not None:
                    key = (not ok, length / shape[axis])  # reaching val_fraction first, then the thinnest
                    if grown is None or key < grown[0]:
                        grown = (key, axis, side, length)
        sliver = best is not None and best[4] < val_fraction / 2
        if best is not None and not (sliver and grown is not None and not grown[0][0]):
            choice = best[1:4]
        elif grown is not None:
            choice = grown[1:]
    axis, side, n_val = choice
    if not 0 < n_val < shape[axis]:
        raise DataError(f"an image of size {'x'.join(map(str, shape))} is too small to hold out "
                        f"{val_fraction:.0%} of it for validation")
    train = [[0, s] for s in shape]
    val = [[0, s] for s in shape]
    if side == "far":
        train[axis], val[axis] = [0, shape[axis] - n_val], [shape[axis] - n_val, shape[axis]]
    else:
        train[axis], val[axis] = [n_val, shape[axis]], [0, n_val]
    return {"axis": axis, "side": side, "train": train, "val": val}
