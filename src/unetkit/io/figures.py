"""Figures written as PNG files: matplotlib's object API (no pyplot state, the user's backend is
left alone) and an atomic write."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unetkit.io.atomic import atomic_path


def new_figure(figsize: tuple[float, float], dpi: int = 100) -> Any:
    """A matplotlib Figure that belongs to no pyplot window."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def save_figure(fig: Any, path: str | os.PathLike, overwrite: bool = True, dpi: int | None = None) -> Path:
    """Write `fig` to `path` as PNG through a temporary file (never half-written)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi or fig.dpi)
    return path
