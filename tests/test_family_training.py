"""Every registered model's tiny configuration trains a few optimizer steps on real nuclei
crops (DSB 2018 sample) with BCE: the loss stays finite and goes down."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unetkit
from unetkit.models.blocks import center_crop
from unetkit.models import list_models, model_info

DATA = Path("/work/shared/data/dsb2018-nuclei")
STEPS = 8


def nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0, 1], foreground mask) of the 512x512 sample."""
    try:
        from unetkit.datasets import load_dataset

        sample = load_dataset("dsb2018-nuclei")
        image, instances = np.asarray(sample.image).squeeze(), np.asarray(sample.instances).squeeze()
    except Exception:  # the datasets package is optional here: read the shared files
        tifffile = pytest.importorskip("tifffile")
        if not DATA.is_dir():
            pytest.skip(f"{DATA} not available")
        image, instances = tifffile.imread(DATA / "image.tif"), tifffile.imread(DATA / "instances.tif")
    image = image.astype(np.float32)
    lo, hi = np.percentile(image, (1, 99.8))
    return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32), (instances > 0).astype(np.float32)


def batch(dims: int, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """2D: four size x size crops. 3D: two 16x24x24 volumes stacking crops that slide one pixel
    per slice (nuclei become slanted tubes)."""
    image, mask = nuclei()
    corners = [(40, 60), (200, 300), (330, 120), (100, 400)]
    if dims == 2:
        xs = [(image[y:y + size, x:x + size], mask[y:y + size, x:x + size]) for y, x in corners]
    else:
        xs = [(np.stack([image[y + z:y + z + 24, x:x + 24] for z in range(16)]),
               np.stack([mask[y + z:y + z + 24, x:x + 24] for z in range(16)])) for y, x in corners[:2]]
    img = torch.from_numpy(np.stack([a for a, _ in xs]))[:, None]
    tgt = torch.from_numpy(np.stack([b for _, b in xs]))[:, None]
    return img, tgt


CASES = [(n, model_info(n).info["dims"][0]) for n in list_models()]


@pytest.mark.parametrize("name,dims", CASES)
def test_tiny_model_trains_on_nuclei(name: str, dims: int) -> None:
    kwargs = {"spatial_dims": dims, "in_channels": 1, "num_classes": 1, **model_info(name).tiny}
    model = unetkit.create_model(name, **kwargs).train()
    if model_info(name).info.get("any_size", True):
        images, targets = batch(dims)
    else:  # valid-padding models: a valid input size, targets cropped to the output
        images, targets = batch(dims, model.valid_input_sizes(92, 1)[-1])
        targets = center_crop(targets, model.output_size(images.shape[2:]))
    assert 0.05 < targets.mean() < 0.6  # crops hold both nuclei and background
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(images), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-2:]) < losses[0], losses
