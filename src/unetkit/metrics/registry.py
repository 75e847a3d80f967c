"""Metric registry: `METRICS`, `register_metric`, `create_metric(name, **kw)`, `list_metrics(pattern)`.

Entries carry `kind`: "counts" metrics take confusion counts `(..., 4)` and return `(...)`;
"surface" metrics take two boolean masks (and `spacing`) and return a float.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from unetkit.registry import Registry

METRICS = Registry("metric")


def register_metric(name: str, kind: str, **info: Any) -> Callable:
    """Decorator registering a metric function with its `kind` ("counts" or "surface")."""
    return METRICS.register(name, kind=kind, **info)


def create_metric(name: str, **kwargs: Any) -> Callable:
    """The metric function with keyword arguments bound, e.g. `create_metric("hd95", spacing=(2, 1))`."""
    return functools.partial(METRICS.entry(name).factory, **kwargs)


def list_metrics(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered metric names matching a glob pattern (optionally of one kind)."""
    return [n for n in METRICS.list(pattern) if kind is None or METRICS.entry(n).info["kind"] == kind]
