"""Optimisers and learning-rate schedules (plateau, cosine, step, poly), each with linear warm-up.

The schedule is one small class stepped every optimiser step (and told each validation
result for reduce-on-plateau); its `state_dict` makes resumed runs continue exactly.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from unetkit.errors import ConfigError
from unetkit.training.config import OptimConfig, ScheduleConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    try:
        return _build_optimizer(params, cfg)
    except ValueError as err:  # torch's own argument checks (betas, momentum, ...)
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"optim: {err}") from None


def _build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    name = cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimiser '{cfg.name}' in 'optim.name'; choose adam, adamw or sgd")


class LRSchedule:
    """lr(step) = base_lr * warmup(step) * decay(step) * plateau_factor."""

    NAMES = ("plateau", "cosine", "step", "poly", "none")

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int,
                 epochs: int) -> None:
        if cfg.name not in self.NAMES:
            raise ConfigError(f"unknown schedule '{cfg.name}' in 'schedule.name'; choose one of {self.NAMES}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, steps_per_epoch * epochs)
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self.plateau_factor = 1.0
        self.best: float | None = None
        self.bad_validations = 0
        self._apply()

    def multiplier(self, step: int) -> float:
        cfg = self.cfg
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        progress = min(1.0, max(0, step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if cfg.name == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * progress))
        elif cfg.name == "poly":
            decay = (1 - progress) ** cfg.power
        elif cfg.name == "step":
            decay = cfg.gamma ** (step // (cfg.step_size * self.steps_per_epoch))
        else:
            decay = 1.0
        return warm * decay * self.plateau_factor

    def _apply(self) -> None:
        m = self.multiplier(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = max(self.cfg.min_lr, base * m)

    def step(self) -> None:
        """Call after each optimiser step."""
        self.step_count += 1
        self._apply()

    def validation_result(self, value: float, higher_is_better: bool) -> None:
        """Reduce-on-plateau: multiply lr by `factor` after `patience` validations without improvement."""
        if self.cfg.name != "plateau" or not math.isfinite(value):
            return
        score = value if higher_is_better else -value
        if self.best is None or score > self.best + 1e-8:
            self.best, self.bad_validations = score, 0
        else:
            self.bad_validations += 1
            if self.bad_validations > self.cfg.patience:
                self.plateau_factor *= self.cfg.factor
                self.bad_validations = 0
                self._apply()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def epochs(self) -> int:
        """The epoch the schedule ends with (decays to its end)."""
        return self.total_steps // self.steps_per_epoch

    def end_at(self, epochs: int) -> None:
        """End the schedule after `epochs` epochs instead (a time budget that would cut it short):
        the decay is re-spread over the new length from the current step on."""
        self.total_steps = max(1, self.steps_per_epoch * epochs)
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "plateau_factor": self.plateau_factor,
                "best": self.best, "bad_validations": self.bad_validations, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_factor = float(state["plateau_factor"])
        self.best = state["best"]
        self.bad_validations = int(state["bad_validations"])
        self.total_steps = int(state.get("total_steps", self.total_steps))  # a schedule fitted to a budget
        self._apply()
