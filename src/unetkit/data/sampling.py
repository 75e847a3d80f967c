"""Class imbalance: loss weights from class frequencies, and a sampler that favours rare classes.

    weights = class_weights_from_counts(report.stats["class_pixels"])      # for a weighted loss
    sampler = rare_class_sampler(dataset.class_presence(), seed=0)         # for make_loader(sampler=...)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def class_weights_from_counts(counts: Sequence[int], method: str = "balanced", max_weight: float = 50.0
                              ) -> list[float]:
    """Per-class loss weights from pixel counts.

    balanced: n_total / (K * n_k) (1.0 for every class when balanced); sqrt: its square root
    (gentler); median: median(f) / f_k (median-frequency balancing). Absent classes get the largest
    weight of the present ones; all weights are clipped to `max_weight`.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return [1.0] * len(counts)
    freq = counts / counts.sum()
    w = np.zeros_like(freq)
    if method in ("balanced", "sqrt"):
        w[present] = 1.0 / (len(counts) * freq[present])
        if method == "sqrt":
            w = np.sqrt(w)
    elif method == "median":
        w[present] = np.median(freq[present]) / freq[present]
    else:
        raise ValueError(f"unknown class-weight method {method!r}; use balanced, sqrt or median")
    w[~present] = w[present].max()
    return [float(v) for v in np.clip(w, 0, max_weight)]


def image_weights(presence: np.ndarray, power: float = 1.0, floor: float = 0.0) -> np.ndarray:
    """Sampling weight per image from a `(N, K)` class-presence matrix (column 0 = background).

    An image weighs as much as its rarest foreground class: `(N / images_with_k) ** power`; images
    with no foreground get `floor` times the smallest weight (0 keeps them at the base weight 1).
    """
    presence = np.asarray(presence, dtype=bool)
    n = presence.shape[0]
    rarity = (n / np.maximum(presence.sum(axis=0), 1)) ** power
    rarity[0] = 1.0
    fg = presence[:, 1:] if presence.shape[1] > 1 else np.zeros((n, 0), bool)
    weights = np.ones(n)
    if fg.shape[1]:
        weights = np.where(fg.any(axis=1), (fg * rarity[1:]).max(axis=1, initial=1.0), 1.0)
    if floor:
        weights = np.where(fg.any(axis=1), weights, floor * weights.min())
    return weights / weights.sum()


def rare_class_sampler(presence: np.ndarray, num_samples: int | None = None, power: float = 1.0,
                       seed: int = 0) -> WeightedRandomSampler:
    """A WeightedRandomSampler (with replacement) drawing images with rare classes more often."""
    weights = image_weights(presence, power)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                 num_samples or len(weights), replacement=True, generator=generator)
