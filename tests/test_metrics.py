"""Metrics against numpy / scipy / scikit-image computations on small hand-made arrays."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, directed_hausdorff
from skimage.segmentation import find_boundaries

from unetkit.metrics import (MetricAccumulator, accuracy, average_surface_distance, confusion_counts,
                             create_metric, dice, hausdorff_distance, iou, list_metrics, logits_to_labels,
                             metrics_table, precision, predictions_table, recall, specificity, write_metrics_csv)

COUNT_FNS = {"dice": dice, "iou": iou, "precision": precision, "recall": recall,
             "specificity": specificity, "accuracy": accuracy}


def np_counts(pred: np.ndarray, target: np.ndarray, k: int, ignore: int | None = None) -> np.ndarray:
    """(N, K, 4) by explicit loops over images and classes."""
    out = np.zeros((len(pred), k, 4), np.int64)
    for n in range(len(pred)):
        valid = np.ones(target[n].shape, bool) if ignore is None else target[n] != ignore
        for c in range(k):
            p, t = (pred[n] == c) & valid, (target[n] == c) & valid
            out[n, c] = [(p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t & valid).sum()]
    return out


def np_metric(name: str, tp: float, fp: float, fn: float, tn: float) -> float:
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn), "precision": tp / (tp + fp),
            "recall": tp / (tp + fn), "specificity": tn / (tn + fp), "accuracy": (tp + tn) / (tp + fp + fn + tn)}[name]


@pytest.mark.parametrize("shape", [(3, 1, 5, 6), (2, 1, 3, 4, 5)], ids=["2d", "3d"])
def test_confusion_counts_and_ratios_match_numpy(shape):
    pred, target = torch.randint(0, 3, shape), torch.randint(0, 3, shape)
    target[torch.rand(shape) < 0.2] = 255
    counts = confusion_counts(pred, target, 3, ignore_index=255)
    expected = np_counts(pred[:, 0].numpy(), target[:, 0].numpy(), 3, ignore=255)
    assert counts.shape == (shape[0], 3, 4) and (counts.numpy() == expected).all()
    assert (confusion_counts(pred[:, 0], target[:, 0], 3, 255) == counts).all()  # (N, *S) labels
    for name, fn in COUNT_FNS.items():
        got = fn(counts).numpy()
        want = np.vectorize(lambda *c: np_metric(name, *c))(*np.moveaxis(expected.astype(float), -1, 0))
        assert np.allclose(got, want), name


def test_hand_computed_values():
    target = torch.tensor([[[1, 1, 0], [0, 0, 0]]])
    pred = torch.tensor([[[1, 0, 1], [0, 0, 0]]])  # class 1: tp 1, fp 1, fn 1, tn 3
    counts = confusion_counts(pred, target, 2)
    assert counts[0, 1].tolist() == [1, 1, 1, 3]
    assert dice(counts)[0, 1] == pytest.approx(0.5) and iou(counts)[0, 1] == pytest.approx(1 / 3)
    assert specificity(counts)[0, 1] == pytest.approx(0.75) and accuracy(counts)[0, 1] == pytest.approx(4 / 6)


def test_empty_cases():
    empty, full = torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.ones(1, 1, 4, 4, dtype=torch.long)
    both_empty = confusion_counts(empty, empty, 2)[:, 1]
    for fn in COUNT_FNS.values():
        assert fn(both_empty).item() == 1.0
    false_alarm = confusion_counts(full, empty, 2)[:, 1]  # prediction non-empty, target empty
    assert dice(false_alarm).item() == 0.0 and iou(false_alarm).item() == 0.0
    assert recall(false_alarm).item() == 0.0 and precision(false_alarm).item() == 0.0
    missed = confusion_counts(empty, full, 2)[:, 1]  # prediction empty, target non-empty
    assert precision(missed).item() == 0.0 and specificity(missed).item() == 0.0
    assert math.isnan(dice(both_empty, empty_score=float("nan")).item())
    mask = np.zeros((5, 5), bool)
    other = mask.copy()
    other[2, 2] = True
    assert hausdorff_distance(mask, mask) == 0.0 and average_surface_distance(mask, mask) == 0.0
    assert hausdorff_distance(mask, other) == math.inf and average_surface_distance(other, mask) == math.inf


def test_logits_to_labels():
    logits = torch.tensor([[[[-1.0, 0.5]]]])
    assert logits_to_labels(logits).tolist() == [[[[0, 1]]]]
    assert logits_to_labels(logits, threshold=0.7).tolist() == [[[[0, 0]]]]
    multi = torch.randn(2, 4, 3, 3, 3)
    assert (logits_to_labels(multi) == multi.argmax(1, keepdim=True)).all()
    ml = logits_to_labels(multi, mode="multilabel")
    assert ml.dtype == torch.bool and (ml == (multi > 0)).all()


# ---- surface distances ---------------------------------------------------------------------------

def blob_pair(ndim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (12, 14, 13)[:ndim] if ndim == 3 else (24, 26)
    pred, target = np.zeros(shape, bool), np.zeros(shape, bool)
    for mask in (pred, target):
        for _ in range(3):
            lo = [rng.integers(1, s - 6) for s in shape]
            mask[tuple(slice(a, a + rng.integers(2, 5)) for a in lo)] = True
    return pred, target


def surface_points(mask: np.ndarray, spacing: tuple) -> np.ndarray:
    """Surface by scikit-image (pixels 1-connected to the outside), scaled to physical units."""
    return np.argwhere(find_boundaries(mask, mode="inner", connectivity=1) & mask) * np.asarray(spacing)


@pytest.mark.parametrize("ndim,spacing", [(2, (1.0, 1.0)), (2, (0.5, 2.0)), (3, (2.5, 1.0, 0.7))])
@pytest.mark.parametrize("seed", [0, 1])
def test_surface_metrics_match_point_set_computations(ndim, spacing, seed):
    pred, target = blob_pair(ndim, seed)
    a, b = surface_points(pred, spacing), surface_points(target, spacing)
    hd = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert hausdorff_distance(pred, target, spacing) == pytest.approx(hd)
    d = cdist(a, b)  # brute force O(N^2)
    ab, ba = d.min(1), d.min(0)
    assert hausdorff_distance(pred, target, spacing, percentile=95) == \
        pytest.approx(max(np.percentile(ab, 95), np.percentile(ba, 95)))
    assert create_metric("hd95", spacing=spacing)(pred, target) == pytest.approx(
        hausdorff_distance(pred, target, spacing, percentile=95))
    assert average_surface_distance(pred, target, spacing) == pytest.approx(np.concatenate([ab, ba]).mean())
    assert average_surface_distance(pred, target, spacing, symmetric=False) == pytest.approx(ab.mean())


def test_hand_hausdorff_of_shifted_squares():
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[2:5, 2:5], b[2:5, 5:8] = True, True
    assert hausdorff_distance(a, b) == pytest.approx(3.0)
    assert hausdorff_distance(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.5)


# ---- accumulator and tables ----------------------------------------------------------------------

def test_accumulator_keeps_images_not_batch_means():
    rng = torch.Generator().manual_seed(3)
    preds = torch.randint(0, 3, (5, 1, 6, 7), generator=rng)
    targets = torch.randint(0, 3, (5, 1, 6, 7), generator=rng)
    acc = MetricAccumulator(3, metrics=("dice", "iou"))
    acc.update(preds[:1], targets[:1])  # uneven batches: 1 + 4 images
    acc.update(preds[1:], targets[1:], names=["b", "c", "d", "e"])
    counts = np_counts(preds[:, 0].numpy(), targets[:, 0].numpy(), 3).astype(float)
    per_image = 2 * counts[..., 0] / (2 * counts[..., 0] + counts[..., 1] + counts[..., 2])  # (5, 3)
    result = acc.compute()
    assert result["num_images"] == 5
    assert result["dice"]["mean"] == pytest.approx(per_image[:, 1:].mean(1).mean())
    assert result["dice"]["std"] == pytest.approx(per_image[:, 1:].mean(1).std())
    pooled = counts.sum(0)
    assert result["dice"]["global"] == pytest.approx(
        (2 * pooled[1:, 0] / (2 * pooled[1:, 0] + pooled[1:, 1] + pooled[1:, 2])).mean())
    assert result["dice"]["per_class"]["2"]["mean"] == pytest.approx(per_image[:, 2].mean())
    rows = acc.rows()
    assert len(rows) == 10 and [r["image"] for r in rows[::2]] == ["0", "b", "c", "d", "e"]
    assert rows[3]["class"] == "2" and rows[3]["dice"] == pytest.approx(per_image[1, 2])


def test_accumulator_merge_equals_single_pass_and_reset():
    preds, targets = torch.randint(0, 2, (4, 1, 5, 5, 5)), torch.randint(0, 2, (4, 1, 5, 5, 5))
    whole = MetricAccumulator(2, surface=True, spacing=(2.0, 1.0, 1.0))
    whole.update(preds, targets)
    rank0, rank1 = (MetricAccumulator(2, surface=True, spacing=(2.0, 1.0, 1.0)) for _ in range(2))
    rank0.update(preds[:2], targets[:2])
    rank1.update(preds[2:], targets[2:])
    rank0.merge(rank1.state_dict())
    assert rank0.compute() == whole.compute()
    hd = hausdorff_distance(preds[3, 0].numpy() == 1, targets[3, 0].numpy() == 1, spacing=(2.0, 1.0, 1.0))
    assert whole.rows()[3]["hausdorff"] == pytest.approx(hd)
    whole.reset()
    assert whole.compute() == {"num_images": 0} and whole.rows() == []
    with pytest.raises(ValueError):
        rank0.merge(MetricAccumulator(3).state_dict())


def test_table_and_csv(tmp_path):
    preds = [np.array([[0, 1], [1, 1]]), np.array([[0, 0], [0, 1]])]
    targets = [np.array([[0, 1], [0, 1]]), np.array([[0, 0], [1, 1]])]
    table = predictions_table(preds, targets, 2, names=["x", "y"], metrics=("dice",))
    assert [r["image"] for r in table] == ["x", "y", "mean", "std"]
    assert table[0]["dice"] == pytest.approx(0.8) and table[1]["dice"] == pytest.approx(2 / 3)
    assert table[2]["dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    path = write_metrics_csv(table[:2], tmp_path / "m.csv")
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["image"] for r in read] == ["x", "y", "mean", "std"] and float(read[0]["dice"]) == pytest.approx(0.8)
    assert metrics_table(table[:2], summary=False) == table[:2]
    with pytest.raises(FileExistsError):
        write_metrics_csv(table[:2], path)


def test_registry():
    assert {"dice", "iou", "jaccard", "precision", "recall", "specificity", "accuracy"} <= set(list_metrics(kind="counts"))
    assert set(list_metrics(kind="surface")) == {"hausdorff", "hd95", "assd"}
    counts = torch.tensor([[3, 1, 2, 10]])
    assert create_metric("jaccard")(counts).item() == pytest.approx(0.5)
