"""One place that turns a device name (auto, cpu, cuda, cuda:1, mps) into a `torch.device`,
refusing up front what this machine cannot run."""
from __future__ import annotations

import re

import torch

from unetkit.errors import ConfigError

_PATTERN = re.compile(r"^(auto|cpu|mps|cuda)(:\d+)?$")


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> CUDA when available, else the CPU; a named device is checked to exist here."""
    if isinstance(requested, torch.device):
        requested = str(requested)
    name = (requested or "auto").strip().lower()
    match = _PATTERN.match(name)
    if not match or (match.group(1) in ("auto", "cpu") and match.group(2)):
        raise ConfigError(f"device '{requested}': unknown; use auto, cpu, cuda, cuda:N or mps")
    kind = match.group(1)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device '{requested}': CUDA is not available ({build}); use --device cpu "
                              "(or auto, which picks the GPU when there is one)")
        index = int(match.group(2)[1:]) if match.group(2) else None
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"device '{requested}': only {torch.cuda.device_count()} CUDA device(s) here")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device '{requested}': Apple MPS is not available here; use --device cpu")
    return torch.device(name)
