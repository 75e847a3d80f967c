"""Reproducible data order and augmentation, independent of worker count and process count.

Each sample's random state is a pure function of (seed, epoch, index): the sampler yields
`(epoch, index)` keys and `SeededDataset` reseeds numpy, `random`, torch (and the dataset's
dataset, when it has `reseed`) before producing the sample. A resumed run, a run with
other `num_workers`, and a DDP run over the same global batch all see identical batches.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across processes and Python runs)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
               .astype(np.uint64).dot(np.array([1, 2**32], dtype=np.uint64)) & ((1 << 63) - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler(Sampler):
    """Shuffled (or ordered) indices split across ranks like DistributedSampler, yielding
    `(epoch, index)`. With `drop_last` each rank gets `len // world_size` samples; without it the
    ranks share every sample once (uneven counts; used for validation, so no image counts twice)."""

    def __init__(self, length: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.per_rank = length // world_size if drop_last else len(range(rank, length, world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5EED))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.drop_last:
            order = order[: self.per_rank * self.world_size]
        for index in order[self.rank::self.world_size]:
            yield self.epoch, index


class SeededDataset(Dataset):
    """Wraps a dataset so that item `(epoch, index)` is produced under seed(seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = derive_seed(self.seed, epoch, index)
        seed_everything(s)
        reseed = getattr(self.dataset, "reseed", None)  # datasets with their own generators
        if callable(reseed):
            reseed(s)
        return self.dataset[index]
