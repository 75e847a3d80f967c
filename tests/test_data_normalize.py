"""normalize_image modes against numpy formulas."""
from __future__ import annotations

import numpy as np
import pytest

from unetkit.data.normalize import dataset_spec, default_spec, normalize_image
from unetkit.errors import ConfigError

RNG = np.random.default_rng(1)
IMG = np.stack([RNG.gamma(2.0, 100.0, (32, 40)), RNG.normal(-5, 3, (32, 40))]).astype(np.float32)


def test_default_is_percentile():
    assert default_spec() == {"mode": "percentile", "lower": 1.0, "upper": 99.8}
    np.testing.assert_allclose(normalize_image(IMG, None), normalize_image(IMG, default_spec()))


def test_percentile():
    out = normalize_image(IMG, {"mode": "percentile", "lower": 2.0, "upper": 98.0})
    assert out.dtype == np.float32 and out.shape == IMG.shape
    for c in range(2):
        lo, hi = np.percentile(IMG[c], [2.0, 98.0])
        np.testing.assert_allclose(out[c], (np.clip(IMG[c], lo, hi) - lo) / (hi - lo), atol=1e-5)


def test_zscore_with_and_without_clip():
    out = normalize_image(IMG, {"mode": "zscore"})
    for c in range(2):
        np.testing.assert_allclose(out[c], (IMG[c] - IMG[c].mean()) / IMG[c].std(), atol=1e-4)
    out = normalize_image(IMG, {"mode": "zscore", "lower": 1, "upper": 99})
    lo, hi = np.percentile(IMG[0], [1, 99])
    x = np.clip(IMG[0], lo, hi)
    np.testing.assert_allclose(out[0], (x - x.mean()) / x.std(), atol=1e-4)


def test_dataset_uses_fixed_values():
    spec = dataset_spec({"intensity": {"mean": [10.0, -1.0], "std": [2.0, 4.0]}})
    out = normalize_image(IMG, spec)
    np.testing.assert_allclose(out[0], (IMG[0] - 10) / 2, atol=1e-4)
    np.testing.assert_allclose(out[1], (IMG[1] + 1) / 4, atol=1e-5)
    with pytest.raises(ConfigError, match="3 channels"):
        normalize_image(np.zeros((3, 4, 4)), spec)


def test_minmax_and_constant_channel():
    out = normalize_image(IMG, {"mode": "minmax"})
    np.testing.assert_allclose(out[1], (IMG[1] - IMG[1].min()) / (IMG[1].max() - IMG[1].min()), atol=1e-6)
    flat = normalize_image(np.full((1, 5, 5), 7.0), {"mode": "minmax"})
    assert np.all(flat == 0) and np.all(np.isfinite(flat))


def test_ct_window_level_width_equals_min_max():
    hu = RNG.uniform(-1200, 2000, (1, 8, 8, 8)).astype(np.float32)
    a = normalize_image(hu, {"mode": "ct", "level": 40, "width": 400})
    b = normalize_image(hu, {"mode": "ct", "min": -160, "max": 240})
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, (np.clip(hu, -160, 240) + 160) / 400, atol=1e-6)


def test_none_casts_only():
    x = RNG.integers(0, 500, (1, 4, 4)).astype(np.uint16)
    out = normalize_image(x, {"mode": "none"})
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("spec,match", [
    ({"mode": "bogus"}, "unknown normalisation mode"),
    ({"mode": "percentile", "lower": 99, "upper": 1}, "percentiles"),
    ({"mode": "ct", "level": 40}, "level\\+width or min\\+max"),
    ({"mode": "minmax", "foo": 1}, "no option"),
    ({"mode": "dataset"}, "needs 'mean' and 'std'"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        normalize_image(IMG, spec)
