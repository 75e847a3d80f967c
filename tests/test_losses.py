"""Losses against independent numpy / torch computations, plus a tiny training run per loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.errors import ConfigError
from unetkit.losses import (BoundaryLoss, DeepSupervisionLoss, check_loss_fits, create_loss, cross_entropy,
                            dice_loss, focal_loss, list_losses, signed_distance_map, tversky_loss)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(params=[(5, 6), (3, 4, 5)], ids=["2d", "3d"])
def multiclass(request):
    logits = torch.randn(2, 3, *request.param, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 1, *request.param))
    return logits, target


def manual_nll(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-pixel -log softmax at the target class, (N, *S), numpy."""
    logp = np_log_softmax(logits.numpy())
    return -np.take_along_axis(logp, target.numpy(), axis=1)[:, 0]


# ---- cross-entropy -------------------------------------------------------------------------------

def test_ce_matches_manual_log_softmax_and_torch(multiclass):
    logits, target = multiclass
    expected = manual_nll(logits, target).mean()
    assert cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-10)
    assert cross_entropy(logits, target[:, 0]).item() == pytest.approx(F.cross_entropy(logits, target[:, 0]).item())


def test_ce_pixel_and_class_weights(multiclass):
    logits, target = multiclass
    pixel_w = torch.rand(target.shape, dtype=torch.float64)
    cw = [0.2, 1.0, 3.0]
    nll = manual_nll(logits, target) * np.asarray(cw)[target[:, 0].numpy()] * pixel_w[:, 0].numpy()
    got = cross_entropy(logits, target, pixel_w, class_weights=cw)
    assert got.item() == pytest.approx(nll.mean(), rel=1e-10)


def test_ignore_index_pixels_change_nothing(multiclass):
    logits, target = multiclass
    ignored = torch.rand(target.shape) < 0.3
    target_ign = target.masked_fill(ignored, 255)
    expected = manual_nll(logits, target)[~ignored[:, 0].numpy()].mean()
    for name in ["ce", "dice", "focal", "tversky", "combo", "boundary"]:
        loss = create_loss(name, ignore_index=255)
        base = loss(logits, target_ign)
        changed = logits.clone()
        changed[ignored.expand_as(logits)] = 50.0  # arbitrary logits where the target is ignored
        assert loss(changed, target_ign).item() == pytest.approx(base.item(), rel=1e-10), name
    assert create_loss("ce", ignore_index=255)(logits, target_ign).item() == pytest.approx(expected, rel=1e-10)


def test_bce_binary_and_multilabel_match_formula():
    logits = torch.randn(2, 1, 4, 5, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 1, 4, 5))
    x, t = logits.numpy(), target.numpy()
    p = np_sigmoid(x)
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    assert cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-9)
    ml_logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    ml_target = (torch.rand(2, 3, 4, 5) > 0.5).double()
    p, t = np_sigmoid(ml_logits.numpy()), ml_target.numpy()
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    assert cross_entropy(ml_logits, ml_target, mode="multilabel").item() == pytest.approx(expected, rel=1e-9)


def test_soft_multiclass_targets_match_torch():
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    soft = torch.rand(2, 3, 4, 4, dtype=torch.float64).softmax(1)
    assert cross_entropy(logits, soft).item() == pytest.approx(F.cross_entropy(logits, soft).item(), rel=1e-10)


# ---- focal ---------------------------------------------------------------------------------------

def test_focal_binary_matches_hand_formula():
    logits = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 1, 3, 3, 3))
    p, t = np_sigmoid(logits.numpy()), target.numpy()
    p_t = np.where(t == 1, p, 1 - p)
    alpha_t = np.where(t == 1, 0.25, 0.75)
    expected = (-alpha_t * (1 - p_t) ** 2 * np.log(p_t)).mean()
    assert focal_loss(logits, target, gamma=2.0, alpha=0.25).item() == pytest.approx(expected, rel=1e-9)


def test_focal_multiclass_hand_formula_and_reduces_to_ce(multiclass):
    logits, target = multiclass
    nll = manual_nll(logits, target)
    expected = ((1 - np.exp(-nll)) ** 1.5 * nll).mean()
    assert focal_loss(logits, target, gamma=1.5).item() == pytest.approx(expected, rel=1e-9)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(cross_entropy(logits, target).item())
    with pytest.raises(ConfigError):
        focal_loss(logits, target, alpha=0.25)


