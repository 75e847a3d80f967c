"""The search space: genes over what the model registry already builds.

A point of the space is a small dict of genes, e.g.

    {"family": "unet", "depth": 4, "base": 16, "mult": 2.0, "down": "maxpool", "up": "linear"}

and `to_candidate(genes)` turns it into an ordinary registry configuration (`Candidate`: a model
name and its keyword arguments), so the chosen result is a plain `create_model(name, **kwargs)`
and its model file is like any other.

Families (block type x decoder), each over the knobs its registry model has:

| family | registry model | block | decoder | knobs |
|---|---|---|---|---|
| unet | `unet` | plain double conv | U-Net | depth, base, mult, down (maxpool / conv), up |
| unet++ | `unet++` | plain double conv | nested U-Net++ | depth, base, mult, up |
| attention-unet | `attention-unet` | plain double conv | attention-gated U-Net | depth, base, mult, up |
| mobile-unet | `mobile-unet` | inverted residual (depthwise separable) | separable U-Net | width, depth, up |
| resnet-unet | `hybrid` (resnet encoder) | residual bottleneck | U-Net | width, stages, up |

`up` is "transpose" (2x2 up-convolution) or "nearest" / "linear" (interpolation + 1x1 conv).
Widths per level are `base * mult**level` rounded to a multiple of 4. A U-Net++ of depth L+1 is
the network that `UNetPlusPlus.prune(L)` gives (the pruning level as depth).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch.nn as nn

from unetkit.models.registry import create_model

UP_MODES = ("transpose", "nearest", "linear")

# gene -> allowed values, per family (the order of values is the order used for mutation steps)
FAMILIES: dict[str, dict[str, tuple]] = {
    "unet": {"depth": (3, 4, 5), "base": (8, 12, 16, 24, 32), "mult": (1.5, 2.0),
             "down": ("maxpool", "conv"), "up": UP_MODES},
    "unet++": {"depth": (3, 4), "base": (8, 12, 16, 24), "mult": (1.5, 2.0), "up": UP_MODES},
    "attention-unet": {"depth": (3, 4, 5), "base": (8, 12, 16, 24), "mult": (1.5, 2.0), "up": UP_MODES},
    "mobile-unet": {"width": (0.35, 0.5, 0.75, 1.0), "depth": (3, 4, 5), "up": UP_MODES},
    "resnet-unet": {"width": (8, 16, 24), "stages": (2, 3), "blocks": (1, 2), "up": UP_MODES},
}

# the registry's hand-picked small models, written as genes of the space (same architectures;
# `reference_name` gives their registry names back)
REFERENCES: dict[str, dict[str, Any]] = {
    "unet-lite": {"family": "unet", "depth": 5, "base": 16, "mult": 2.0, "down": "maxpool", "up": "linear"},
    "unet-realtime": {"family": "unet", "depth": 4, "base": 8, "mult": 2.0, "down": "maxpool", "up": "nearest"},
    "mobile-unet": {"family": "mobile-unet", "width": 1.0, "depth": 5, "up": "linear"},
}


def level_widths(base: int, mult: float, depth: int) -> list[int]:
    """Channels per level: base * mult**i rounded to a multiple of 4 (at least 4)."""
    return [max(4, int(round(base * mult**i / 4.0)) * 4) for i in range(depth)]


@dataclass(frozen=True)
class Candidate:
    """A registry configuration: `create_model(arch, spatial_dims=2, in_channels, num_classes, **kwargs)`."""

    arch: str
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    genes: dict = field(default_factory=dict, hash=False, compare=False)
    key: str = ""  # stable identity: the JSON of (arch, kwargs)

    def build(self, in_channels: int = 1, num_classes: int = 1) -> nn.Module:
        return create_model(self.arch, spatial_dims=2, in_channels=in_channels, num_classes=num_classes,
                            **self.kwargs)

    @property
    def short_id(self) -> str:
        return hashlib.sha1(self.key.encode()).hexdigest()[:10]

    def label(self) -> str:
        """A short readable description, e.g. 'unet d4 16x2.0 maxpool/linear'."""
        return genes_label(self.genes) if self.genes else f"{self.arch} {json.dumps(self.kwargs)}"

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "kwargs": self.kwargs, "genes": self.genes, "key": self.key}


def candidate_key(arch: str, kwargs: dict[str, Any]) -> str:
    return json.dumps({"arch": arch, "kwargs": kwargs}, sort_keys=True)


def to_candidate(genes: dict[str, Any]) -> Candidate:
    """The registry configuration of a point of the space (raises ValueError on a bad gene)."""
    check_genes(genes)
    family = genes["family"]
    if family == "unet":
        arch = "unet"
        kwargs = {"features": level_widths(genes["base"], genes["mult"], genes["depth"]),
                  "down_mode": genes["down"], "up_mode": genes["up"]}
    elif family in ("unet++", "attention-unet"):
        arch = family
        kwargs = {"features": level_widths(genes["base"], genes["mult"], genes["depth"]), "up_mode": genes["up"]}
    elif family == "mobile-unet":
        arch = "mobile-unet"
        kwargs = {"width_mult": genes["width"], "depth": genes["depth"], "up_mode": genes["up"]}
    else:  # resnet-unet: the ResNet bottleneck encoder under the U-Net decoder
        arch = "hybrid"
        kwargs = {"encoder": "resnet", "decoder": "unet",
                  "encoder_kwargs": {"blocks": [genes["blocks"]] * genes["stages"], "width": genes["width"]},
                  "decoder_kwargs": {"up_mode": genes["up"]}}
    return Candidate(arch, kwargs, dict(genes), candidate_key(arch, kwargs))


def check_genes(genes: dict[str, Any]) -> None:
    family = genes.get("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    want = FAMILIES[family]
    missing = sorted(set(want) - set(genes))
    extra = sorted(set(genes) - set(want) - {"family"})
    if missing or extra:
        raise ValueError(f"genes of family '{family}' must be {sorted(want)}; missing {missing}, unknown {extra}")
    for name, values in want.items():
        if genes[name] not in values:
            raise ValueError(f"gene {name}={genes[name]!r} of family '{family}' not in {list(values)}")


def genes_label(genes: dict[str, Any]) -> str:
    f = genes["family"]
    if f in ("unet", "unet++", "attention-unet"):
        down = f" {genes['down']}" if "down" in genes else ""
        return f"{f} d{genes['depth']} {genes['base']}x{genes['mult']:g}{down} up:{genes['up']}"
    if f == "mobile-unet":
        return f"{f} w{genes['width']:g} d{genes['depth']} up:{genes['up']}"
    return f"{f} w{genes['width']} {genes['stages']}x{genes['blocks']} up:{genes['up']}"


def reference_name(genes: dict[str, Any]) -> str | None:
    """The registry name of a hand-picked small model with these genes, if any."""
    for name, ref in REFERENCES.items():
        if ref == genes:
            return name
    return None


class SearchSpace:
    """The families to search (default all) and the moves of the search through them."""

    def __init__(self, families: list[str] | tuple[str, ...] | None = None) -> None:
        families = list(families or FAMILIES)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                             f"choose from {sorted(FAMILIES)}")
        self.families = families

    def size(self) -> int:
        total = 0
        for f in self.families:
            n = 1
            for values in FAMILIES[f].values():
                n *= len(values)
            total += n
        return total

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every point, family by family (a few hundred)."""
        import itertools

        for f in self.families:
            names = list(FAMILIES[f])
            for values in itertools.product(*(FAMILIES[f][n] for n in names)):
                yield {"family": f, **dict(zip(names, values))}

    def sample(self, rng: random.Random) -> dict[str, Any]:
        f = rng.choice(self.families)
        return {"family": f, **{n: rng.choice(v) for n, v in FAMILIES[f].items()}}

    def mutate(self, genes: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """One move: usually one gene to a neighbouring value (or any value for categorical genes);
        sometimes (1 in 8) a switch of family keeping the genes both families share."""
        if len(self.families) > 1 and rng.random() < 0.125:
            f = rng.choice([x for x in self.families if x != genes["family"]])
            new = {"family": f}
            for n, values in FAMILIES[f].items():
                new[n] = genes[n] if genes.get(n) in values else rng.choice(values)
            return new
        new = dict(genes)
        name = rng.choice(list(FAMILIES[genes["family"]]))
        values = FAMILIES[genes["family"]][name]
        i = values.index(genes[name])
        if isinstance(values[0], str):
            new[name] = rng.choice([v for v in values if v != genes[name]])
        else:  # ordered: step to a neighbour
            steps = [j for j in (i - 1, i + 1) if 0 <= j < len(values)]
            new[name] = values[rng.choice(steps)]
        return new

    def edge_cases(self) -> list[dict[str, Any]]:
        """Per family: every gene at its smallest, and every gene at its largest value."""
        out = []
        for f in self.families:
            out.append({"family": f, **{n: v[0] for n, v in FAMILIES[f].items()}})
            out.append({"family": f, **{n: v[-1] for n, v in FAMILIES[f].items()}})
        return out

    def references(self) -> dict[str, dict[str, Any]]:
        return {n: g for n, g in REFERENCES.items() if g["family"] in self.families}
