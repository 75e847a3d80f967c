"""The U-Net weight map: brute-force references, the touching-discs ridge, class balance, the picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from skimage.draw import disk

from unetkit.losses import plot_weight_map, separate_touching, unet_weight_map

DATA = Path("/work/shared/data/dsb2018-nuclei/instances.tif")


def brute_force_weight_map(objects: np.ndarray, w0: float, sigma: float,
                           spacing: tuple | None = None) -> np.ndarray:
    """O(pixels x object pixels) reference from explicit point distances; no class weights.

    `objects` must already be separated (instance ids, 0 = background).
    """
    scale = np.ones(objects.ndim) if spacing is None else np.asarray(spacing, float)
    points = np.argwhere(np.ones_like(objects, bool)) * scale
    per_object = [cdist(points, np.argwhere(objects == i) * scale).min(1) for i in np.unique(objects[objects > 0])]
    d = np.sort(np.stack(per_object), axis=0)
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma ** 2))
    return 1.0 + np.where(objects.ravel() == 0, border, 0.0).reshape(objects.shape)


def random_discs(shape: tuple, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(1, count + 1):
        rr, cc = disk(tuple(rng.integers(0, shape)), rng.integers(2, 6), shape=shape)
        labels[rr, cc] = i
    return labels


@pytest.mark.parametrize("tol", [0.0, 1e-3])
def test_matches_brute_force_2d(tol):
    labels = random_discs((40, 48), 7, seed=1)
    expected = brute_force_weight_map(separate_touching(labels), 10.0, 5.0)
    got = unet_weight_map(labels, class_weights=None, tol=tol)
    assert np.abs(got - expected).max() <= max(tol, 1e-5)


def test_matches_brute_force_3d_with_spacing():
    rng = np.random.default_rng(2)
    labels = np.zeros((6, 14, 16), np.int32)
    for i in range(1, 5):
        z, y, x = rng.integers(0, 6), rng.integers(0, 12), rng.integers(0, 14)
        labels[z, y:y + 3, x:x + 3] = i
    spacing = (3.0, 1.0, 0.8)
    expected = brute_force_weight_map(separate_touching(labels), 10.0, 4.0, spacing)
    got = unet_weight_map(labels, sigma=4.0, class_weights=None, spacing=spacing)
    assert np.abs(got - expected).max() <= 1e-3


def test_two_touching_discs_show_a_ridge_between_them():
    labels = np.zeros((64, 64), np.int32)
    labels[disk((32, 20), 12, shape=labels.shape)] = 1
    labels[disk((32, 44), 12, shape=labels.shape)] = 2  # the discs touch along x = 32
    w = unet_weight_map(labels, class_weights=None)
    ridge = w[28:37, 32]
    assert (ridge > 9.0).all()  # w0 exp(-(1 + 1)^2 / 50) = 9.2 on the separating line
    row = w[32]
    assert row[32] == row.max() and row[32] > row[31] and row[32] > row[33]  # a peak across the line
    assert w[2, 2] < 1.5 and w[32, 20] == pytest.approx(1.0)  # far background, object interior
    assert w.max() == pytest.approx(w[:, 32].max())


def test_binary_mask_is_split_by_connected_components():
    mask = np.zeros((48, 48), bool)
    mask[10:38, 8:22] = True
    mask[10:38, 24:40] = True  # a two-pixel gap at x = 22, 23
    w = unet_weight_map(mask, class_weights=None)
    assert w[20, 22] > 8.0 and w[20, 23] > 8.0
    single = unet_weight_map(mask[:, :23], class_weights=None)  # one object: no border term
    assert np.allclose(single, 1.0)


def test_balanced_class_weights():
    labels = np.zeros((10, 10), np.int32)
    labels[:2] = 1  # 20 foreground, 80 background pixels
    w = unet_weight_map(labels, w0=0.0)
    assert w[0, 0] == pytest.approx(100 / (2 * 20)) and w[9, 9] == pytest.approx(100 / (2 * 80))
    assert w.mean() == pytest.approx(1.0)
    custom = unet_weight_map(labels, w0=0.0, class_weights={0: 0.5, 1: 3.0})
    assert custom[0, 0] == 3.0 and custom[9, 9] == 0.5
    assert unet_weight_map(labels).dtype == np.float32


def test_separate_touching_cuts_a_one_pixel_line():
    labels = np.zeros((7, 9), np.int32)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:7] = 2
    labels[6, 8] = 3  # touches nothing
    out = separate_touching(labels)
    assert (out[1:5, 4] == 0).all() and (out[1:5, 5:7] == 2).all() and (out[1:5, 1:4] == 1).all()
    assert out[6, 8] == 3 and (out == 0).sum() == (labels == 0).sum() + 4


@pytest.mark.skipif(not DATA.exists(), reason="nuclei sample not available")
def test_real_nuclei_mask_fast_equals_exact():
    tifffile = pytest.importorskip("tifffile")
    labels = tifffile.imread(DATA)[:192, :192]
    fast, exact = unet_weight_map(labels), unet_weight_map(labels, tol=0.0)
    assert np.abs(fast - exact).max() <= 1e-3
    assert fast.max() > 5.0  # nuclei close to each other get border weights


def test_plot_weight_map_writes_png(tmp_path):
    labels = np.zeros((32, 32), np.int32)
    labels[disk((16, 9), 7)] = 1
    labels[disk((16, 23), 7)] = 2
    path = plot_weight_map(labels > 0, unet_weight_map(labels), tmp_path / "w.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    assert matplotlib.image.imread(path).ndim == 3
    with pytest.raises(FileExistsError):
        plot_weight_map(labels, unet_weight_map(labels), path)
    volume = np.stack([labels] * 3)
    plot_weight_map(volume, unet_weight_map(volume), tmp_path / "w3d.png")
    assert (tmp_path / "w3d.png").exists()