# ---- Dice / Tversky / Combo ----------------------------------------------------------------------

def np_soft_dice(probs: np.ndarray, onehot: np.ndarray, axes: tuple, smooth: float) -> np.ndarray:
    inter = (probs * onehot).sum(axes)
    return (2 * inter + smooth) / (probs.sum(axes) + onehot.sum(axes) + smooth)


def test_dice_batch_and_per_image_match_numpy(multiclass):
    logits, target = multiclass
    probs = np.exp(np_log_softmax(logits.numpy()))
    onehot = (target.numpy() == np.arange(3).reshape(1, 3, *[1] * (target.dim() - 2))).astype(float)
    spatial = tuple(range(2, logits.dim()))
    batch = np_soft_dice(probs, onehot, (0, *spatial), 1.0)
    assert dice_loss(logits, target, smooth=1.0).item() == pytest.approx(1 - batch.mean(), rel=1e-10)
    assert dice_loss(logits, target, smooth=1.0, include_background=False).item() == \
        pytest.approx(1 - batch[1:].mean(), rel=1e-10)
    per_image = np_soft_dice(probs, onehot, spatial, 1.0)  # (N, K)
    assert dice_loss(logits, target, smooth=1.0, per_image=True).item() == pytest.approx(1 - per_image.mean(), rel=1e-10)


def test_dice_hand_values_binary():
    target = torch.tensor([[[[1, 1], [0, 0]]]])
    perfect = torch.where(target.bool(), 30.0, -30.0).double()
    assert dice_loss(perfect, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-9)
    half = torch.tensor([[[[30.0, -30.0], [30.0, -30.0]]]], dtype=torch.float64)  # tp 1, fp 1, fn 1
    assert dice_loss(half, target, smooth=0.0).item() == pytest.approx(0.5, abs=1e-9)


def test_tversky_matches_numpy_and_equals_dice_at_half(multiclass):
    logits, target = multiclass
    probs = np.exp(np_log_softmax(logits.numpy()))
    onehot = (target.numpy() == np.arange(3).reshape(1, 3, *[1] * (target.dim() - 2))).astype(float)
    axes = (0, *range(2, logits.dim()))
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    expected = 1 - ((tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)).mean()
    assert tversky_loss(logits, target, smooth=1.0, alpha=0.3, beta=0.7).item() == pytest.approx(expected, rel=1e-10)
    assert tversky_loss(logits, target, smooth=0.0, alpha=0.5, beta=0.5).item() == \
        pytest.approx(dice_loss(logits, target, smooth=0.0).item(), rel=1e-10)


def test_combo_is_weighted_sum(multiclass):
    logits, target = multiclass
    ce, dice = cross_entropy(logits, target).item(), dice_loss(logits, target).item()
    assert create_loss("combo", alpha=0.3)(logits, target).item() == pytest.approx(0.3 * ce + 0.7 * dice)
    assert create_loss("dice_ce")(logits, target).item() == pytest.approx(0.5 * ce + 0.5 * dice)


# ---- boundary ------------------------------------------------------------------------------------

def test_signed_distance_map_hand_values_and_spacing():
    mask = np.zeros((1, 7), bool)
    mask[0, 2:5] = True
    assert signed_distance_map(mask).tolist() == [[2, 1, -1, -2, -1, 1, 2]]
    mask3 = np.zeros((3, 4, 5), bool)
    mask3[1, 1:3, 1:4] = True
    got = signed_distance_map(mask3, spacing=(2.0, 1.0, 0.5))
    inside, outside = np.argwhere(mask3), np.argwhere(~mask3)  # brute force over points
    scale = np.array([2.0, 1.0, 0.5])
    for point in np.argwhere(np.ones_like(mask3)):
        others = outside if mask3[tuple(point)] else inside
        dist = np.sqrt((((others - point) * scale) ** 2).sum(1)).min()
        assert got[tuple(point)] == pytest.approx(-dist if mask3[tuple(point)] else dist, rel=1e-6)
    assert not signed_distance_map(np.zeros((4, 4), bool)).any()


