"""Overlay figures: image | mask | overlay, a colour per class, written as PNG."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from unetkit.io.figures import new_figure, save_figure

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


def overlay_figure(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike,
                   class_colors: Sequence[Sequence[float]] | None = None, alpha: float = 0.45,
                   title: str | None = None, class_names: Sequence[str] | None = None,
                   overwrite: bool = False) -> Path:
    """Write a three-panel PNG: image | mask | overlay.

    Args:
        image: `(C, H, W)` or `(H, W)`, any dtype (16-bit is percentile-stretched).
        labels: class labels `(H, W)` or `(1, H, W)` (0 = background), or multi-label `(K, H, W)` {0, 1}
            (shown as class k + 1 where channel k is set; later channels on top).
        class_colors: RGB in [0, 1] for classes 1, 2, ...
        class_names: names indexed by class id, shown in a legend.
    """
    from matplotlib.patches import Patch

    labels = _as_class_map(np.asarray(labels))
    shown = display_image(image)
    if shown.shape[:2] != labels.shape:
        raise ValueError(f"image size {shown.shape[:2]} != mask size {labels.shape}")
    colored = color_labels(labels, class_colors)
    blend = np.where((labels > 0)[..., None], (1 - alpha) * shown + alpha * colored, shown)
    height, width = labels.shape
    scale = 4.0 / max(height, width)
    fig = new_figure((3 * width * scale + 0.6, height * scale + 0.8))
    axes = fig.subplots(1, 3)
    for ax, panel, name in zip(axes, (shown, colored, blend), ("image", "mask", "overlay")):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    present = [int(c) for c in np.unique(labels) if c > 0]
    if present:
        palette = np.asarray(class_colors or DEFAULT_COLORS)
        handles = [Patch(color=palette[(c - 1) % len(palette)],
                         label=class_names[c] if class_names and c < len(class_names) else f"class {c}")
                   for c in present[:10]]
        axes[1].legend(handles=handles, loc="lower right", fontsize="small", framealpha=0.7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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
