"""`make_loader`: a DataLoader with sensible worker, pinning and seeding defaults.

Workers: "auto" -> min(4, CPU count - 1) (0 on a single core). Memory is pinned when CUDA is
available; workers persist across epochs. Each worker seeds numpy and `random` from torch's per-worker
seed and calls `dataset.reseed(seed)` when the dataset has one, so random tiles and augmentations
differ between workers and epochs while a fixed torch seed keeps a run reproducible.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def auto_workers() -> int:
    """min(4, CPUs - 1), 0 on a single-core machine."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


def split_seed(seed: int, streams: int = 2) -> list[int]:
    """`streams` independent seeds from one (numpy's SeedSequence.spawn).

    A dataset that draws its own random numbers (where a patch goes, whether it is centred on the
    foreground) and also reseeds an augmentation must give the two different streams: seeded alike,
    the first draws coincide, so every foreground patch got the same flip (in CT, a z-flip the model
    then learnt as a cue for "tumour", never seen at prediction).
    """
    children = np.random.SeedSequence(int(seed) % 2**63).spawn(streams)
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed numpy/random and the dataset's own generators from torch's worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = getattr(info, "dataset", None)
    while dataset is not None:
        if hasattr(dataset, "reseed"):
            dataset.reseed(seed)
            break
        dataset = getattr(dataset, "dataset", None)  # torch Subset and similar wrappers


def make_loader(dataset: Dataset, batch_size: int = 8, shuffle: bool = True, num_workers: int | str = "auto",
                sampler: Sampler | None = None, distributed: bool = False, drop_last: bool = False,
                seed: int = 0, **kwargs: Any) -> DataLoader:
    """A DataLoader over `dataset` (samples are dicts of tensors, collated by key).

    sampler: e.g. `rare_class_sampler(...)`; it replaces shuffling. distributed=True wraps the dataset
    in a DistributedSampler (the trainer calls `loader.sampler.set_epoch(epoch)`).
    """
    workers = auto_workers() if num_workers == "auto" else int(num_workers)
    if distributed and sampler is None:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    options: dict[str, Any] = dict(
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
    )
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=2)
    options.update(kwargs)
    return DataLoader(dataset, **options)
