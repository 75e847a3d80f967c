"""Short proxy training of a candidate, and the full training of the chosen one, through the ONE
training path of the project (`unetkit.training.train(TrainConfig)`): the search builds run
configurations, it has no trainer of its own.

`training_config` is the single place that turns (data, candidate, length) into a TrainConfig;
when the planner (issue 11) lands, its data plan replaces the fixed recipe below.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetkit.errors import ConfigError


@dataclass(frozen=True)
class DataSource:
    """Training data: a sample dataset name (`unetkit.datasets`) or an image folder (+ masks)."""

    dataset: str | None = None
    images: str | None = None
    masks: str | None = None
    mask_suffix: str = ""
    in_channels: int = 1
    num_classes: int = 1  # 1: binary (sigmoid)

    @classmethod
    def resolve(cls, data: str | Path, masks: str | Path | None = None, mask_suffix: str = "",
                in_channels: int = 1, num_classes: int = 1) -> "DataSource":
        """`data` is a folder (images, or images/ + masks/) or a sample dataset name; checked here,
        before any work starts."""
        from unetkit.datasets import DATASETS

        path = Path(data)
        if path.is_dir():
            if masks is not None and not Path(masks).is_dir():
                raise ConfigError(f"{masks}: no such mask folder")
            return cls(None, str(path), str(masks) if masks else None, mask_suffix, in_channels, num_classes)
        if str(data) in DATASETS.list():
            return cls(str(data), None, None, "", in_channels, num_classes)
        raise ConfigError(f"{data}: neither a data folder nor a sample dataset "
                          f"(sample datasets: {', '.join(DATASETS.list())})")

    def describe(self) -> str:
        return f"sample dataset {self.dataset}" if self.dataset else f"folder {self.images}"


@dataclass(frozen=True)
class ProxySettings:
    """The short training every candidate gets (the same for all, so their Dice compare)."""

    steps: int = 120
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 3e-3
    seed: int = 0


def training_config(candidate: Any, data: DataSource, out_dir: Path, name: str, steps: int, batch_size: int,
                    patch_size: int, lr: float, seed: int, device: str, epochs: int = 1):
    """The run configuration training `candidate` on `data` for `steps` optimiser steps in
    `epochs` epochs, validated after each: BCE + Dice, Adam with warm-up and cosine decay,
    light augmentation, random `patch_size` tiles (the recipe of `unetkit demo`)."""
    from unetkit.training.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name = candidate.arch
    cfg.model.spatial_dims = 2
    cfg.model.in_channels = data.in_channels
    cfg.model.num_classes = data.num_classes
    cfg.model.kwargs = dict(candidate.kwargs)
    cfg.data.dataset, cfg.data.images, cfg.data.masks = data.dataset, data.images, data.masks
    cfg.data.mask_suffix = data.mask_suffix
    if data.dataset is not None:
        cfg.data.val_fraction = 0.3  # single-image sample: the right 30% held out, as in the demo
    cfg.data.patch_size = [patch_size, patch_size]
    cfg.data.batch_size = batch_size
    cfg.data.samples_per_epoch = max(batch_size, -(-steps // epochs) * batch_size)
    cfg.data.augmentation = "light"
    cfg.data.num_workers = 0
    cfg.loss.name = "combo"
    cfg.optim.lr = lr
    cfg.schedule.name = "cosine"
    cfg.schedule.warmup_epochs = min(0.5, 0.1 * epochs)  # a tenth of the steps, at most half an epoch
    cfg.epochs = epochs
    cfg.max_steps = steps
    cfg.val_every = 1
    cfg.early_stop_patience = None
    cfg.overlays = 0
    cfg.tensorboard = False
    cfg.progress = "quiet"
    cfg.seed = seed
    cfg.device = device
    cfg.out_dir, cfg.name, cfg.overwrite = str(out_dir), name, True
    return cfg


def proxy_train(candidate: Any, data: DataSource, settings: ProxySettings, out_dir: Path, device: str = "cpu"
                ) -> dict[str, Any]:
    """Train `candidate` briefly; {"dice": validation Dice at the end, "seconds", "run_dir"}.
    The run folder `out_dir/<candidate id>` is the search's own (replaced if a previous attempt
    was interrupted)."""
    from unetkit.training.run import train

    cfg = training_config(candidate, data, out_dir, candidate.short_id, settings.steps, settings.batch_size,
                          settings.patch_size, settings.lr, settings.seed, device)
    t0 = time.monotonic()
    result = train(cfg)
    seconds = time.monotonic() - t0
    validated = [row for row in result.history if "val_dice" in row]
    last = validated[-1] if validated else {}
    dice = last.get("val_dice")
    if dice is None:
        raise ConfigError(f"proxy training of {candidate.label()} gave no validation Dice (history: {last})")
    return {"dice": float(dice), "seconds": round(seconds, 2), "run_dir": str(result.run_dir),
            "steps": int(last.get("steps", settings.steps))}
