"""Speed of the U-Net weight map on 512x512 masks: cropped (fast) vs brute force.

    python benchmarks/bench_weight_maps.py [--repeats 5]

Brute force: one full-image distance transform per object, stacked and sorted (the common
recipe). "exact" is `unet_weight_map(tol=0)` (full-image transforms, two running minima);
"fast" is the default (tol=1e-3: transforms cropped to each object's box + margin).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage
from skimage.draw import disk

from unetkit.losses import separate_touching, unet_weight_map
from unetkit.losses.weight_maps import _balanced_weights, object_labels

NUCLEI = Path("/work/shared/data/dsb2018-nuclei/instances.tif")


def brute_force(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    objects = separate_touching(object_labels(labels))
    ids = np.unique(objects[objects > 0])
    d = np.sort(np.stack([ndimage.distance_transform_edt(objects != i) for i in ids]), axis=0)
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma ** 2))
    return (_balanced_weights(objects > 0, "balanced") + np.where(objects == 0, border, 0)).astype(np.float32)


def synthetic(count: int, radius: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((512, 512), np.int32)
    for i in range(1, count + 1):
        rr, cc = disk(tuple(rng.integers(0, 512, 2)), rng.integers(*radius), shape=labels.shape)
        labels[rr, cc] = i
    return labels


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    masks = {}
    if NUCLEI.exists():
        import tifffile

        masks["dsb2018 nuclei (instances)"] = tifffile.imread(NUCLEI)
    masks["synthetic 125 discs r 4-12"] = synthetic(125, (4, 12))
    masks["synthetic 400 discs r 3-8"] = synthetic(400, (3, 8), seed=1)
    masks["synthetic binary 125 discs"] = synthetic(125, (4, 12), seed=2) > 0
    print(f"{'mask (512x512)':30s} {'objects':>7s} {'fast ms':>9s} {'exact ms':>9s} {'brute ms':>9s} "
          f"{'speed-up':>8s} {'max |fast-brute|':>16s}")
    for name, labels in masks.items():
        n_objects = len(np.unique(object_labels(labels))) - 1
        fast = median_seconds(lambda: unet_weight_map(labels), args.repeats)
        exact = median_seconds(lambda: unet_weight_map(labels, tol=0.0), max(1, args.repeats // 2))
        brute = median_seconds(lambda: brute_force(labels), max(1, args.repeats // 2))
        error = np.abs(unet_weight_map(labels) - brute_force(labels)).max()
        print(f"{name:30s} {n_objects:7d} {fast * 1e3:9.1f} {exact * 1e3:9.1f} {brute * 1e3:9.1f} "
              f"{brute / fast:7.0f}x {error:16.2e}")


if __name__ == "__main__":
    main()
