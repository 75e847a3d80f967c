"""Training checkpoints: everything a killed run needs to continue exactly.

`{model, optimizer, schedule, scaler, epoch, step, history, best, rng, config}` saved with
torch.save through a temporary file and a rename, and loaded with `weights_only=True`
(plain tensors and containers only: loading never runs code from the file).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.io.atomic import atomic_path
from unetkit.io.checkpoint import CheckpointError


def rng_state() -> dict[str, Any]:
    """The process's RNG states in weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _python_state_to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (a crash leaves the previous file intact)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint here")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupted or foreign file
        raise CheckpointError(f"{path}: not a readable training checkpoint ({err})") from None
