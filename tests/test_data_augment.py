"""Augmentation keeps image, mask, weight map and instance ids aligned (2D and 3D)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetkit.data.augment import PRESETS, build_augmentation, resolve_config
from unetkit.errors import ConfigError


def squares_2d(size=96, cell=12):
    """Labelled squares: mask = class of the square (0..3), image channels = 10 * class and 5 * class."""
    yy, xx = np.mgrid[:size, :size]
    labels = ((yy // cell) + 2 * (xx // cell)) % 4
    image = np.stack([labels * 10.0, labels * 5.0]).astype(np.float32)
    return image, labels[None].astype(np.int64)


def squares_3d(size=40, cell=10):
    zz, yy, xx = np.mgrid[:size, :size, :size]
    labels = ((zz // cell) + (yy // cell) + 2 * (xx // cell)) % 4
    return (labels[None] * 10.0).astype(np.float32), labels[None].astype(np.int64)


def interior(mask):
    """Pixels whose 3x3(x3) neighbourhood has one label: away from the square borders."""
    m = mask[0]
    return ndi.maximum_filter(m, 3) == ndi.minimum_filter(m, 3)


def assert_aligned(image, mask, scale=10.0):
    keep = interior(mask)
    agree = np.rint(image[0] / scale)[keep] == mask[0][keep]
    assert keep.mean() > 0.3
    assert agree.mean() > 0.99, f"only {agree.mean():.3f} of interior pixels agree"


@pytest.mark.parametrize("op", [
    {"elastic": {"p": 1.0, "alpha": 400.0, "sigma": 10.0}},
    {"affine": {"p": 1.0, "rotate": 30.0, "scale": (0.8, 1.2), "shift": 0.1}},
    {"preset": "heavy", "noise": None, "blur": None, "brightness_contrast": None, "gamma": None},
    {"crop": {"size": 64, "scale": (0.3, 1.0)}, "flip": {"p": 0.5}, "rot90": {"p": 1.0}},
])
def test_2d_spatial_ops_move_image_and_mask_alike(op):
    image, mask = squares_2d()
    weight = (mask * 2.0 + 1).astype(np.float32)
    instances = mask[0] * 7
    for seed in range(4):
        out = build_augmentation(op, spatial_dims=2, seed=seed)(image, mask, weight=weight, instances=instances)
        assert out["mask"].dtype == np.int64 and out["mask"].shape[0] == 1
        assert out["image"].shape[1:] == out["mask"].shape[1:] == out["weight"].shape[1:] == out["instances"].shape
        assert_aligned(out["image"], out["mask"])
        np.testing.assert_array_equal(out["weight"], out["mask"] * 2.0 + 1)  # nearest: exact values
        np.testing.assert_array_equal(out["instances"], out["mask"][0] * 7)
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3}


def test_2d_deformation_actually_moves_pixels():
    image, mask = squares_2d()
    out = build_augmentation({"elastic": {"p": 1.0, "alpha": 400.0, "sigma": 10.0}}, seed=0)(image, mask)
    assert (out["mask"] != mask).mean() > 0.02


@pytest.mark.parametrize("op", [
    {"elastic": {"p": 1.0, "alpha": 400.0, "sigma": 8.0}},
    {"affine": {"p": 1.0, "rotate": 20.0, "scale": (0.8, 1.2), "shift": 0.1}},
    {"crop": 32, "flip": {"p": 0.5}, "rot90": {"p": 1.0}},
])
def test_3d_spatial_ops_move_image_and_mask_alike(op):
    image, mask = squares_3d()
    for seed in range(2):
        out = build_augmentation(op, spatial_dims=3, seed=seed)(image, mask, instances=mask[0] + 1)
        assert_aligned(out["image"], out["mask"])
        np.testing.assert_array_equal(out["instances"], out["mask"][0] + 1)
    assert (out["mask"] != mask[(slice(None),) + tuple(slice(0, s) for s in out["mask"].shape[1:])]).any()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_keep_shapes_and_dtypes_without_warnings(preset, dims):
    shape = (2,) + (24,) * dims
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)  # z-scored: negative values
    mask = (image[:1] > 0).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aug = build_augmentation(preset, spatial_dims=dims, seed=0)
        for _ in range(5):
            out = aug(image, mask)
    assert out["image"].shape == shape and out["image"].dtype == np.float32
    assert out["mask"].shape == (1,) + shape[1:] and np.isfinite(out["image"]).all()


def test_intensity_ops_leave_mask_untouched_and_are_seeded():
    image, mask = squares_2d()
    cfg = {"brightness_contrast": {"p": 1.0}, "gamma": {"p": 1.0}, "noise": {"p": 1.0}, "blur": {"p": 1.0}}
    a = build_augmentation(cfg, seed=5)(image, mask)
    b = build_augmentation(cfg, seed=5)(image, mask)
    np.testing.assert_array_equal(a["mask"], mask)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.allclose(a["image"], image)


def test_config_form_and_errors():
    ops = resolve_config({"preset": "default", "elastic": {"p": 0.9}, "noise": None, "crop": 64})
    assert ops["elastic"]["p"] == 0.9 and ops["elastic"]["alpha"] == PRESETS["default"]["elastic"]["alpha"]
    assert "noise" not in ops and ops["crop"]["size"] == 64
    assert resolve_config("none") == {}
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        build_augmentation("extreme")
    with pytest.raises(ConfigError, match="unknown augmentation op"):
        build_augmentation({"shear": 1})
    with pytest.raises(ConfigError, match="no option"):
        build_augmentation({"elastic": {"strength": 1}})


def test_thick_slices_are_not_rotated_out_of_their_plane():
    """nnU-Net's rule for anisotropic data: with 8x thicker slices, 3D rotations stay in-plane, so
    a volume whose every slice is constant keeps every slice constant; without the spacing (the old
    behaviour) the same rotations mix slices. Isotropic spacing gives the unchanged old result."""
    from unetkit.data.augment import build_augmentation

    image = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None], (1, 12, 40, 40)).copy()
    mask = np.zeros((1, 12, 40, 40), np.uint8)
    ops = {"affine": {"p": 1.0, "rotate": 30.0, "scale": (1.0, 1.0), "shift": 0.0}}

    def within_slice_spread(spacing, seed):
        aug = build_augmentation(ops, spatial_dims=3, seed=seed)
        out = aug(image, mask, spacing=spacing)["image"][0]
        return float(out.reshape(12, -1).std(axis=1).max())

    for seed in range(4):
        assert within_slice_spread((8.0, 1.0, 1.0), seed) < 1e-4
        assert within_slice_spread(None, seed) > 0.1
        a = build_augmentation(ops, spatial_dims=3, seed=seed)(image, mask, spacing=(2.0, 2.0, 2.0))["image"]
        b = build_augmentation(ops, spatial_dims=3, seed=seed)(image, mask)["image"]
        assert np.array_equal(a, b)


def test_rotations_are_physical_on_moderately_anisotropic_voxels():
    """2x thicker slices are within the anisotropy limit, so they are rotated, but in mm: a ball
    (an ellipsoid in voxels) stays the same ellipsoid under any rotation, up to resampling. Scored
    inside the central 22 mm, where no mirrored border content can reach."""
    from unetkit.data.augment import build_augmentation

    z, y, x = np.mgrid[:24, :48, :48].astype(np.float32)
    r2 = (2 * (z - 11.5)) ** 2 + (y - 23.5) ** 2 + (x - 23.5) ** 2  # squared distance in mm
    ball, inside = r2 <= 12 ** 2, r2 <= 22 ** 2
    mask = ball[None].astype(np.uint8)
    ops = {"affine": {"p": 1.0, "rotate": 40.0, "scale": (1.0, 1.0), "shift": 0.0}}
    dice = lambda a, b: 2 * (a & b & inside).sum() / ((a & inside).sum() + (b & inside).sum())
    for seed in range(3):
        physical = build_augmentation(ops, spatial_dims=3, seed=seed)(mask.astype(np.float32), mask,
                                                                       spacing=(2.0, 1.0, 1.0))["mask"][0]
        voxel = build_augmentation(ops, spatial_dims=3, seed=seed)(mask.astype(np.float32), mask)["mask"][0]
        assert dice(physical > 0, ball) > 0.95
        assert dice(voxel > 0, ball) < 0.85  # rotated in voxel space, the ellipsoid turns
