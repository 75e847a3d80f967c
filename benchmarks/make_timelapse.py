"""A stand-in for a fluorescence nuclei time-lapse (the kind issue 11 was filed on: 700x1100 uint16
frames, ~150 nuclei each, dim and noisy): frames from the synthetic generator with two brightness
populations of nuclei (binary masks), few photons, a camera offset and read noise.

    python benchmarks/make_timelapse.py tl 12 100         # 12 training frames, seeds 100..111
    python benchmarks/make_timelapse.py tl-test 4 500     # 4 held-out frames
    python benchmarks/bench_autoplan.py tl --test tl-test --budget 8m --name tl-auto
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from unetkit.data.io import write_image, write_mask
from unetkit.datasets import generate_cells


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit(__doc__)
    out, frames, seed = Path(argv[0]), int(argv[1]), int(argv[2])
    for i in range(frames):
        s = generate_cells((700, 1100), count=150, num_classes=3, seed=seed + i, radius=11, photons=60, noise=0.05)
        read_noise = np.random.default_rng(i).normal(0, 8, s.image.shape)
        image = (s.image.astype(np.float32) * 0.25 + 3000 + read_noise).astype(np.uint16)
        write_image(out / "images" / f"t{i:03d}.tif", image, None)
        write_mask(out / "masks" / f"t{i:03d}.png", (s.mask > 0).astype(np.uint8), None)


if __name__ == "__main__":
    main(sys.argv[1:])