def test_boundary_loss_value_and_schedule():
    target = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    target[0, 0, 2:4, 1:5] = 1
    logits = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    phi = signed_distance_map(target[0, 0].numpy() == 1)
    term = (logits.softmax(1)[0, 1].numpy() * phi).mean()
    region = dice_loss(logits, target).item()
    loss = BoundaryLoss(alpha=0.01, alpha_step=0.01)
    assert loss(logits, target).item() == pytest.approx(region + 0.01 * term, rel=1e-9)
    loss.set_epoch(9)
    assert loss(logits, target).item() == pytest.approx(region + 0.1 * term, rel=1e-9)
    loss.step()
    assert loss.boundary_weight == pytest.approx(0.11)
    rebalanced = BoundaryLoss(alpha=0.5, rebalance=True)
    assert rebalanced(logits, target).item() == pytest.approx(0.5 * region + 0.5 * term, rel=1e-9)
    maps = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    maps[0, 1] = torch.from_numpy(phi)
    assert loss(logits, target, dist_maps=maps).item() == pytest.approx(loss(logits, target).item())


# ---- deep supervision ----------------------------------------------------------------------------

def test_deep_supervision_resizes_and_weights():
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    outputs = [torch.randn(2, 3, 8 // 2 ** i, 8 // 2 ** i, 8 // 2 ** i, dtype=torch.float64) for i in range(3)]
    base = create_loss("ce")
    expected = sum(w * base(out, target[..., :: 2 ** i, :: 2 ** i, :: 2 ** i]).item()
                   for i, (w, out) in enumerate(zip([4 / 7, 2 / 7, 1 / 7], outputs)))
    ds = DeepSupervisionLoss(base)
    assert ds(outputs, target).item() == pytest.approx(expected, rel=1e-10)
    assert ds(outputs[0], target).item() == pytest.approx(base(outputs[0], target).item())
    weight = torch.rand(2, 1, 8, 8, 8, dtype=torch.float64)  # dense maps are area-averaged
    pooled = F.avg_pool3d(weight, 2)
    got = DeepSupervisionLoss("ce", weights=[0.0, 1.0])(outputs[:2], target, weight)
    assert got.item() == pytest.approx(base(outputs[1], target[..., ::2, ::2, ::2], pooled).item(), rel=1e-10)
    with pytest.raises(ConfigError):
        DeepSupervisionLoss("ce", weights=[1.0])(outputs, target)


# ---- configuration checks ------------------------------------------------------------------------

def test_check_loss_fits():
    check_loss_fits("dice", 3)
    check_loss_fits(create_loss("ce", mode="binary"), 1)
    with pytest.raises(ConfigError, match="binary"):
        check_loss_fits(create_loss("dice", mode="binary"), 3)
    with pytest.raises(ConfigError, match="multiclass"):
        check_loss_fits(create_loss("ce", mode="multiclass"), 1)
    with pytest.raises(ConfigError, match="class_weights"):
        check_loss_fits(create_loss("ce", class_weights=[1.0, 2.0]), 3)
    with pytest.raises(ConfigError):
        check_loss_fits(DeepSupervisionLoss(create_loss("focal", mode="binary")), 2)
    with pytest.raises(ConfigError, match="unknown loss"):
        check_loss_fits("nope", 2)
    with pytest.raises(ConfigError):
        create_loss("ce", mode="softmax")


# ---- differentiable and trainable ----------------------------------------------------------------

CASES = [(name, k) for name in ["ce", "dice", "focal", "tversky", "combo", "dice_ce", "boundary"] for k in (1, 3)]


def _train(loss: nn.Module, k: int, spatial: tuple, steps: int = 20) -> tuple[float, float]:
    conv = nn.Conv2d if len(spatial) == 2 else nn.Conv3d
    model = nn.Sequential(conv(1, 8, 3, padding=1), nn.ReLU(), conv(8, k, 1))
    x = torch.randn(2, 1, *spatial)
    target = ((x > 0.3).long() + (x > 1.0).long()).clamp(max=max(k - 1, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    values = []
    for _ in range(steps):
        opt.zero_grad()
        value = loss(model(x), target)
        value.backward()
        opt.step()
        values.append(value.item())
    return values[0], values[-1]


@pytest.mark.parametrize("name,k", CASES)
def test_loss_goes_down_on_one_batch(name, k):
    first, last = _train(create_loss(name), k, (16, 16))
    assert last < first


def test_losses_go_down_3d_and_deep_supervision():
    for name in ("combo", "boundary"):
        first, last = _train(create_loss(name), 3, (6, 8, 8))
        assert last < first, name
    first, last = _train(DeepSupervisionLoss("dice_ce"), 2, (16, 16))  # plain tensor path
    assert last < first


def test_every_registered_loss_is_covered():
    assert set(list_losses()) <= {name for name, _ in CASES}
