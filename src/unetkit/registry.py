"""A small name -> factory registry shared by models, losses and metrics.

    reg = Registry("model")
    @reg.register("unet", tiny={"features": (8, 16)}, dims=(2, 3))
    class UNet(nn.Module): ...
    reg.create("unet", spatial_dims=3)
    reg.list("unet*")
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from unetkit.errors import ConfigError


class UnknownNameError(ConfigError, KeyError):
    """A name that is not registered (a ConfigError for the CLI, a KeyError for older callers)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry:
    """One registered factory and what tests and tools may read about it."""

    name: str
    factory: Callable[..., Any]
    tiny: dict[str, Any] = field(default_factory=dict)  # kwargs of a fast test configuration
    info: dict[str, Any] = field(default_factory=dict)  # capability flags: dims, deep_supervision, onnx, ...
    description: str = ""


class Registry:
    """Maps names to factories (classes or functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, tiny: dict[str, Any] | None = None, **info: Any) -> Callable:
        """Decorator registering a class or function under `name`."""

        def decorator(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            doc = (factory.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, dict(tiny or {}), info, doc[0] if doc else "")
            return factory

        return decorator

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UnknownNameError(f"unknown {self.kind} '{name}'; {hint}registered: {known}") from None

    def check_kwargs(self, name: str, kwargs: dict[str, Any]) -> Entry:
        """The entry of `name`, after checking its factory takes every keyword in `kwargs`."""
        entry = self.entry(name)
        try:
            params = inspect.signature(entry.factory).parameters
        except (TypeError, ValueError):
            return entry
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return entry
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            known = ", ".join(p for p in params if p != "self")
            raise ConfigError(f"{self.kind} '{name}' has no option {', '.join(repr(u) for u in unknown)}; "
                              f"its options: {known}")
        return entry

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.check_kwargs(name, kwargs).factory(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries
