"""Data plan, short proxy training of a candidate, and the full training of the chosen one: through
the project's planner (`unetkit.planning.plan`) and its ONE training path
(`unetkit.training.train(TrainConfig)`). The search has no trainer and no planner of its own.

The planner turns the data folder into a TrainConfig (channels, classes, normalisation, mask kind,
honest validation split: a single image is split by region, optimiser and schedule for the time
budget of the full training). `training_config` keeps that plan's data and recipe and swaps in
the candidate's model and the proxy's length.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetkit.errors import ConfigError


@dataclass(frozen=True)
class DataSource:
    """Training data as given: a data folder (+ masks) or a sample dataset name (`unetkit.datasets`),
    which is written once as a folder inside the search folder."""

    dataset: str | None = None
    images: str | None = None
    masks: str | None = None
    mask_suffix: str = ""

    @classmethod
    def resolve(cls, data: str | Path, masks: str | Path | None = None, mask_suffix: str = "") -> "DataSource":
        """Checked here, before any work starts."""
        from unetkit.datasets import DATASETS

        path = Path(data)
        if path.is_dir():
            if masks is not None and not Path(masks).is_dir():
                raise ConfigError(f"{masks}: no such mask folder")
            return cls(None, str(path.resolve()), str(Path(masks).resolve()) if masks else None, mask_suffix)
        if str(data) in DATASETS.list():
            return cls(str(data), None, None, "")
        raise ConfigError(f"{data}: neither a data folder nor a sample dataset "
                          f"(sample datasets: {', '.join(DATASETS.list())})")

    def folder(self, out_dir: Path) -> Path:
        """The data folder (a sample dataset is written to out_dir/data the first time)."""
        if self.images is not None:
            return Path(self.images)
        from unetkit.datasets import write_dataset

        folder = Path(out_dir) / "data"
        if not (folder / "images").is_dir():
            write_dataset(self.dataset, folder, overwrite=False)
        return folder

    def describe(self) -> str:
        return f"sample dataset {self.dataset}" if self.dataset else f"{self.images}"


@dataclass(frozen=True)
class ProxySettings:
    """The short training every candidate gets (the same for all, so their Dice compare)."""

    steps: int = 120
    batch_size: int = 8
    patch_size: int = 128
    seed: int = 0


def data_plan(source: DataSource, out_dir: Path, device: str, train_budget: str | float):
    """The planner's plan for the data (fingerprint cached by the planner), with the full training
    sized for `train_budget`; prices by FLOPs only (no timing probe: the search times its own
    candidates)."""
    from unetkit.planning import plan

    return plan(source.folder(out_dir), masks=source.masks, mask_suffix=source.mask_suffix or None,
                device=device, budget=train_budget, probe=False)


def with_model(base: Any, candidate: Any) -> Any:
    """A copy of the TrainConfig `base` training `candidate` instead of the planned model."""
    cfg = copy.deepcopy(base)
    cfg.model.name = candidate.arch
    cfg.model.spatial_dims = 2
    cfg.model.kwargs = dict(candidate.kwargs)
    return cfg


def training_config(candidate: Any, base: Any, out_dir: Path, name: str, settings: ProxySettings) -> Any:
    """The proxy run: the plan `base` with `candidate`'s model, `settings.steps` optimiser steps of
    `settings.batch_size` tiles of `settings.patch_size` in one epoch, validated at its end."""
    cfg = with_model(base, candidate)
    cfg.data.patch_size = [settings.patch_size, settings.patch_size]
    cfg.data.batch_size = settings.batch_size
    cfg.data.samples_per_epoch = settings.steps * settings.batch_size
    cfg.data.num_workers = 0
    cfg.epochs, cfg.max_steps, cfg.max_minutes, cfg.val_every = 1, settings.steps, None, 1
    cfg.schedule.name, cfg.schedule.warmup_epochs = "cosine", 0.1
    cfg.early_stop_patience = None
    cfg.monitor = "dice"
    cfg.overlays, cfg.tensorboard, cfg.progress = 0, False, "quiet"
    cfg.seed = settings.seed
    cfg.out_dir, cfg.name, cfg.overwrite = str(out_dir), name, True
    return cfg


def proxy_train(candidate: Any, base: Any, settings: ProxySettings, out_dir: Path) -> dict[str, Any]:
    """Train `candidate` briefly; {"dice": validation Dice at the end, "seconds", "run_dir"}.
    The run folder `out_dir/<candidate id>` is the search's own (replaced if a previous attempt
    was interrupted)."""
    from unetkit.training.run import train

    cfg = training_config(candidate, base, out_dir, candidate.short_id, settings)
    t0 = time.monotonic()
    result = train(cfg)
    seconds = time.monotonic() - t0
    validated = [row for row in result.history if row.get("val_dice") is not None]
    if not validated:
        raise ConfigError(f"proxy training of {candidate.label()} gave no validation Dice")
    last = validated[-1]
    if not math.isfinite(float(last["val_dice"])):
        raise ConfigError(f"proxy training of {candidate.label()} gave a non-finite validation Dice")
    return {"dice": float(last["val_dice"]), "seconds": round(seconds, 2), "run_dir": str(result.run_dir),
            "steps": int(last.get("steps", settings.steps))}
