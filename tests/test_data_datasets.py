"""Sample datasets, SegmentationDataset (mask kinds, multi-modal), tiles, sampling and the loader."""
from __future__ import annotations

import numpy as np
from _helpers import png_mask_folder
import pytest
import tifffile
import torch
from PIL import Image

from unetkit.data.dataset import SegmentationDataset
from unetkit.data.loader import make_loader
from unetkit.data.sampling import class_weights_from_counts, image_weights, rare_class_sampler
from unetkit.data.tiles import RandomTileDataset
from unetkit.datasets import generate_cells, list_datasets, load_dataset, write_dataset
from unetkit.errors import DataError

SHARED = "/work/shared/data/dsb2018-nuclei"


def test_registry_lists_both():
    assert list_datasets() == ["dsb2018-nuclei", "synthetic-cells"]


def test_dsb2018_is_shipped_in_the_package():
    d = load_dataset("dsb2018-nuclei")
    assert d.image.shape == (1, 512, 512) and d.image.dtype == np.uint16
    assert d.mask.shape == (1, 512, 512) and set(np.unique(d.mask)) == {0, 1}
    assert len(np.unique(d.instances)) - 1 == 125
    assert "CC0" in d.attribution and "Data Science Bowl" in d.attribution
    try:  # the original files, when present, are identical
        np.testing.assert_array_equal(d.image[0], tifffile.imread(f"{SHARED}/image.tif"))
        np.testing.assert_array_equal(d.instances, tifffile.imread(f"{SHARED}/instances.tif"))
    except FileNotFoundError:
        pass


@pytest.mark.parametrize("shape", [(96, 80), (24, 32, 32)])
def test_synthetic_cells_seeded_and_consistent(shape):
    a = generate_cells(shape, num_classes=3, seed=7)
    b = generate_cells(shape, num_classes=3, seed=7)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == (1, *shape) and a.mask.shape == (1, *shape) and a.instances.shape == shape
    assert not np.array_equal(a.image, generate_cells(shape, num_classes=3, seed=8).image)
    ids = np.unique(a.instances)[1:]
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # consecutive ids
    np.testing.assert_array_equal(a.mask[0] > 0, a.instances > 0)
    for i, cls in a.classes.items():  # every instance has one class
        assert set(np.unique(a.mask[0][a.instances == i])) == {cls}
    # objects are brighter than background, and some touch (neighbouring ids share a border)
    assert a.image[0][a.mask[0] > 0].mean() > 2 * a.image[0][a.mask[0] == 0].mean()
    grown = np.maximum.reduce([np.roll(a.instances, 1, ax) for ax in range(len(shape))])
    assert ((grown != a.instances) & (grown > 0) & (a.instances > 0)).any()


def test_write_dataset_layout(tmp_path):
    out = write_dataset("synthetic-cells", tmp_path / "s", size=32, count=2, num_classes=3)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["cells_000.tif", "cells_001.tif"]
    assert (out / "masks" / "cells_000.png").exists() and (out / "instances" / "cells_000.tif").exists()
    ds = SegmentationDataset(out, num_classes=3, return_instances=True)
    s = ds[0]
    assert ds.mask_kind == "classes" and s["image"].dtype == torch.float32
    assert s["mask"].shape == (1, 32, 32) and s["mask"].dtype == torch.int64
    assert s["instances"].shape == (32, 32) and s["instances"].max() > 0
    out3 = write_dataset("synthetic-cells", tmp_path / "v", size=16, count=1, dims=3)
    assert (out3 / "images" / "cells_000.nii.gz").exists()


