"""Sliding-window and overlap-tile inference: one pure N-D function for 2D and 3D.

Same-padding models ("same" mode, `output_size_fn=None`): windows of `roi_size` slide over the
image with the given overlap (the last window of each axis is moved back to end at the border);
their outputs are blended with a Gaussian (or constant) weight and normalised by the summed weight.

Valid-padding models (overlap-tile, Ronneberger et al. 2015; `output_size_fn` given): a window of
`roi_size` pixels yields an output tile of `output_size_fn(roi_size)` pixels covering the window's
centre. Output tiles are laid on a grid over the image, with steps a multiple of the network's total
stride, and the missing context at the borders is mirrored. The result equals the model's output on
the mirror-padded image.

Memory: windows are cut (and mirror-padded) one at a time from the input wherever it lives, only
`batch_size` windows go to the compute device at once, and results accumulate into `output_device`
buffers, so the compute memory grows with the window, not the image.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np
import torch

Predictor = Callable[[torch.Tensor], "torch.Tensor | Sequence[torch.Tensor]"]
OutputSizeFn = Callable[[tuple[int, ...]], Sequence[int]]
PADDING_MODES = ("reflect", "symmetric", "replicate", "constant")


def sliding_window_inference(
    image: torch.Tensor,
    predictor: Predictor,
    roi_size: int | Sequence[int],
    overlap: float = 0.5,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    padding_mode: str = "reflect",
    output_size_fn: OutputSizeFn | None = None,
    device: str | torch.device | None = None,
    output_device: str | torch.device = "cpu",
    progress: bool | Callable[[int, int], None] = False,
) -> torch.Tensor:
    """Predict `image` window by window and blend the window outputs.

    Args:
        image: `(N, C, *S)` tensor, `len(S)` spatial dims (2 or 3); it stays where it is.
        predictor: maps a batch of windows `(B, C, *roi)` to `(B, K, *out)` (a list or tuple, as with
            deep supervision, uses its first element). `out == roi` for same-mode models.
        roi_size: window (model input) size, an int or one per spatial dim. Same mode clips it to
            the image size; valid mode uses it as given (it must be a valid input size).
        overlap: fraction in [0, 1) of the window (of the output tile in valid mode) shared by
            neighbouring windows.
        blend: "gaussian" (centre-weighted, sigma = `sigma_scale` * window) or "constant".
        batch_size: windows per predictor call.
        padding_mode: how pixels outside the image are filled: "reflect" (mirror without repeating
            the edge), "symmetric" (mirror with the edge), "replicate" or "constant" (zeros).
        output_size_fn: valid-mode models only: input window size -> output size.
        device: where the predictor runs (default: the image's device).
        output_device: where the `(N, K, *S)` float32 result is accumulated.
        progress: True shows a tqdm progress bar; a callable is called as `progress(done, total)`
            (batches) after each batch.

    Returns:
        `(N, K, *S)` float32 tensor on `output_device`.
    """
    if image.dim() < 3:
        raise ValueError(f"expected an (N, C, *S) tensor, got shape {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    size = tuple(int(s) for s in image.shape[2:])
    dims = len(size)
    roi = _as_sizes(roi_size, dims)
    device = torch.device(device) if device is not None else image.device

    plan = plan_windows(size, roi, overlap, output_size_fn)
    weight_map = importance_map(plan.tile, blend, sigma_scale).to(output_device)
    out: torch.Tensor | None = None
    norm = torch.zeros((1, 1, *size), dtype=torch.float32, device=output_device)

    jobs = [(n, start) for n in range(image.shape[0]) for start in plan.starts]
    batches = [jobs[i:i + batch_size] for i in range(0, len(jobs), max(1, batch_size))]
    report = progress if callable(progress) else None
    if progress and report is None:
        from tqdm import tqdm

        batches = tqdm(batches, desc="windows", unit="batch")
    with torch.no_grad():
        for done, batch in enumerate(batches, 1):
            windows = torch.cat([
                extract_window(image[n:n + 1], [s - m for s, m in zip(start, plan.margin)],
                               plan.window, padding_mode) for n, start in batch])
            pred = predictor(windows.to(device, non_blocking=True))
            if isinstance(pred, (list, tuple)):
                pred = pred[0]
            if tuple(pred.shape[2:]) != plan.tile:
                raise ValueError(f"predictor returned windows of size {tuple(pred.shape[2:])}, expected "
                                 f"{plan.tile} for input windows of size {plan.window}"
                                 + ("" if output_size_fn else "; pass output_size_fn for valid-mode models"))
            pred = pred.to(output_device, dtype=torch.float32)
            if out is None:
                out = torch.zeros((image.shape[0], pred.shape[1], *size), dtype=torch.float32,
                                  device=output_device)
            for (n, start), p in zip(batch, pred):
                src, dst = _clip_tile(start, plan.tile, size)
                w = weight_map[src]
                out[(n, slice(None), *dst)] += p[(slice(None), *src)] * w
                if n == 0:
                    norm[(0, 0, *dst)] += w
            if report is not None:
                report(done, len(batches))
    assert out is not None
    out /= norm
    return out


class WindowPlan:
    """Where windows go: `starts` of output tiles (image coordinates), `window` (input size),
    `tile` (output size) and `margin` (context each side: the tile starts `margin` into the window)."""

    def __init__(self, starts: list[tuple[int, ...]], window: tuple[int, ...], tile: tuple[int, ...],
                 margin: tuple[int, ...]) -> None:
        self.starts, self.window, self.tile, self.margin = starts, window, tile, margin

    def __len__(self) -> int:
        return len(self.starts)


def plan_windows(size: Sequence[int], roi: Sequence[int], overlap: float,
                 output_size_fn: OutputSizeFn | None = None) -> WindowPlan:
    """Window positions for an image of `size` (see `sliding_window_inference`)."""
    size, roi = tuple(size), tuple(roi)
    if output_size_fn is None:  # same mode: tiles are the windows, clipped to the image
        window = tuple(min(r, s) for r, s in zip(roi, size))
        per_axis = [_same_starts(s, w, overlap) for s, w in zip(size, window)]
        return WindowPlan(list(itertools.product(*per_axis)), window, window, (0,) * len(size))
    tile = tuple(int(t) for t in output_size_fn(roi))
    if any((r - t) % 2 or t <= 0 for r, t in zip(roi, tile)):
        raise ValueError(f"window {roi} -> output {tile}: the output must be smaller by an even amount "
                         "(centred) for overlap-tile inference")
    margin = tuple((r - t) // 2 for r, t in zip(roi, tile))
    period = _size_period(roi, output_size_fn)
    per_axis = [_grid_starts(s, t, overlap, p) for s, t, p in zip(size, tile, period)]
    return WindowPlan(list(itertools.product(*per_axis)), roi, tile, margin)


def _same_starts(size: int, window: int, overlap: float) -> list[int]:
    step = max(1, int(window * (1.0 - overlap)))
    count = -(-(size - window) // step) + 1
    return [min(i * step, size - window) for i in range(count)]


def _grid_starts(size: int, tile: int, overlap: float, period: int) -> list[int]:
    """Tile starts on a grid of steps that are multiples of `period`; the last tile may pass the end."""
    step = max(period, int(tile * (1.0 - overlap)) // period * period)
    count = max(1, -(-(size - tile) // step) + 1)
    return [i * step for i in range(count)]


def _size_period(roi: tuple[int, ...], output_size_fn: OutputSizeFn) -> tuple[int, ...]:
    """Per axis, the smallest shift k such that roi + k is a valid input: the network's total stride.

    Windows shifted by multiples of it see the same pooling grid, so tiles agree with a whole-image pass.
    """
    periods = []
    for axis in range(len(roi)):
        for k in range(1, 4 * roi[axis] + 1):
            probe = tuple(r + (k if a == axis else 0) for a, r in enumerate(roi))
            try:
                output_size_fn(probe)
            except ValueError:
                continue
            periods.append(k)
            break
        else:
            periods.append(1)
    return tuple(periods)


def _clip_tile(start: Sequence[int], tile: Sequence[int], size: Sequence[int]
               ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(slices into the tile, slices into the image) of the tile's part inside the image."""
    ends = [min(s + t, n) for s, t, n in zip(start, tile, size)]
    src = tuple(slice(0, e - s) for s, e in zip(start, ends))
    dst = tuple(slice(s, e) for s, e in zip(start, ends))
    return src, dst


def extract_window(image: torch.Tensor, start: Sequence[int], window: Sequence[int],
                   padding_mode: str = "reflect", value: float = 0.0) -> torch.Tensor:
    """Cut `image[..., start:start + window]` `(N, C, *window)`, filling what lies outside the image
    by `padding_mode`; copies only the window (mirroring may reflect more than once)."""
    size = image.shape[2:]
    if all(s >= 0 and s + w <= n for s, w, n in zip(start, window, size)):
        return image[(slice(None), slice(None), *(slice(s, s + w) for s, w in zip(start, window)))]
    indices = [_axis_indices(s, w, n, padding_mode) for s, w, n in zip(start, window, size)]
    # slice the (small) range the indices touch, then gather along each axis
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in indices)
    out = image[(slice(None), slice(None), *box)]
    for axis, (idx, b) in enumerate(zip(indices, box)):
        out = out.index_select(2 + axis, torch.as_tensor(idx - b.start, device=image.device))
    if padding_mode == "constant":
        for axis, (s, w, n) in enumerate(zip(start, window, size)):
            pos = np.arange(s, s + w)
            outside = np.nonzero((pos < 0) | (pos >= n))[0]
            if outside.size:
                out.index_fill_(2 + axis, torch.as_tensor(outside, device=image.device), value)
    return out


