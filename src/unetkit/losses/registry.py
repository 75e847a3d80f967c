"""Loss registry: `LOSSES`, `create_loss(name, **kw)`, `list_losses(pattern)`, `check_loss_fits`."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from unetkit.errors import ConfigError
from unetkit.registry import Registry

LOSSES = Registry("loss")


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss module, e.g. `create_loss("dice", include_background=False)`."""
    return LOSSES.create(name, **kwargs)


def list_losses(pattern: str = "*") -> list[str]:
    """Names of registered losses matching a glob pattern."""
    return LOSSES.list(pattern)


def check_loss_fits(loss: nn.Module | str, num_classes: int) -> None:
    """Raise ConfigError when `loss` (a module or registered name) cannot train a K-channel output.

    Checks the loss mode against K (binary needs K == 1, multiclass K >= 2) and the length of
    `class_weights`; wrappers (deep supervision, boundary) check their inner losses too.
    """
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss '{loss}'; registered: {', '.join(list_losses())}")
        loss = create_loss(loss)
    check = getattr(loss, "check_num_classes", None)
    if check is not None:
        check(num_classes)
