"""Helpers shared by the paradigms: image lists, random crops, and a short optimisation loop.

Pretraining and few-shot fine-tuning run tens to a few thousand steps on a handful of images held
in memory, so they use this small loop instead of the run-folder `Trainer` (no run directory,
checkpoints or validation); they share the toolkit's models, losses and augmentation.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

ImageSource = Any  # a (N, C, *S) array/tensor, a sequence of (C, *S) arrays/tensors, or a Dataset of dicts


def as_image_list(images: ImageSource, spatial_dims: int, what: str = "images") -> list[np.ndarray]:
    """Normalised images as float32 numpy arrays (C, *S).

    Accepts a batch (N, C, *S), one image (C, *S), a sequence of (C, *S) images, or a torch
    Dataset whose items are dicts with an "image" (every item is read once).
    """
    if isinstance(images, torch.utils.data.Dataset) and not isinstance(images, torch.Tensor):
        images = [images[i]["image"] for i in range(len(images))]  # type: ignore[arg-type]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        arr = _numpy(images).astype(np.float32, copy=False)
        if arr.ndim == spatial_dims + 1:
            return [arr]
        if arr.ndim != spatial_dims + 2:
            raise ValueError(f"{what}: expected (N, C, *S) or (C, *S) with {spatial_dims} spatial dims, "
                             f"got shape {arr.shape}")
        return list(arr)
    out = [_numpy(im).astype(np.float32, copy=False) for im in images]
    if not out:
        raise ValueError(f"{what}: no images given")
    for i, im in enumerate(out):
        if im.ndim != spatial_dims + 1:
            raise ValueError(f"{what}[{i}]: expected (C, *S) with {spatial_dims} spatial dims, got shape {im.shape}")
    return out


def as_mask_list(masks: Any, count: int, spatial_dims: int) -> list[np.ndarray]:
    """Masks as int64 arrays (1, *S): accepts (N, 1, *S), (N, *S), one (1, *S) / (*S), or a sequence."""
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        arr = _numpy(masks)
        items = [arr] if arr.ndim == spatial_dims or (arr.ndim == spatial_dims + 1 and count == 1) else list(arr)
    else:
        items = list(masks)
    out = []
    for m in items:
        m = np.asarray(_numpy(m)).astype(np.int64)
        out.append(m[None] if m.ndim == spatial_dims else m)
    if len(out) != count:
        raise ValueError(f"{len(out)} masks for {count} images")
    return out


def _numpy(x: Any) -> np.ndarray:
    """A numpy array; floating and bool inputs become float32, integers keep their type."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    return x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32, copy=False)


def random_crop(arrays: Sequence[np.ndarray], tile: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random `tile` crop (clipped to the image size) of arrays (C, *S) sharing *S."""
    size = arrays[0].shape[1:]
    tile = [min(int(t), int(s)) for t, s in zip(tile, size)]
    start = [int(rng.integers(0, s - t + 1)) for s, t in zip(size, tile)]
    box = (slice(None), *(slice(a, a + t) for a, t in zip(start, tile)))
    return [np.ascontiguousarray(a[box]) for a in arrays]


def as_tile(tile_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    tile = (int(tile_size),) * spatial_dims if isinstance(tile_size, (int, np.integer)) else tuple(tile_size)
    if len(tile) != spatial_dims:
        raise ValueError(f"tile_size {tile} does not match {spatial_dims} spatial dims")
    return tile


def optimise(params: Iterable[nn.Parameter], step_loss: Callable[[int], torch.Tensor], steps: int,
             lr: float, weight_decay: float = 0.0) -> list[float]:
    """Adam for `steps` steps on `step_loss(step) -> scalar`; returns the loss of every step."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    history = []
    for step in range(int(steps)):
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