def _squares(rng, n, cell=6):
    """Instance ids 1..n, each a separate square of random size in its own cell of a grid."""
    side = int(np.ceil(np.sqrt(n)))
    mask = np.zeros((side * cell, side * cell), np.int32)
    for k in range(n):
        y, x, size = (k // side) * cell, (k % side) * cell, rng.integers(1, cell)
        mask[y:y + size, x:x + size] = k + 1
    return mask


@pytest.mark.parametrize("values,kind,num_classes,expected_max", [
    ((0, 1), "binary", None, 1), ((0, 255), "binary", None, 1),
    ((0, 1, 2), "classes", 3, 2), (tuple(range(40)), "instances", None, 1),
])
def test_mask_kinds(tmp_path, values, kind, num_classes, expected_max):
    rng = np.random.default_rng(0)
    if kind == "instances":  # objects: one separate square of random size per id
        masks = [_squares(rng, len(values) - 1) for _ in range(2)]
    else:
        masks = [rng.choice(np.array(values), (16, 16)) for _ in range(2)]
        for m in masks:
            m.flat[: len(values)] = values  # every value present
    ds = SegmentationDataset(png_mask_folder(tmp_path, masks), num_classes=num_classes, return_instances=True)
    assert ds.mask_kind == kind
    s = ds[0]
    assert s["mask"].shape == (1, *masks[0].shape) and int(s["mask"].max()) == expected_max
    if kind == "instances":
        np.testing.assert_array_equal(s["instances"].numpy(), masks[0])
    elif kind == "binary":
        np.testing.assert_array_equal(s["mask"][0].numpy(), masks[0] > 0)


def test_multimodal_cases_stack_channels(tmp_path):
    for case in ("p1", "p2"):
        for m in range(3):
            Image.fromarray(np.full((8, 8), 10 * m + 5, np.uint8)).save(tmp_path / f"{case}_{m:04d}.png")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / f"{case}_seg.png")
    ds = SegmentationDataset(tmp_path, normalize={"mode": "none"})
    assert ds.names == ["p1", "p2"]
    np.testing.assert_array_equal(ds[0]["image"][:, 0, 0].numpy(), [5, 15, 25])


def test_weight_map_is_computed_and_named_subset(tmp_path):
    masks = [np.eye(8, dtype=np.uint8) for _ in range(3)]
    root = png_mask_folder(tmp_path, masks)
    ds = SegmentationDataset(root, names=["c2"], weight_map=lambda sem, inst: 1.0 + 4.0 * sem)
    assert len(ds) == 1 and ds[0]["name"] == "c2"
    np.testing.assert_array_equal(ds[0]["weight"][0].numpy(), 1 + 4 * np.eye(8))
    with pytest.raises(DataError, match="not found"):
        SegmentationDataset(root, names=["zzz"])


def test_random_tiles_stay_in_region():
    d = load_dataset("dsb2018-nuclei")
    image = d.image.astype(np.float32)
    tiles = RandomTileDataset(image, d.mask, 64, length=30, region=(0, 256, 0, 512), foreground_fraction=0.5)
    for i in range(30):
        s = tiles[i]
        y, x = (int(v) for v in s["name"].split("_")[1:])
        assert 0 <= y <= 256 - 64 and 0 <= x <= 512 - 64
        np.testing.assert_array_equal(s["mask"].numpy(), d.mask[:, y:y + 64, x:x + 64])
        np.testing.assert_array_equal(s["image"].numpy(), image[:, y:y + 64, x:x + 64])


def test_class_weights_and_rare_sampler():
    w = class_weights_from_counts([900, 90, 10])
    np.testing.assert_allclose(w, [1000 / (3 * 900), 1000 / (3 * 90), 1000 / (3 * 10)])
    presence = np.array([[1, 1, 0]] * 9 + [[1, 1, 1]], bool)  # class 2 in one image of ten
    p = image_weights(presence)
    assert p[-1] == pytest.approx(10 * p[0])
    draws = list(rare_class_sampler(presence, num_samples=2000, seed=0))
    assert 0.45 < np.mean(np.array(draws) == 9) < 0.60  # 10/19 expected


def test_loader_batches_dicts(tmp_path):
    masks = [np.eye(8, dtype=np.uint8) for _ in range(4)]
    ds = SegmentationDataset(png_mask_folder(tmp_path, masks))
    batch = next(iter(make_loader(ds, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 1, 8, 8) and batch["mask"].shape == (2, 1, 8, 8)
    assert batch["mask"].dtype == torch.int64 and len(batch["name"]) == 2


@pytest.mark.slow
def test_loader_workers_draw_different_tiles():
    d = load_dataset("synthetic-cells", size=64, count=1)
    tiles = RandomTileDataset(d.image.astype(np.float32), d.mask, 16, length=8)
    loader = make_loader(tiles, batch_size=4, num_workers=2, shuffle=False)
    assert loader.persistent_workers
    names = [n for batch in loader for n in batch["name"]]
    assert len(set(names)) > 4  # two workers do not repeat each other's tiles
