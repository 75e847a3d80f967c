"""A tiny nuclei model trained for a few seconds (cached per test session), shared by the serve tests."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

import unetkit
from unetkit.data.normalize import normalize_image
from unetkit.datasets import load_dataset

PREPROCESS = {"mode": "percentile", "lower": 1.0, "upper": 99.8}
EXTRA = {"preprocess": PREPROCESS, "mode": "binary", "threshold": 0.5, "patch_size": [128, 128],
         "in_channels": 1, "class_names": ["background", "nucleus"]}


def train_tiny(steps: int = 80, seed: int = 0) -> torch.nn.Module:
    """A 4..8 U-Net fitted on 64x64 crops of the embedded dsb2018-nuclei image (a few seconds on a CPU;
    one thread: this tiny network is slower with two on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    nuclei = load_dataset("dsb2018-nuclei")
    image = torch.from_numpy(normalize_image(nuclei.image, PREPROCESS))
    mask = torch.from_numpy((nuclei.mask > 0).astype(np.float32))
    model = unetkit.create_model("unet", features=(4, 8), num_classes=1, norm="batch")
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        ys, xs = rng.integers(0, 512 - 64, 8), rng.integers(0, 512 - 64, 8)
        x = torch.stack([image[:, y:y + 64, x:x + 64] for y, x in zip(ys, xs)])
        t = torch.stack([mask[:, y:y + 64, x:x + 64] for y, x in zip(ys, xs)])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def nuclei_model_file() -> Path:
    """The tiny trained model, saved once per session as a model file."""
    folder = Path(tempfile.mkdtemp(prefix="unetkit-serve-test-"))
    return unetkit.save_model(train_tiny(), folder / "nuclei.safetensors", extra=EXTRA)


def nuclei_png(folder: Path) -> Path:
    """The embedded nuclei image as a 16-bit PNG (as a user would upload it)."""
    from unetkit.data.io import write_image

    return write_image(Path(folder) / "nuclei.png", load_dataset("dsb2018-nuclei").image, overwrite=True)
