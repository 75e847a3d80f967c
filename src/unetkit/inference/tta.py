"""Test-time augmentation: predict on flipped / rotated copies, undo the transform, average.

In 2D, flips plus 90-degree rotations give the 8 symmetries of the square; in 3D, flips give 8
mirrorings (rotations, if asked for, turn the (H, W) plane only, e.g. for isotropic in-plane pixels).
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch

Transform = tuple[tuple[int, ...], int]  # (flipped axes, number of 90-degree turns in the (H, W) plane)


def tta_transforms(spatial_dims: int, flips: bool = True, rot90: bool = True) -> list[Transform]:
    """The distinct transforms to average: identity first.

    2D: flips only -> 4 (none, H, W, both); rot90 only -> 4 turns; both -> the 8 symmetries of the square.
    3D: flips -> the 8 mirrorings; rot90 adds in-plane turns.
    """
    axes = tuple(range(2, 2 + spatial_dims))
    flip_sets = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)] if flips else [()]
    turns = range(4) if rot90 else range(1)
    if spatial_dims == 2 and flips and rot90:  # flipping both axes == turning twice: keep one flip axis
        flip_sets = [(), (axes[-1],)]
    return [(f, k) for k in turns for f in flip_sets]


def apply_transform(x: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Flip, then turn the last two axes by k * 90 degrees."""
    flipped, turns = transform
    if flipped:
        x = torch.flip(x, flipped)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns % 4 else x


def invert_transform(y: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Undo `apply_transform` on a prediction with the same axis layout."""
    flipped, turns = transform
    if turns % 4:
        y = torch.rot90(y, -turns, dims=(-2, -1))
    return torch.flip(y, flipped) if flipped else y


def tta_predict(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flips: bool = True,
                rot90: bool = True) -> torch.Tensor:
    """Average `fn` over the test-time transforms of `x`.

    Args:
        fn: `(N, C, *S) -> (N, K, *S')` probabilities (average probabilities, not logits).
            Lists/tuples (deep supervision) use their first element.
        x: `(N, C, *S)` input.
    Returns:
        `(N, K, *S')` float32 mean of the inverse-transformed predictions.
    """
    total: torch.Tensor | None = None
    transforms = tta_transforms(x.dim() - 2, flips, rot90)
    for transform in transforms:
        y = fn(apply_transform(x, transform))
        if isinstance(y, (list, tuple)):
            y = y[0]
        y = invert_transform(y, transform).float()
        total = y if total is None else total + y
    assert total is not None
    return total / len(transforms)
