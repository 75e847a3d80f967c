"""Typed run configuration that round-trips to YAML / JSON.

Every section is a dataclass; unknown fields are errors that name the field and the
section, so a typo in a YAML file never goes unnoticed.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import yaml

from unetkit.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "unet"
    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 1
    kwargs: dict = field(default_factory=dict)  # features, norm, act, dropout, deep_supervision, ...


@dataclass
class DataConfig:
    dataset: Optional[str] = None  # a sample dataset name (unetkit.datasets), or None for folders
    dataset_options: dict = field(default_factory=dict)  # e.g. synthetic-cells: size, count, num_classes
    images: Optional[str] = None  # image folder (or one folder holding images and masks)
    masks: Optional[str] = None  # mask folder
    mask_suffix: str = ""  # e.g. "_mask" when masks sit beside images
    mask_kind: str = "auto"  # auto | binary | classes | instances
    val_fraction: float = 0.2
    fold: Optional[int] = None  # k-fold cross-validation: which fold is validation
    num_folds: int = 5
    split_file: Optional[str] = None  # reuse a splits.json
    patch_size: list = field(default_factory=lambda: [256, 256])
    augmentation: Union[str, dict] = "default"  # none | light | default | heavy | a config dict
    normalize: dict = field(default_factory=lambda: {"mode": "percentile", "lower": 1.0, "upper": 99.8})
    target_spacing: Optional[list] = None  # 3D: (D, H, W) voxel spacing every case is resampled to; None: native
    batch_size: int = 8
    num_workers: int = -1  # -1: automatic
    weight_map: bool = False  # the original U-Net boundary weight maps
    weight_map_w0: float = 10.0
    weight_map_sigma: float = 5.0
    samples_per_epoch: Optional[int] = None  # patches per epoch (2D and 3D); None: one per case (3D: 4), >= a batch
    oversample_foreground: float = 0.33
    strict: bool = False  # empty masks (background only) are errors, not warnings


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.99  # sgd
    nesterov: bool = True  # sgd
    betas: list = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: str = "plateau"  # plateau | cosine | step | poly | none
    warmup_epochs: float = 0.0  # linear warm-up (fractions of an epoch allowed)
    patience: int = 3  # plateau
    factor: float = 0.5  # plateau
    step_size: int = 30  # step
    gamma: float = 0.1  # step
    power: float = 0.9  # poly
    min_lr: float = 0.0


@dataclass
class LossConfig:
    name: str = "combo"
    kwargs: dict = field(default_factory=dict)
    deep_supervision_weights: Optional[list] = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 50
    max_steps: Optional[int] = None  # stop after this many optimiser steps
    max_minutes: Optional[float] = None  # time budget of the whole run, validation included (--budget)
    val_every: int = 1
    no_val: bool = False  # train on every case, no validation: keeps the last model only (--no-val)
    monitor: str = "dice"  # metric choosing the best checkpoint and early stopping ("loss" too)
    monitor_ema: float = 0.0  # best model (and early stopping) by an exponential moving average of the
    # monitor, ema = a * ema + (1 - a) * value (nnU-Net: 0.9; the planner's choice); 0: the raw value
    early_stop_patience: Optional[int] = 10  # validations without improvement; None: off
    grad_clip: Optional[float] = None
    accumulate: int = 1
    amp: str = "auto"  # auto (on with CUDA) | on | off
    channels_last: str = "auto"  # auto: probed on the CPU, 2D on CUDA | on (NHWC / NDHWC) | off
    sync_batchnorm: bool = False
    compile: bool = False  # torch.compile the training step (fused norm + act; eager fallback)
    seed: int = 0
    out_dir: str = "runs"
    name: Optional[str] = None  # run folder name (default: timestamp + model name)
    overwrite: bool = False
    progress: str = "bar"  # bar | quiet | json
    overlays: int = 3  # validation overlays written per validation
    tensorboard: bool = True
    device: str = "auto"
    threads: Optional[int] = None  # CPU threads for PyTorch (None: its default); plans time both

    def validate(self) -> "TrainConfig":
        """Refuse settings that cannot work, before any work (ConfigError naming the field)."""
        from unetkit.devices import resolve_device

        checks = [
            (self.epochs >= 1, "epochs", "at least 1"), (self.data.batch_size >= 1, "data.batch_size", "at least 1"),
            (self.model.spatial_dims in (2, 3), "model.spatial_dims", "2 or 3"),
            (self.model.in_channels >= 1, "model.in_channels", "at least 1"),
            (self.model.num_classes >= 1, "model.num_classes", "at least 1 (1 = binary)"),
            (0.0 <= self.data.val_fraction < 1.0, "data.val_fraction", "in [0, 1)"),
            (self.optim.lr > 0, "optim.lr", "positive"), (self.val_every >= 1, "val_every", "at least 1"),
            (self.accumulate >= 1, "accumulate", "at least 1"),
            (0.0 <= self.monitor_ema < 1.0, "monitor_ema", "in [0, 1) (0: the raw monitor; nnU-Net: 0.9)"),
            (self.progress in ("bar", "quiet", "json"), "progress", "bar, quiet or json"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "at least 1"),
            (self.optim.name.lower() in ("adam", "adamw", "sgd"), "optim.name", "adam, adamw or sgd"),
            (self.optim.name.lower() != "sgd" or not self.optim.nesterov or self.optim.momentum > 0,
             "optim.momentum", "> 0 for SGD with Nesterov momentum (or set optim.nesterov=false)"),
            (self.schedule.name in ("plateau", "cosine", "step", "poly", "none"), "schedule.name",
             "plateau, cosine, step, poly or none"),
            (all(isinstance(p, int) and p >= 1 for p in self.data.patch_size), "data.patch_size",
             "positive integers"),
        ]
        for ok, name, want in checks:
            if not ok:
                value = _get(self, name)
                raise ConfigError(f"'{name}' must be {want}, got {value!r}")
        check_target_spacing(self.data.target_spacing, self.model.spatial_dims)
        resolve_device(self.device)
        return self

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _build(cls, data, "config")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the config ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a mapping of fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def with_overrides(self, assignments: list[str]) -> "TrainConfig":
        """Apply `section.field=value` overrides (values parsed as YAML: 1e-3, [128, 128], true)."""
        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override '{item}' must look like section.field=value")
            key, raw = item.split("=", 1)
            node = data
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown config section '{part}' in override '{item}'")
                node = node[part]
            if parts[-1] not in node and not _is_free_dict(key):
                raise ConfigError(f"unknown config field '{key}' in override '{item}'")
            node[parts[-1]] = yaml.safe_load(raw)
        return TrainConfig.from_dict(data)


def check_target_spacing(value: Any, spatial_dims: int, where: str = "data.target_spacing") -> None:
    """None, or (3D only) three positive voxel sizes (D, H, W); else a ConfigError naming `where`."""
    if value is None:
        return
    if spatial_dims != 3:
        raise ConfigError(f"'{where}' applies to 3D data only (model.spatial_dims is {spatial_dims}); "
                          f"remove it or set it to null, got {value!r}")
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0 for v in value)
    if not ok:
        raise ConfigError(f"'{where}' must be three positive voxel sizes (D, H, W), e.g. [3.0, 0.8, 0.8], "
                          f"or null (train at native spacing); got {value!r}")


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _is_free_dict(key: str) -> bool:
    """Keys under free-form dicts (model.kwargs.*, loss.kwargs.*, data.normalize.*) may be new."""
    return any(key.startswith(p) for p in ("model.kwargs.", "loss.kwargs.", "data.normalize.", "data.augmentation.",
                                   "data.dataset_options."))


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"'{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(repr(u) for u in unknown)} in '{where}'; "
                          f"known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}" if where != "config" else name)
        else:
            kwargs[name] = _check_type(value, hint, f"{where}.{name}" if where != "config" else name)
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin is Union else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return value
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if base is list and isinstance(value, (list, tuple)):
            return list(value)
        if base is str and isinstance(value, bool):  # YAML 1.1 reads on / off (amp, channels_last) as booleans
            return "on" if value else "off"
        if isinstance(base, type) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    raise ConfigError(f"'{where}' expects {getattr(hint, '__name__', str(hint))}, got {value!r}")


def dump_json(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=2)
