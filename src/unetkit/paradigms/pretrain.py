"""Self-supervised pretraining on unlabelled images: Models Genesis restoration, then encoder transfer.

Models Genesis (Zhou et al., "Models Genesis: generic autodidactic models for 3D medical image
analysis", MICCAI 2019 / Medical Image Analysis 2021): tiles are corrupted by a random non-linear
intensity curve (Bezier), local pixel shuffling, and in-painting (noise boxes) or out-painting
(noise outside a box); the whole U-Net learns to restore the original tile (MSE). Restoration needs
no labels, suits dense prediction (every pixel is a target) and works with small CPU budgets;
afterwards the encoder (and, if wanted, the decoder) starts a supervised model.

    history = pretrain_encoder(model, unlabelled_images, steps=500, tile_size=64)
    report = transfer_encoder(model, target_model)      # copies encoder.* tensors by name and shape
    print(report)                                        # what was copied, skipped and why

2D and 3D: corruptions are N-dimensional; tiles are (C, *tile_size).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers
from unetkit.models.blocks import SegmentationHead
from unetkit.paradigms.sampling import ImageSource, as_image_list, as_tile, model_device, optimise, random_crop


# ---- corruptions (numpy, one tile (C, *S) at a time) -------------------------------------------
@dataclass
class GenesisCorruption:
    """The Models Genesis corruption of one tile (C, *S); probabilities as in the paper's code.

    nonlinear_p: Bezier intensity curve (on the tile rescaled to [0, 1], then scaled back).
    shuffle_p, shuffle_blocks, shuffle_size: local pixel shuffling inside `shuffle_blocks` random
        blocks of at most `shuffle_size` (a fraction of the tile side) per side.
    paint_p, outpaint_p: in- or out-painting (out-painting with probability `outpaint_p` given
        painting); boxes are filled with uniform noise over the tile's range.
    """

    nonlinear_p: float = 0.9
    shuffle_p: float = 0.5
    shuffle_blocks: int = 50
    shuffle_size: float = 0.1
    paint_p: float = 0.9
    outpaint_p: float = 0.2

    def __call__(self, tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = np.array(tile, dtype=np.float32)
        lo, hi = float(x.min()), float(x.max())
        span = max(hi - lo, 1e-6)
        if rng.random() < self.nonlinear_p:
            x = bezier_intensity((x - lo) / span, rng) * span + lo
        if rng.random() < self.shuffle_p:
            x = local_shuffle(x, self.shuffle_blocks, self.shuffle_size, rng)
        if rng.random() < self.paint_p:
            x = out_paint(x, lo, hi, rng) if rng.random() < self.outpaint_p else in_paint(x, lo, hi, rng)
        return x


def bezier_intensity(unit: np.ndarray, rng: np.random.Generator, points: int = 1000) -> np.ndarray:
    """Map [0, 1] intensities through a random cubic Bezier curve from (0, 0) to (1, 1): half the
    time the curve as drawn, half the time made monotone by sorting (as in Models Genesis)."""
    c = rng.random((2, 2))
    t = np.linspace(0.0, 1.0, points)
    basis = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3])
    xs = basis.T @ np.array([0.0, c[0, 0], c[1, 0], 1.0])
    ys = basis.T @ np.array([0.0, c[0, 1], c[1, 1], 1.0])
    order = np.argsort(xs)
    ys = ys[order] if rng.random() < 0.5 else np.sort(ys)
    return np.interp(unit, xs[order], ys).astype(np.float32)


def _random_box(size: Sequence[int], low: float, high: float, rng: np.random.Generator) -> tuple[slice, ...]:
    """A random box whose sides are `low`..`high` of the tile's sides."""
    box = []
    for s in size:
        side = int(np.clip(round(rng.uniform(low, high) * s), 1, s))
        start = int(rng.integers(0, s - side + 1))
        box.append(slice(start, start + side))
    return tuple(box)


