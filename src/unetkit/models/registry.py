"""Model registry: `register_model`, `create_model`, `list_models`, `model_info`.

A model built through the registry, or from a registered class, remembers its registry name
and the full keyword configuration that rebuilds it (`model.unetkit_arch`,
`model.unetkit_config`); checkpoints store both. Every such model gets the family's weight
initialisation (`unetkit.models.init.init_weights`) once it is complete.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch.nn as nn

from unetkit.models.init import init_weights
from unetkit.registry import Entry, Registry

MODELS = Registry("model")


def _bound_config(factory: Callable, args: tuple, kwargs: dict[str, Any], skip_self: bool) -> dict[str, Any]:
    sig = inspect.signature(factory)
    bound = sig.bind(*((None,) if skip_self else ()), *args, **kwargs)
    bound.apply_defaults()
    config: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        if skip_self and name == next(iter(sig.parameters)):
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            config.update(value)
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
            config[name] = value
    return config


def register_model(name: str, *, tiny: dict[str, Any] | None = None, **info: Any) -> Callable:
    """Register a model class or preset function under `name`.

    `tiny`: keyword arguments of a fast configuration used by the test-suite.
    `info`: capability flags read by tests and tools, e.g. `dims=(2, 3)`,
    `deep_supervision=True`, `onnx=True`; `paper_params`: the parameter count of the authors'
    code in its paper configuration, `paper_config`: the keyword arguments that build that
    configuration here, `paper_difference`: parameters the official code has and unetkit
    deliberately leaves out (explained in the model's docstring and the README table), so
    `count(create_model(name, **paper_config)) + paper_difference == paper_params` exactly.
    """
    info.setdefault("dims", (2, 3))
    info.setdefault("deep_supervision", True)
    info.setdefault("onnx", True)

    def decorator(factory: Callable) -> Callable:
        if isinstance(factory, type):
            _record_init(factory, name)
        MODELS.register(name, tiny=tiny, **info)(factory)
        return factory

    return decorator


def _record_init(cls: type, name: str) -> None:
    """Wrap `cls.__init__` so instances remember (name, full config)."""
    init = cls.__init__

    @functools.wraps(init)
    def wrapped(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:
            init_weights(self)  # the family's one initialisation, once the model is complete
            self.unetkit_arch = name
            self.unetkit_config = _bound_config(init, args, kwargs, skip_self=True)

    cls.__init__ = wrapped


def create_model(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model: `create_model("unet", spatial_dims=3, features=(8, 16, 32))`.

    `pretrained`: published weights to start from (path, URL or known name; see
    `unetkit.models.pretrained.load_pretrained`); the report is kept as `model.pretrained_report`.
    The weights are not part of the model's configuration (checkpoints hold the trained ones).
    """
    entry = MODELS.check_kwargs(name, kwargs)
    model = entry.factory(**kwargs)
    if getattr(model, "unetkit_arch", None) is None:  # a preset assembling unregistered parts (hybrid)
        init_weights(model)
    if not isinstance(entry.factory, type):  # a preset: remember the preset and its arguments
        model.unetkit_arch = name
        model.unetkit_config = _bound_config(entry.factory, (), kwargs, skip_self=False)
    if pretrained:
        from unetkit.models.pretrained import load_pretrained

        model.pretrained_report = load_pretrained(model, pretrained)
    return model


def min_input_size(model: nn.Module) -> int:
    """The smallest side a same-padding model takes without running out of pixels: its encoder's
    total stride (1 when unknown, e.g. valid-padding models that mirror their input to a valid size)."""
    return max(min_input_sizes(model))


def min_input_sizes(model: nn.Module) -> tuple[int, ...]:
    """`min_input_size` per axis: an anisotropic U-Net (per-axis `strides`) pools a thick axis
    less, so it needs fewer voxels along it."""
    dims = int(getattr(model, "spatial_dims", 2) or 2)
    if getattr(model, "padding", "same") == "valid":
        return (1,) * dims
    encoder = getattr(model, "encoder", None)
    axis_strides = getattr(encoder, "axis_strides", None)
    if axis_strides:
        total = tuple(int(v) for v in axis_strides[-1])
    else:
        strides = list(getattr(encoder, "strides", None) or [1])
        total = (int(strides[-1]),) * dims
    divisors = getattr(model, "size_divisors", None) or (int(getattr(model, "size_divisor", 1) or 1),) * dims
    return tuple(max(t, int(d), 1) for t, d in zip(total, divisors))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern."""
    return MODELS.list(pattern)


def model_info(name: str) -> Entry:
    """The registry entry: factory, tiny test configuration and capability flags."""
    return MODELS.entry(name)
