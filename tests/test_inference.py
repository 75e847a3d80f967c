"""Sliding-window / overlap-tile inference and test-time augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import unetkit
from unetkit.inference.sliding_window import (extract_window, importance_map, plan_windows,
                                              sliding_window_inference)
from unetkit.inference.tta import tta_predict, tta_transforms


def _tiny(**kw) -> nn.Module:
    return unetkit.create_model("unet", features=(4, 8, 16), **kw).eval()


def test_whole_image_when_it_fits() -> None:
    model = _tiny(num_classes=3)
    x = torch.randn(2, 1, 40, 52)
    with torch.no_grad():
        ref = model(x)
    out = sliding_window_inference(x, model, roi_size=(64, 64), overlap=0.5)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape", [(1, 2, 37, 50), (2, 2, 11, 19, 23)])
def test_many_windows_of_a_pointwise_model_equal_the_whole_image(shape, blend) -> None:
    """A 1x1 model has no context, so blending any window layout must give the whole-image output."""
    conv = (nn.Conv2d if len(shape) == 4 else nn.Conv3d)(2, 3, 1)
    x = torch.randn(shape)
    calls = []

    def predictor(w: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(w.shape))
        return conv(w)

    out = sliding_window_inference(x, predictor, roi_size=8, overlap=0.4, blend=blend, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(out, conv(x), atol=1e-5, rtol=0)
    assert len(calls) > 1 and all(c[0] <= 3 and c[2:] == (8,) * (len(shape) - 2) for c in calls)


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_valid_mode_equals_model_on_mirror_padded_image(overlap, blend) -> None:
    model = _tiny(padding="valid", norm="none", num_classes=2)
    x = torch.randn(2, 1, 40, 52)
    margin = (60 - model.output_size(60)[0]) // 2  # 20 px of context each side
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (margin,) * 2, (margin,) * 2), mode="reflect"))
    with torch.no_grad():
        ref = model(padded)
    assert ref.shape[2:] == x.shape[2:]
    out = sliding_window_inference(x, model, roi_size=60, overlap=overlap, blend=blend,
                                   output_size_fn=model.output_size)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_valid_mode_image_smaller_than_tile() -> None:
    model = _tiny(padding="valid", norm="none", num_classes=1)
    x = torch.randn(1, 1, 9, 13)  # tile is 20 px: mirroring reflects more than once
    out = sliding_window_inference(x, model, roi_size=60, output_size_fn=model.output_size)
    assert out.shape == (1, 1, 9, 13) and torch.isfinite(out).all()


def test_valid_mode_grid_steps_are_multiples_of_the_stride() -> None:
    model = _tiny(padding="valid", norm="none")
    plan = plan_windows((100, 100), (60, 60), overlap=0.5, output_size_fn=model.output_size)
    assert plan.tile == (20, 20) and plan.margin == (20, 20)
    steps = {b[0] - a[0] for a, b in zip(plan.starts, plan.starts[1:]) if b[0] > a[0]}
    assert steps == {8}  # 10 px rounded down to the depth-3 stride of 4
    assert max(s[0] for s in plan.starts) + 20 >= 100


@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("symmetric", "symmetric"),
                                          ("replicate", "edge"), ("constant", "constant")])
def test_extract_window_matches_numpy_pad(mode, np_mode) -> None:
    x = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (6, 6), (6, 6)), mode=np_mode)
    window = extract_window(x, (-4, 3), (9, 8), mode)
    np.testing.assert_array_equal(window.numpy(), padded[:, :, 2:11, 9:17])


def test_deep_supervision_uses_the_first_output() -> None:
    model = _tiny(deep_supervision=True, num_classes=2)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)[0]
    torch.testing.assert_close(sliding_window_inference(x, model, 32), ref, atol=1e-5, rtol=0)


def test_importance_map_is_centred_and_positive() -> None:
    w = importance_map((9, 12))
    assert w.shape == (9, 12) and float(w.min()) > 0 and float(w.max()) == pytest.approx(1.0)
    torch.testing.assert_close(w, w.flip(0).flip(1))
    assert torch.equal(importance_map((4, 4), "constant"), torch.ones(4, 4))


def test_bad_arguments() -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(x, nn.Identity(), 4, overlap=1.0)
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window_inference(x, nn.Identity(), (4, 4, 4))
    with pytest.raises(ValueError, match="output_size_fn"):  # a valid-mode model used as same-mode
        sliding_window_inference(x, lambda w: w[..., 1:-1, 1:-1], 4)


# ---- test-time augmentation ----------------------------------------------------------------
def test_tta_transform_counts() -> None:
    assert len(tta_transforms(2)) == 8 and len(set(tta_transforms(2))) == 8
    assert len(tta_transforms(2, rot90=False)) == 4
    assert len(tta_transforms(3, rot90=False)) == 8


def test_tta_of_flip_and_rotation_equivariant_model_is_exact() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=True)
    with torch.no_grad():  # kernels with the symmetries of the square
        k = torch.randn(2, 1, 3, 3)
        k = sum(torch.rot90(kk, r, (-2, -1)) for r in range(4) for kk in (k, k.flip(-1)))
        conv.weight.copy_(k)
    x = torch.randn(2, 1, 12, 17)
    with torch.no_grad():
        fn = lambda t: torch.sigmoid(conv(t))  # noqa: E731
        torch.testing.assert_close(tta_predict(fn, x), fn(x), atol=1e-6, rtol=0)


def test_tta_3d_flips_of_equivariant_model_is_exact() -> None:
    conv = nn.Conv3d(1, 1, 3, padding=1)
    with torch.no_grad():
        k = torch.randn(1, 1, 3, 3, 3)
        k = k + k.flip(2)
        k = k + k.flip(3)
        conv.weight.copy_(k + k.flip(4))  # symmetric under every axis flip
    x = torch.randn(1, 1, 6, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(tta_predict(conv, x, rot90=False), conv(x), atol=1e-5, rtol=0)


def test_tta_averages_inverse_transformed_predictions() -> None:
    """A position-dependent model: TTA must equal the mean of the 8 dihedral predictions, undone."""
    weight = torch.randn(1, 1, 6, 6)
    fn = lambda t: t * weight  # noqa: E731
    x = torch.randn(1, 1, 6, 6)
    expected = []
    for k in range(4):
        for flip in (False, True):
            t = x.flip(-1) if flip else x
            y = torch.rot90(t, k, (-2, -1)) * weight
            y = torch.rot90(y, -k, (-2, -1))
            expected.append(y.flip(-1) if flip else y)
    torch.testing.assert_close(tta_predict(fn, x), torch.stack(expected).mean(0))
