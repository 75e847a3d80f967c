"""Model files: weights in safetensors, with the architecture and its configuration in the
file's metadata, so a model rebuilds from the file alone and loading never runs code from it.

Metadata keys: `format` ("unetkit-model"), `arch`, `config` (JSON), `unetkit_version`,
`torch_version`, `extra` (JSON: e.g. the preprocessing a predictor must apply).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unetkit.errors import ConfigError, UnetkitError
from unetkit.io.atomic import atomic_path

FORMAT = "unetkit-model"


class CheckpointError(UnetkitError, ValueError):
    """A model file that cannot be read, or a model that cannot be saved."""


def model_record(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(registry name, config) remembered by a model built from the registry."""
    arch = getattr(model, "unetkit_arch", None)
    config = getattr(model, "unetkit_config", None)
    if arch is None or config is None:
        raise CheckpointError(
            f"{type(model).__name__} was not built from the unetkit registry; "
            "build it with unetkit.create_model(...) or a registered class so it can be rebuilt"
        )
    return arch, config


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError as err:
        raise CheckpointError(f"{what} is not JSON-serialisable ({err}); use names, not objects") from None


def save_model(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
               overwrite: bool = False, *, state: dict[str, torch.Tensor] | None = None,
               quantization: dict[str, Any] | None = None) -> Path:
    """Write `model` (weights + arch + config + `extra`) to a `.safetensors` file, atomically.

    The quantised writers (`save_model_4bit`, `save_model_int8`) pass their own tensors as `state`
    and their `quantization` record (stored as metadata; `load_model` reads it back)."""
    from unetkit import __version__

    arch, config = model_record(model)
    metadata = {
        "format": FORMAT,
        "arch": arch,
        "config": _json(config, f"config of '{arch}'"),
        "extra": _json(extra or {}, "extra"),
        "unetkit_version": __version__,
        "torch_version": torch.__version__,
    }
    if quantization is not None:
        metadata["quantization"] = json.dumps(quantization, sort_keys=True)
    if state is None:
        state = model.state_dict()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a model file: arch, config, extra, versions."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":  # torch.save's zip format: a training checkpoint, not a model file
        raise CheckpointError(f"{path}: is a training checkpoint (checkpoints/*.pt, used by --resume), not a "
                              f"model file; use the run folder's best.safetensors or last.safetensors")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors model file ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a unetkit model file (format={meta.get('format')!r})")
    try:
        return {**meta, "config": json.loads(meta["config"]), "extra": json.loads(meta.get("extra", "{}"))}
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: damaged metadata ({err})") from None


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               expected_arch: str | None = None) -> nn.Module:
    """Rebuild the model stored in `path` and load its weights (model returned in eval mode).

    The metadata read from the file is kept on the model as `model.unetkit_meta`.
    """
    from unetkit.models.registry import create_model

    path = Path(path)
    meta = read_metadata(path)
    if expected_arch is not None and meta["arch"] != expected_arch:
        raise CheckpointError(f"{path}: holds a '{meta['arch']}' model, expected '{expected_arch}'")
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: weights cannot be read ({err})") from None
    int8 = None
    if "quantization" in meta:
        try:
            record = json.loads(meta["quantization"])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: damaged quantization record ({err})") from None
        if isinstance(record, dict) and record.get("scheme") == "int8-onednn-static":
            int8 = record  # int8 weights run as they are (export.onednn_int8.save_model_int8)
        else:  # 4-bit weight-only file (export.quantize.save_model_4bit): dequantise
            from unetkit.export.quantize import dequantize_state_4bit

            try:
                state = dequantize_state_4bit(state, record)
            except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as err:
                raise CheckpointError(f"{path}: damaged 4-bit weights ({err})") from None
    try:
        model = create_model(meta["arch"], **meta["config"])
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot rebuild its '{meta['arch']}' model ({err})") from None
    if int8 is not None:
        if torch.device(map_location).type != "cpu":
            raise CheckpointError(f"{path}: is an int8 (oneDNN) model, which runs on the CPU only")
        from unetkit.errors import UnsupportedError
        from unetkit.export.onednn_int8 import int8_model_from_state

        try:
            model = int8_model_from_state(model, state, int8)
        except UnsupportedError as err:
            raise UnsupportedError(f"{path}: {err}") from None
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{path}: int8 weights do not fit the '{meta['arch']}' model ({err})") from None
    else:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not fit the '{meta['arch']}' model ({err})") from None
    model.to(map_location).eval()
    model.unetkit_meta = meta
    return model


def update_extra(path: str | os.PathLike, updates: dict[str, Any]) -> Path:
    """Merge `updates` into a model file's `extra` metadata; the weights are copied unchanged.

    The file is rewritten atomically (a crash leaves the previous file intact).
    """
    path = Path(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: weights cannot be read ({err})") from None
    raw = {k: v for k, v in meta.items() if k not in ("config", "extra")}
    raw["config"] = _json(meta["config"], f"config of '{meta.get('arch')}'")
    raw["extra"] = _json({**meta["extra"], **updates}, "extra")
    with atomic_path(path, overwrite=True) as tmp:
        save_file(state, str(tmp), metadata=raw)
    return path
