"""Does data loading starve training? The fraction of each training step spent waiting for the
next batch, with the default augmentation pipeline, for several worker counts and model widths.

    python benchmarks/bench_dataloader.py                 # tiles 256, batch 4, ~3 min on 2 cores
    python benchmarks/bench_dataloader.py --quick

Data: random 256x256 tiles of the embedded dsb2018-nuclei image (unetkit.data.tiles.RandomTileDataset)
with `build_augmentation("default")`, through `unetkit.data.loader.make_loader` (workers "auto" =
min(4, CPUs - 1)). The step is forward + cross-entropy + backward + Adam on a U-Net. wait = time
blocked in `next(loader)`; fraction = sum(wait) / sum(wait + compute) over the timed steps; the
configurations are stepped interleaved (one step of each per round) after two warm-up steps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unet_cpu import DATA, load_nuclei  # noqa: E402

from unetkit.models import UNet  # noqa: E402


class Stepper:
    """One training configuration (model + loader) that can be advanced a step at a time, so
    configurations are measured interleaved (same background load for all)."""

    def __init__(self, loader, model) -> None:
        self.loader, self.model = loader, model.train()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.it = iter(loader)
        self.waits: list[float] = []
        self.computes: list[float] = []

    def step(self, record: bool = True) -> None:
        t0 = time.perf_counter()
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        t1 = time.perf_counter()
        x, y = batch["image"], batch["mask"][:, 0].long()
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        self.opt.step()
        t2 = time.perf_counter()
        if record:
            self.waits.append(t1 - t0)
            self.computes.append(t2 - t1)

    def summary(self) -> dict:
        total = [w + c for w, c in zip(self.waits, self.computes)]
        return {"wait_s": statistics.median(self.waits), "compute_s": statistics.median(self.computes),
                "step_s": statistics.median(total), "wait_fraction": sum(self.waits) / sum(total),
                "images_per_s": self.loader.batch_size / statistics.median(total)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--widths", default="16,32", help="first-level widths of the U-Nets to train (64 = classic)")
    ap.add_argument("--workers", default="0,auto")
    ap.add_argument("--augment", default="default")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.steps = 4
    try:
        from unetkit.data.augment import build_augmentation
        from unetkit.data.loader import auto_workers, make_loader
        from unetkit.data.tiles import RandomTileDataset
    except ImportError as err:
        sys.exit(f"unetkit.data pipeline not available yet ({err})")
    torch.manual_seed(0)
    img, mask = load_nuclei(DATA / "image.tif", DATA / "instances.tif")
    aug = build_augmentation(args.augment, spatial_dims=2, seed=0)

    # the augmentation alone, in this process: seconds per tile
    ds = RandomTileDataset(img[None], mask[None], args.tile, length=10_000, transform=aug)
    t0 = time.perf_counter()
    for i in range(16):
        ds[i]
    per_tile = (time.perf_counter() - t0) / 16
    print(f"augmentation '{args.augment}' + tiling: {1000 * per_tile:.1f} ms per {args.tile}x{args.tile} tile "
          f"({args.batch * per_tile * 1000:.0f} ms per batch of {args.batch}); auto workers = {auto_workers()}")

    configs = []
    for width in [int(w) for w in args.widths.split(",")]:
        for workers in args.workers.split(","):
            model = UNet(2, 1, 2, features=tuple(width * 2**i for i in range(5)))
            label = workers if workers != "auto" else f"auto ({auto_workers()})"
            configs.append((width, label, Stepper(make_loader(ds, batch_size=args.batch, num_workers=workers), model)))
    for _ in range(2):  # warm-up: worker start, first allocations
        for _, _, s in configs:
            s.step(record=False)
    for _ in range(args.steps):  # interleaved: one step of every configuration per round
        for _, _, s in configs:
            s.step()
    rows = []
    for width, label, s in configs:
        r = {**s.summary(), "width": width, "workers": label}
        rows.append(r)
        print(f"U-Net {width}..{width * 16}, workers {label}: step {r['step_s']:.3f} s, "
              f"wait {r['wait_s'] * 1000:.0f} ms ({100 * r['wait_fraction']:.1f}%), {r['images_per_s']:.2f} img/s")
    print()
    print("| U-Net widths | workers | step s (median) | data wait ms (median) | wait fraction | images/s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['width']}..{r['width'] * 16} | {r['workers']} | {r['step_s']:.3f} | {1000 * r['wait_s']:.0f} | "
              f"{100 * r['wait_fraction']:.1f}% | {r['images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
