"""The models a server offers: model files (or run folders) loaded once, with what `/models` reports."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from unetkit.errors import ConfigError
from unetkit.inference.overlay import DEFAULT_COLORS
from unetkit.inference.predictor import Predictor

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RUN_FILES = ("best.safetensors", "last.safetensors")


@dataclass
class ServedModel:
    """One model: its `name` in URLs, the `path` it came from, a shared `predictor` and `info`."""

    name: str
    path: Path
    predictor: Predictor
    info: dict[str, Any] = field(default_factory=dict)


def resolve_model_path(path: str | Path) -> Path:
    """A model file, or a run folder's best (else last) model file."""
    path = Path(path)
    if path.is_dir():
        for name in RUN_FILES:
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"{path}: run folder holds no {' or '.join(RUN_FILES)}")
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file or run folder")
    return path


def default_name(path: Path) -> str:
    """`runs/demo/last.safetensors` -> `demo`; `models/cells.safetensors` -> `cells`."""
    stem = path.name.split(".")[0]
    if stem in ("best", "last") and path.parent.name:
        stem = path.parent.name
    name = re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip("._-") or "model"
    return name[:64]


def parse_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """`PATH` or `NAME=PATH` -> (name, model file); names are unique and URL-safe."""
    pairs: list[tuple[str, Path]] = []
    for spec in specs:
        name = None
        if "=" in spec and not Path(spec).exists():
            name, spec = spec.split("=", 1)
            if not NAME.match(name):
                raise ConfigError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        path = resolve_model_path(spec)
        pairs.append((name or default_name(path), path))
    seen: dict[str, Path] = {}
    for name, path in pairs:
        if name in seen:
            raise ConfigError(f"{path} and {seen[name]} would both be served as '{name}'; "
                              f"name them with NAME=PATH")
        seen[name] = path
    if not pairs:
        raise ConfigError("no model given")
    return pairs


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def class_table(predictor: Predictor) -> list[dict[str, Any]]:
    """The label values a mask can hold: id, name and display colour (background first).

    Binary: 0, 1; multi-class: 0..K-1; multi-label: 0 and k + 1 for channel k (as drawn in overlays).
    """
    names = predictor.class_names
    if predictor.mode == "multilabel":
        count = predictor.num_classes + 1
        names = ["background", *(names or [])] if names and len(names) == predictor.num_classes else names
    else:
        count = 2 if predictor.mode == "binary" else predictor.num_classes
    table = []
    for index in range(count):
        name = names[index] if names and index < len(names) else ("background" if index == 0 else f"class_{index}")
        color = "#000000" if index == 0 else "#%02x%02x%02x" % tuple(
            round(255 * c) for c in DEFAULT_COLORS[(index - 1) % len(DEFAULT_COLORS)])
        table.append({"id": index, "name": name, "color": color})
    return table


def load_models(specs: Sequence[str], device: str = "auto", batch_size: int = 4) -> dict[str, ServedModel]:
    """Load every model once (safetensors: no code runs) and describe it for `/models`."""
    served: dict[str, ServedModel] = {}
    for name, path in parse_specs(specs):
        predictor = Predictor.from_checkpoint(path, device=device, batch_size=batch_size, source=name)
        meta = predictor.model.unetkit_meta
        info = {
            "name": name, "file": path.name, "sha256": file_sha256(path), "arch": meta.get("arch"),
            "dims": predictor.spatial_dims, "in_channels": predictor.in_channels,
            "num_classes": predictor.num_classes, "mode": predictor.mode, "threshold": predictor.threshold,
            "classes": class_table(predictor), "normalisation": predictor.preprocess,
            "roi_size": list(predictor.roi_size), "spacing": list(predictor.spacing) if predictor.spacing else None,
            "valid_padding": predictor.valid_mode,
        }
        served[name] = ServedModel(name, path, predictor, info)
    return served