def local_shuffle(x: np.ndarray, blocks: int, max_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the pixels inside `blocks` small random blocks (every channel alike)."""
    x = x.copy()
    size = x.shape[1:]
    for _ in range(blocks):
        box = (slice(None), *_random_box(size, 1.0 / min(size), max_fraction, rng))
        patch = x[box]
        flat = patch.reshape(patch.shape[0], -1)
        x[box] = flat[:, rng.permutation(flat.shape[1])].reshape(patch.shape)
    return x


def in_paint(x: np.ndarray, lo: float, hi: float, rng: np.random.Generator, boxes: int = 5) -> np.ndarray:
    """Replace up to `boxes` random boxes (1/6..1/3 of each side) with uniform noise."""
    x = x.copy()
    for _ in range(int(rng.integers(1, boxes + 1))):
        box = (slice(None), *_random_box(x.shape[1:], 1 / 6, 1 / 3, rng))
        x[box] = rng.uniform(lo, hi, x[box].shape)
    return x


def out_paint(x: np.ndarray, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """Keep one random box (1/2..3/4 of each side) and fill everything else with uniform noise."""
    box = (slice(None), *_random_box(x.shape[1:], 1 / 2, 3 / 4, rng))
    out = rng.uniform(lo, hi, x.shape).astype(np.float32)
    out[box] = x[box]
    return out


# ---- pretraining ---------------------------------------------------------------------------------
def pretrain_encoder(
    model: nn.Module,
    images: ImageSource,
    steps: int = 500,
    tile_size: int | Sequence[int] = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    corruption: GenesisCorruption | None = None,
    seed: int = 0,
) -> list[float]:
    """Train `model` (a `SegmentationModel`: encoder + decoder) to restore corrupted tiles.

    Args:
        model: trained in place; a temporary 1x1 restoration head maps its last decoder map
            (`model.features(x)[0]`) to the image's channels, and is dropped afterwards.
        images: unlabelled, normalised images: (N, C, *S), a list of (C, *S), or a Dataset of
            dicts with "image" (e.g. `RandomTileDataset`, `SegmentationDataset`).
        steps, batch_size, lr: Adam steps on random `tile_size` crops.
        corruption: the corruption (default: `GenesisCorruption()`, the paper's settings).
    Returns:
        the restoration loss (MSE) of every step.
    """
    dims = int(getattr(model, "spatial_dims", 2))
    pool = as_image_list(images, dims)
    channels = pool[0].shape[0]
    if any(im.shape[0] != channels for im in pool):
        raise ValueError(f"images have different channel counts: {sorted({im.shape[0] for im in pool})}")
    if not hasattr(model, "features") or not hasattr(model, "decoder"):
        raise TypeError(f"{type(model).__name__} is not a SegmentationModel (encoder + decoder + features())")
    tile = as_tile(tile_size, dims)
    corrupt = corruption or GenesisCorruption()
    rng = np.random.default_rng(seed)
    device = model_device(model)
    head = SegmentationHead(dims, model.decoder.out_channels[0], channels).to(device)

    def step_loss(_: int) -> torch.Tensor:
        originals = [random_crop([pool[int(rng.integers(len(pool)))]], tile, rng)[0] for _ in range(batch_size)]
        originals = _same_size(originals)
        corrupted = np.stack([corrupt(t, rng) for t in originals])
        x = torch.from_numpy(corrupted).to(device)
        target = torch.from_numpy(np.stack(originals)).to(device)
        restored = head(model.features(x)[0])
        if restored.shape[2:] != target.shape[2:]:  # encoders whose finest map is below input size
            restored = F.interpolate(restored, size=target.shape[2:], mode=layers.interp_mode(dims),
                                     align_corners=False)
        return F.mse_loss(restored, target)

    was_training = model.training
    model.train()
    try:
        return optimise([*model.parameters(), *head.parameters()], step_loss, steps, lr)
    finally:
        model.train(was_training)


def _same_size(tiles: list[np.ndarray]) -> list[np.ndarray]:
    """Crop tiles (from images smaller than the tile) to their common smallest size."""
    size = np.min([t.shape[1:] for t in tiles], axis=0)
    return [t[(slice(None), *(slice(0, int(s)) for s in size))] for t in tiles]


# ---- transfer --------------------------------------------------------------------------------------
@dataclass
class TransferReport:
    """What `transfer_encoder` did: tensor names (in the target) copied, left out and why."""

    copied: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing_in_source: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"copied {len(self.copied)} tensor(s)"]
        lines += [f"  shape differs, kept: {n} source {s} target {t}" for n, s, t in self.shape_mismatch]
        lines += [f"  not in the source, kept: {n}" for n in self.missing_in_source]
        return "\n".join(lines)


def transfer_encoder(
    source: nn.Module | str | os.PathLike,
    target: nn.Module,
    source_prefix: str = "encoder.",
    target_prefix: str | None = None,
    strict: bool = True,
) -> TransferReport:
    """Copy the encoder's tensors (parameters and buffers, e.g. BatchNorm statistics) from
    `source` into `target`, matched by name under the prefixes and by shape.

    Args:
        source: a model or a model file (`unetkit.save_model`).
        target: updated in place; tensors outside `target_prefix` are untouched.
        source_prefix, target_prefix: state-dict prefixes (target default: the same). E.g.
            "" copies everything that matches, `"encoder."` -> `"encoder.paths.0."` starts one
            modality path of a `multimodal-unet` from a pretrained `unet`.
        strict: raise when a target tensor under the prefix has no same-shaped source tensor
            (the encoders differ); False copies what matches and reports the rest.
    Raises:
        ValueError: nothing to copy (no tensor under the prefixes), or a mismatch with strict=True.
    """
    if not isinstance(source, nn.Module):
        from unetkit.io.checkpoint import load_model

        source = load_model(source)
    target_prefix = source_prefix if target_prefix is None else target_prefix
    src = {k[len(source_prefix):]: v for k, v in source.state_dict().items() if k.startswith(source_prefix)}
    dst = target.state_dict()
    report = TransferReport()
    updates: dict[str, Any] = {}
    for name, tensor in dst.items():
        if not name.startswith(target_prefix):
            continue
        key = name[len(target_prefix):]
        if key not in src:
            report.missing_in_source.append(name)
        elif src[key].shape != tensor.shape:
            report.shape_mismatch.append((name, tuple(src[key].shape), tuple(tensor.shape)))
        else:
            updates[name] = src[key]
            report.copied.append(name)
    if not updates:
        raise ValueError(f"no tensor to copy: source has {len(src)} under '{source_prefix}', none matches a target "
                         f"tensor under '{target_prefix}' by name and shape\n{report}")
    if strict and (report.shape_mismatch or report.missing_in_source):
        raise ValueError(f"the encoders differ (pass strict=False to copy what matches):\n{report}")
    with torch.no_grad():
        for name, value in updates.items():
            _tensor_at(target, name).copy_(value)
    return report


def _tensor_at(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module_name) if module_name else model, attr)