def _axis_indices(start: int, length: int, size: int, mode: str) -> np.ndarray:
    """Source indices for positions start..start+length-1 of an axis of `size`."""
    i = np.arange(start, start + length)
    if mode in ("replicate", "constant") or size == 1:
        return np.clip(i, 0, size - 1)
    if mode == "reflect":
        period = 2 * (size - 1)
        i = np.mod(i, period)
        return np.where(i < size, i, period - i)
    period = 2 * size  # symmetric
    i = np.mod(i, period)
    return np.where(i < size, i, period - 1 - i)


def importance_map(size: Sequence[int], blend: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """Blending weights `(*size)` float32: ones, or a separable Gaussian (peak 1) centred on the tile,
    clipped below at 1e-4 of the peak so border pixels still count."""
    if blend == "constant":
        return torch.ones(tuple(size), dtype=torch.float32)
    weights = torch.ones((), dtype=torch.float64)
    for n in size:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        weights = weights[..., None] * torch.exp(-0.5 * (x / sigma) ** 2)
    weights = weights / weights.max()
    return weights.clamp_min(1e-4).to(torch.float32)


def _as_sizes(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    sizes = tuple(int(v) for v in value)
    if len(sizes) != dims:
        raise ValueError(f"roi_size {sizes} has {len(sizes)} values for {dims} spatial dims")
    if any(s < 1 for s in sizes):
        raise ValueError(f"roi_size must be positive, got {sizes}")
    return sizes
