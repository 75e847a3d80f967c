"""Step-timing probe: how long one training step of a candidate configuration takes on this device.

`time_step(candidate, ...)` builds the candidate's model, loss and optimiser exactly as the Trainer
does (channels-last for 2D, AMP on CUDA, bf16 autocast on a CPU where its probe says so), runs one warm-up step and then a few timed steps on random
data, and returns seconds per optimiser step. `time_augmentation` measures the data side: one
augmented patch. Both are cheap on small candidates; the planner times only a few candidates and
predicts the others from their FLOPs (`unetkit.models.summary.model_flops`).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch


def time_step(spatial_dims: int, in_channels: int, num_classes: int, features: Sequence[int], patch: Sequence[int],
              batch: int, device: str = "cpu", norm: str = "batch", deep_supervision: bool = True,
              steps: int = 2, max_seconds: float = 20.0, threads: int | None = None,
              strides: Sequence[Sequence[int]] | None = None,
              kernel_sizes: Sequence[Sequence[int]] | None = None) -> float:
    """Seconds per training step (forward, backward, optimiser) of a UNet candidate on `device`
    (with `threads` CPU threads for PyTorch, restored afterwards); `strides` / `kernel_sizes`: the
    candidate's per-axis pooling (anisotropic plans), as the trained model will have it."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_step(spatial_dims, in_channels, num_classes, features, patch, batch, device, norm,
                          deep_supervision, steps, max_seconds, strides, kernel_sizes)
    finally:
        torch.set_num_threads(before)


def _time_step(spatial_dims: int, in_channels: int, num_classes: int, features: Sequence[int], patch: Sequence[int],
               batch: int, device: str, norm: str, deep_supervision: bool, steps: int, max_seconds: float,
               strides: Sequence[Sequence[int]] | None = None,
               kernel_sizes: Sequence[Sequence[int]] | None = None) -> float:
    from unetkit.export.optimize import (channels_last_input, probe_channels_last, probe_cpu_autocast,
                                         retained_cpu_memory, to_channels_last)
    from unetkit.losses import DeepSupervisionLoss, create_loss
    from unetkit.models import create_model

    dev = torch.device(device)
    torch.manual_seed(0)
    geometry = {} if strides is None else {"strides": [list(v) for v in strides],
                                           "kernel_sizes": None if kernel_sizes is None else [list(v) for v in kernel_sizes]}
    model = create_model("unet", spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
                         features=list(features), norm=norm, deep_supervision=deep_supervision, **geometry).to(dev)
    example = (min(batch, 2), in_channels, *patch)
    # the layout and precision the Trainer will choose for this model (the same cached probes)
    channels_last = spatial_dims == 2 if dev.type != "cpu" else probe_channels_last(model, example, train=True)
    if channels_last:  # NHWC / NDHWC, as the Trainer converts it
        to_channels_last(model)
    loss_fn = create_loss("combo")
    if deep_supervision:
        loss_fn = DeepSupervisionLoss(loss_fn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, in_channels, *patch, device=dev)
    if channels_last:
        x = channels_last_input(x)
    y = (torch.rand(batch, 1, *patch, device=dev) > 0.7).long()
    if num_classes > 1:
        y = torch.randint(0, num_classes, (batch, 1, *patch), device=dev)
    amp = dev.type == "cuda" or (dev.type == "cpu" and probe_cpu_autocast(
        model, example, train=True, channels_last=channels_last))
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)

    def step() -> None:
        with torch.autocast(dev.type, enabled=amp):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    times = []
    with retained_cpu_memory(dev.type == "cpu"):  # as the Trainer's loop runs
        step()  # warm-up: allocations, kernel selection
        _sync(dev)
        begin = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            _sync(dev)
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - begin > max_seconds:
                break
    return float(np.median(times))


def time_augmentation(augmentation: str | dict, spatial_dims: int, in_channels: int, patch: Sequence[int],
                      repeats: int = 3) -> float:
    """Seconds to augment one patch (the data loader's per-sample work besides reading)."""
    from unetkit.data.augment import build_augmentation

    aug = build_augmentation(augmentation, spatial_dims=spatial_dims, seed=0)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(in_channels, *patch)).astype(np.float32)
    mask = (rng.random((1, *patch)) > 0.7).astype(np.int64)
    aug(image, mask)
    t0 = time.perf_counter()
    for _ in range(repeats):
        aug(image, mask)
    return (time.perf_counter() - t0) / repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(candidate: dict[str, Any]) -> str:
    patch = "x".join(str(p) for p in candidate["patch"])
    return f"patch {patch}, batch {candidate['batch']}, widths {candidate['features'][0]}..{candidate['features'][-1]}"
