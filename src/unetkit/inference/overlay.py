"""Overlay figures: image | (ground truth |) prediction | overlay, a colour per class, written as PNG.

Figures are drawn from a preview at most `PREVIEW_SIDE` pixels on a side (area-averaged image,
majority-vote labels, built strip by strip), so an 8000x8000 image costs a few MB here, not GBs,
and fine structure is averaged rather than aliased.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from unetkit.io.figures import new_figure, save_figure

PREVIEW_SIDE = 1024  # longest side of the arrays a figure is drawn from

# class 1, 2, ... colours (tab10 without its grey), RGB in [0, 1]
DEFAULT_COLORS = [
    (0.839, 0.153, 0.157), (0.172, 0.627, 0.172), (0.122, 0.467, 0.706), (1.0, 0.498, 0.055),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.737, 0.741, 0.133),
    (0.090, 0.745, 0.812),
]


def display_image(image: np.ndarray, lower: float = 1.0, upper: float = 99.8) -> np.ndarray:
    """A channel-first image `(C, H, W)` (or `(H, W)`) as `(H, W, 3)` float in [0, 1] for display.

    uint8 images are shown as stored; other dtypes (16-bit, float) are percentile-stretched per
    channel. One channel -> grey; three or more -> the first three as RGB; two -> the first.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    image = image[:3] if image.shape[0] >= 3 else image[:1]
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    else:
        x = image.astype(np.float32)
        flat = x.reshape(x.shape[0], -1)
        lo, hi = np.percentile(flat, [lower, upper], axis=1)
        lo, hi = lo[:, None, None], hi[:, None, None]
        out = np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    out = np.moveaxis(out, 0, -1)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def color_labels(labels: np.ndarray, class_colors: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """Class labels `(H, W)` -> `(H, W, 3)` colours (background black)."""
    colors = np.asarray([(0.0, 0.0, 0.0), *(class_colors or DEFAULT_COLORS)], dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    index = np.where(labels > 0, (labels - 1) % (len(colors) - 1) + 1, 0)
    return colors[index]


def preview_factor(shape: Sequence[int], max_side: int = PREVIEW_SIDE) -> int:
    """The integer downsampling factor that brings the longest side to at most `max_side`."""
    return max(1, -(-max(int(s) for s in shape) // max_side))


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """`(C, H, W)` -> `(C, ceil(H/f), ceil(W/f))` float32 block means (area averaging), one strip of
    `factor` rows at a time: extra memory is one output plus one strip."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if factor == 1:
        return image.astype(np.float32, copy=False)
    c, h, w = image.shape
    oh, ow = -(-h // factor), -(-w // factor)
    out = np.empty((c, oh, ow), dtype=np.float32)
    pad_w = ow * factor - w
    for i in range(oh):
        strip = image[:, i * factor:(i + 1) * factor].astype(np.float32)
        if pad_w:
            strip = np.pad(strip, ((0, 0), (0, 0), (0, pad_w)), mode="edge")
        out[:, i] = strip.reshape(c, strip.shape[1], ow, factor).mean(axis=(1, 3))
    return out


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """`(H, W)` class labels -> `(ceil(H/f), ceil(W/f))` by majority vote within each block (ties: the
    lower class), one strip at a time."""
    labels = np.asarray(labels)
    if factor == 1:
        return labels
    h, w = labels.shape
    oh, ow = -(-h // factor), -(-w // factor)
    out = np.zeros((oh, ow), dtype=labels.dtype)
    classes = np.unique(labels)
    pad_w = ow * factor - w
    for i in range(oh):
        strip = labels[i * factor:(i + 1) * factor]
        if pad_w:
            strip = np.pad(strip, ((0, 0), (0, pad_w)), mode="edge")
        best = np.full(ow, -1, dtype=np.int64)
        for c in classes:
            votes = (strip == c).reshape(strip.shape[0], ow, factor).sum(axis=(0, 2))
            better = votes > best
            out[i][better] = c
            best = np.maximum(best, votes)
    return out


def preview(image: np.ndarray, labels: np.ndarray, max_side: int = PREVIEW_SIDE,
            truth: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(image, labels[, truth]) downsampled together to at most `max_side` pixels on a side."""
    factor = preview_factor(np.shape(labels)[-2:], max_side)
    out = [downsample_image(image, factor), downsample_labels(labels, factor)]
    if truth is not None:
        out.append(downsample_labels(truth, factor))
    return tuple(out)


def overlay_figure(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike,
                   class_colors: Sequence[Sequence[float]] | None = None, alpha: float = 0.45,
                   title: str | None = None, class_names: Sequence[str] | None = None,
                   overwrite: bool = False, truth: np.ndarray | None = None,
                   max_side: int = PREVIEW_SIDE) -> Path:
    """Write a PNG: image | prediction | overlay, or image | ground truth | prediction | overlay.

    Args:
        image: `(C, H, W)` or `(H, W)`, any dtype (16-bit is percentile-stretched).
        labels: class labels `(H, W)` or `(1, H, W)` (0 = background), or multi-label `(K, H, W)` {0, 1}
            (shown as class k + 1 where channel k is set; later channels on top).
        class_colors: RGB in [0, 1] for classes 1, 2, ...
        class_names: names indexed by class id, shown in a legend below the panels.
        truth: ground-truth labels like `labels` (validation overlays), shown as their own panel.
        max_side: the figure is drawn from a preview at most this many pixels on a side.
    """
    from matplotlib.patches import Patch

    labels = _as_class_map(np.asarray(labels))
    image = np.asarray(image)
    if tuple(image.shape[-2:]) != labels.shape:
        raise ValueError(f"image size {tuple(image.shape[-2:])} != mask size {labels.shape}")
    truth_map = _as_class_map(np.asarray(truth)) if truth is not None else None
    if truth_map is not None and truth_map.shape != labels.shape:
        raise ValueError(f"ground truth size {truth_map.shape} != mask size {labels.shape}")
    small = preview(image, labels, max_side, truth_map)
    small_image, labels = small[0], small[1]
    if image.dtype == np.uint8:  # keep uint8's "shown as stored" display
        small_image = np.clip(np.rint(small_image), 0, 255).astype(np.uint8)
    shown = display_image(small_image)
    colored = color_labels(labels, class_colors)
    blend = np.where((labels > 0)[..., None], (1 - alpha) * shown + alpha * colored, shown)
    panels = [(shown, "image"), (colored, "prediction"), (blend, "overlay")]
    if truth_map is not None:
        panels.insert(1, (color_labels(small[2], class_colors), "ground truth"))
    height, width = labels.shape
    scale = 4.0 / max(height, width)
    present = sorted({int(c) for c in np.unique(labels) if c > 0}
                     | ({int(c) for c in np.unique(small[2]) if c > 0} if truth_map is not None else set()))
    fig = new_figure((len(panels) * width * scale + 0.6, height * scale + 0.8 + (0.4 if present else 0)))
    axes = fig.subplots(1, len(panels))
    for ax, (panel, name) in zip(axes, panels):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if present:  # below the panels, never over the image
        palette = np.asarray(class_colors or DEFAULT_COLORS)
        handles = [Patch(color=palette[(c - 1) % len(palette)],
                         label=class_names[c] if class_names and c < len(class_names) else f"class {c}")
                   for c in present[:10]]
        fig.subplots_adjust(bottom=0.4 / (height * scale + 1.2))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize="small",
                   frameon=False)
    return save_figure(fig, path, overwrite=overwrite)


def _as_class_map(labels: np.ndarray) -> np.ndarray:
    if labels.ndim == 2:
        return labels
    if labels.ndim == 3 and labels.shape[0] == 1:
        return labels[0]
    if labels.ndim == 3:  # multi-label channels -> one map, later channels drawn on top
        out = np.zeros(labels.shape[1:], dtype=np.int64)
        for k, channel in enumerate(labels):
            out[channel > 0] = k + 1
        return out
    raise ValueError(f"labels must be (H, W), (1, H, W) or (K, H, W), got shape {labels.shape}")
