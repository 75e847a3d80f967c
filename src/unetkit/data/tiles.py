"""`RandomTileDataset`: random tiles from one large image (e.g. train on one region of dsb2018-nuclei).

Tiles lie fully inside `region = (y0, y1, x0, x1)` (half-open, default: the whole image), so a
held-out region stays unseen. Items are the same dicts as `SegmentationDataset`'s.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from unetkit.data.loader import split_seed
from unetkit.data.dataset import to_sample
from unetkit.errors import ConfigError


class RandomTileDataset(Dataset):
    """`length` random `tile_size` crops of `image (C, H, W)`, `mask (1, H, W)` [, `weight (1, H, W)`].

    image should already be normalised (float32). transform: as in `SegmentationDataset`.
    foreground_fraction: this share of tiles is centred on a random foreground pixel (if any).
    Tiles are drawn from `self.rng`; `make_loader` reseeds it in every worker (see `reseed`).
    """

    def __init__(self, image: np.ndarray, mask: np.ndarray, tile_size: int | tuple[int, int], length: int,
                 transform: Callable | None = None, region: tuple[int, int, int, int] | None = None,
                 weight: np.ndarray | None = None, instances: np.ndarray | None = None,
                 foreground_fraction: float = 0.0, seed: int = 0) -> None:
        self.image = np.asarray(image, dtype=np.float32)
        self.mask = np.asarray(mask)
        if self.mask.ndim == 2:
            self.mask = self.mask[None]
        h, w = self.image.shape[-2:]
        if self.mask.shape[-2:] != (h, w):
            raise ConfigError(f"mask {self.mask.shape} and image {self.image.shape} sizes differ")
        self.tile = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
        self.region = tuple(region) if region is not None else (0, h, 0, w)
        y0, y1, x0, x1 = self.region
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ConfigError(f"region {self.region} is not inside the {h}x{w} image")
        if y1 - y0 < self.tile[0] or x1 - x0 < self.tile[1]:
            raise ConfigError(f"tile {self.tile} does not fit in region {self.region}")
        self.length = int(length)
        self.transform = transform
        self.weight = weight
        self.instances = instances
        self.foreground_fraction = foreground_fraction
        region_fg = self.mask[0, y0:y1, x0:x1] > 0
        self._fg = np.argwhere(region_fg) + np.array([y0, x0])
        self.rng = np.random.default_rng(split_seed(seed)[0])  # not the stream of a transform seeded alike

    def __len__(self) -> int:
        return self.length

    def reseed(self, seed: int) -> None:
        own, augmentation = split_seed(seed)  # independent streams (see split_seed)
        self.rng = np.random.default_rng(own)
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(augmentation)

    def corner(self) -> tuple[int, int]:
        """A random top-left corner whose tile lies inside the region."""
        y0, y1, x0, x1 = self.region
        th, tw = self.tile
        if len(self._fg) and self.rng.random() < self.foreground_fraction:
            cy, cx = self._fg[self.rng.integers(len(self._fg))]
            return (int(np.clip(cy - th // 2, y0, y1 - th)), int(np.clip(cx - tw // 2, x0, x1 - tw)))
        return int(self.rng.integers(y0, y1 - th + 1)), int(self.rng.integers(x0, x1 - tw + 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        y, x = self.corner()
        box = (slice(None), slice(y, y + self.tile[0]), slice(x, x + self.tile[1]))
        image, mask = self.image[box], self.mask[box]
        weight = self.weight[box] if self.weight is not None else None
        instances = self.instances[box[1:]] if self.instances is not None else None
        if self.transform is not None:
            out = self.transform(image, mask, weight=weight, instances=instances)
            image, mask, weight, instances = out["image"], out["mask"], out.get("weight"), out.get("instances")
        return to_sample(image, mask, name=f"tile_{y}_{x}", weight=weight, instances=instances,
                         want_instances=self.instances is not None)
