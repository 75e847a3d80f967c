"""Many-class data: absent classes never inflate means; label maps vs instance ids decided from the data."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
from _helpers import png_mask_folder
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from unetkit.cli.main import app
from unetkit.data.checks import check_dataset
from unetkit.data.io import VolumeMeta, write_image, write_mask
from unetkit.data.masks import decide_mask_kind, profile_masks
from unetkit.datasets import load_dataset
from unetkit.evaluation.evaluate import evaluate_folder
from unetkit.metrics import MetricAccumulator
from unetkit.training import TrainConfig, train
from unetkit.training.trainer import _flatten_summary


def _shared_data() -> Path | None:
    for root in (Path(__file__).resolve().parents[1] / ".." / "shared" / "data", Path("/work/shared/data")):
        if root.is_dir():
            return root
    return None


SHARED = _shared_data()


# ---- absent classes -----------------------------------------------------------------------------

def _half_absent_set(n_images: int = 4, k: int = 7, shape=(24, 28), seed: int = 0):
    """Targets and predictions with classes 1..6 where classes 4..6 never occur in the targets and
    predictions, one class only in a prediction (a false alarm) and one only in a target (a miss)."""
    rng = np.random.default_rng(seed)
    targets, preds = [], []
    for i in range(n_images):
        t = rng.integers(0, 4, shape)  # classes 0..3 only
        p = t.copy()
        flip = rng.random(shape) < 0.3
        p[flip] = rng.integers(0, 4, int(flip.sum()))
        targets.append(t)
        preds.append(p)
    targets[0][targets[0] == 3] = 0  # image 0: class 3 only predicted (a false alarm scores 0)
    preds[1][preds[1] == 2] = 0  # image 1: class 2 predicted nowhere (a miss scores 0)
    return preds, targets, k


def _independent_dice(preds, targets, k):
    """numpy Dice per image and class; classes absent from both truth and prediction left out:
    per class the mean over the images where it occurs, then the mean over those classes."""
    per_class = {}
    for c in range(1, k):
        scores = []
        for p, t in zip(preds, targets):
            a, b = p == c, t == c
            if a.any() or b.any():
                scores.append(2 * (a & b).sum() / (a.sum() + b.sum()))
        if scores:
            per_class[c] = float(np.mean(scores))
    return float(np.mean(list(per_class.values()))), per_class


def test_accumulator_mean_dice_leaves_absent_classes_out():
    preds, targets, k = _half_absent_set()
    acc = MetricAccumulator(k, metrics=("dice",))
    for p, t in zip(preds, targets):
        acc.update(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None])
    result = acc.compute()["dice"]
    expected, per_class = _independent_dice(preds, targets, k)
    assert result["mean"] == pytest.approx(expected)  # the old code averaged in three classes at 1.0
    assert result["classes"] == 3 and result["images"] == 4
    assert result["both_empty"] == 3 * 4  # classes 4..6 in every image; the false alarm and the miss count
    assert result["per_class"]["3"]["images"] == 4 and result["per_class"]["5"]["images"] == 0
    assert math.isnan(result["per_class"]["5"]["mean"]) and result["per_class"]["2"]["mean"] == pytest.approx(
        per_class[2])
    assert math.isnan(acc.rows()[4]["dice"])  # image 0, class 5: no score
    flat = _flatten_summary(acc.compute())  # what validation records and monitors
    assert flat["dice"] == pytest.approx(expected) and flat["scored_classes"] == 3 and flat["both_empty"] == 12


def test_binary_both_empty_images_are_left_out_and_counted():
    empty, blob = np.zeros((8, 8), int), np.zeros((8, 8), int)
    blob[2:6, 2:6] = 1
    half = blob.copy()
    half[2:4] = 0
    acc = MetricAccumulator(2, metrics=("dice",))
    for p, t in ((empty, empty), (half, blob), (blob, empty)):  # both empty, half found, false alarm
        acc.update(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None])
    d = acc.compute()["dice"]
    assert d["mean"] == pytest.approx((2 * 8 / (8 + 16) + 0.0) / 2)
    assert d["images"] == 2 and d["empty_images"] == 1 and d["both_empty"] == 1
    nothing = MetricAccumulator(2, metrics=("dice",))
    nothing.update(torch.from_numpy(empty)[None, None], torch.from_numpy(empty)[None, None])
    assert math.isnan(nothing.compute()["dice"]["mean"])  # nothing measured is not a perfect score


def _write_pairs(root: Path, preds, targets) -> tuple[Path, Path]:
    data, out = root / "data", root / "pred" / "masks"
    for d in (data / "images", data / "masks", out):
        d.mkdir(parents=True)
    for i, (p, t) in enumerate(zip(preds, targets)):
        Image.fromarray(np.full(t.shape, 100, np.uint8)).save(data / "images" / f"c{i}.png")
        Image.fromarray(t.astype(np.uint8)).save(data / "masks" / f"c{i}.png")
        Image.fromarray(p.astype(np.uint8)).save(out / f"c{i}.png")
    return data, root / "pred"


def test_evaluate_reports_what_mean_dice_covers(tmp_path):
    preds, targets, k = _half_absent_set()
    data, pred = _write_pairs(tmp_path, preds, targets)
    summary = evaluate_folder(pred, data, tmp_path / "ev", num_classes=k, hd95=False)
    expected, per_class = _independent_dice(preds, targets, k)
    assert summary["mean_dice"] == pytest.approx(expected)
    over = summary["mean_dice_over"]
    assert (over["classes"], over["of_classes"], over["images"]) == (3, 6, 4)
    assert over["classes_absent_everywhere"] == ["class_4", "class_5", "class_6"]
    saved = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert "left out" in saved["convention"] and saved["mean_dice_over"]["both_empty_pairs"] == 12
    with open(tmp_path / "ev" / "per_class.csv") as f:
        rows = {r["class_name"]: r for r in csv.DictReader(f)}
    assert float(rows["class_2"]["dice_mean"]) == pytest.approx(per_class[2], rel=1e-5)
    assert rows["class_5"]["images"] == "0" and rows["class_5"]["images_both_empty"] == "4"
    with open(tmp_path / "ev" / "per_image.csv") as f:
        cells = [r["dice"] for r in csv.DictReader(f) if r["class"] == "5"]
    assert cells and all(c in ("", "nan") for c in cells)
    printed = CliRunner().invoke(app, ["evaluate", str(pred), str(data), "--out", str(tmp_path / "ev2"),
                                       "--num-classes", str(k), "--no-hd95"])
    assert printed.exit_code == 0, printed.output
    assert f"mean Dice {expected:.4f} over 3 of 6" in printed.output
    assert "absent from every image and prediction, left out: class_4, class_5, class_6" in printed.output
    assert "both empty = left out" in printed.output


# ---- mask kind ----------------------------------------------------------------------------------

def _atlas(shape, k: int, seed: int = 0, jitter: float = 0.0, base_seed: int = 0) -> np.ndarray:
    """A region label map: k contiguous ids, each one convex blob, tiling an ellipse/ellipsoid."""
    base = np.random.default_rng(base_seed).uniform(-0.75, 0.75, (k, len(shape)))
    seeds = base + np.random.default_rng(seed).normal(0, jitter, base.shape)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    points = np.stack(grids, -1)
    nearest = ((points[..., None, :] - seeds) ** 2).sum(-1).argmin(-1) + 1
    labels = np.where(sum(g**2 for g in grids) <= 0.9, nearest, 0)
    present = np.unique(labels[labels > 0])
    lut = np.zeros(k + 1, np.int64)
    lut[present] = np.arange(1, len(present) + 1)
    return lut[labels].astype(np.uint8)




def test_many_class_label_maps_are_classes_and_instance_ids_instances(tmp_path):
    atlases = [_atlas((48, 56), 40, seed=s, jitter=0.02) for s in range(4)]
    report = check_dataset(png_mask_folder(tmp_path / "atlas", atlases))
    assert report.ok and report.stats["mask_kind"] == "classes"  # read as instances before
    assert report.stats["num_classes"] == int(max(a.max() for a in atlases)) + 1 > 30
    assert "tile" in report.stats["mask_kind_reason"]
    assert "mask kind classes: each id forms one or a few regions" in report.format_stats()
    cells = load_dataset("synthetic-cells", size=96, count=4, seed=3)
    report = check_dataset(png_mask_folder(tmp_path / "inst", [s.instances for s in cells.samples]))
    assert report.stats["mask_kind"] == "instances" and report.stats["num_classes"] == 2
    semantic = load_dataset("synthetic-cells", size=96, count=4, num_classes=4, seed=3)
    report = check_dataset(png_mask_folder(tmp_path / "sem", [s.mask[0] for s in semantic.samples]))
    assert report.stats["mask_kind"] == "classes" and report.stats["num_classes"] == 4
    tissue = [_atlas((48, 56), 40, base_seed=s) for s in range(4)]  # cells tiling a tissue: sizes at random
    report = check_dataset(png_mask_folder(tmp_path / "tissue", tissue))
    assert report.stats["mask_kind"] == "instances" and "size" in report.stats["mask_kind_reason"]
    forced = check_dataset(tmp_path / "atlas", mask_kind="instances")
    assert forced.stats["mask_kind"] == "instances" and forced.stats["mask_kind_reason"] == "mask_kind=instances given"


def test_ids_unique_per_mask_and_palette_masks(tmp_path):
    rng = np.random.default_rng(0)
    masks = []
    for i in range(3):  # one numbering across the dataset: no id occurs in two masks
        m = np.zeros((40, 40), np.uint16)
        for j in range(12):
            y, x = (j // 4) * 10, (j % 4) * 10
            m[y:y + rng.integers(3, 9), x:x + rng.integers(3, 9)] = 1 + 12 * i + j
        masks.append(m)
    assert decide_mask_kind(profile_masks(masks)).kind == "instances"
    folder = tmp_path / "pal"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(2):
        Image.fromarray(np.full((30, 30), 9, np.uint8)).save(folder / "images" / f"c{i}.png")
        labels = np.zeros((30, 30), np.uint8)
        for j in range(20):  # 20 small squares, ids unrelated to anything: only the palette says classes
            labels[(j // 5) * 7:(j // 5) * 7 + 3, (j % 5) * 6:(j % 5) * 6 + 3] = (j * 7 + i) % 20 + 1
        img = Image.fromarray(labels, mode="P")
        img.putpalette(list(rng.integers(0, 255, 768).astype(np.uint8)))
        img.save(folder / "masks" / f"c{i}.png")
    report = check_dataset(folder)
    assert report.stats["mask_kind"] == "classes" and "palette" in report.stats["mask_kind_reason"]


def _volume_folder(root: Path, labels: np.ndarray) -> Path:
    meta = VolumeMeta(spacing=(1.0, 1.0, 1.0))
    write_image(root / "images" / "subject.nii.gz", (labels[None] * 10).astype(np.float32), meta)
    write_mask(root / "masks" / "subject.nii.gz", labels[None], meta)
    return root


def test_single_volume_atlas_is_classes_and_single_volume_instances_are_not(tmp_path):
    atlas = _atlas((28, 32, 30), 30, base_seed=5)
    assert len(np.unique(atlas)) == 31
    runner = CliRunner()
    out = runner.invoke(app, ["check-data", str(_volume_folder(tmp_path / "atlas", atlas))])
    assert out.exit_code == 0, out.output
    assert "masks: classes, 31 classes" in out.output and "tile" in out.output
    cells = load_dataset("synthetic-cells", size=32, count=1, dims=3, seed=2).samples[0].instances
    assert len(np.unique(cells)) > 20
    report = check_dataset(_volume_folder(tmp_path / "cells", cells))
    assert report.stats["mask_kind"] == "instances", report.stats["mask_kind_reason"]


def test_training_builds_one_output_per_region_without_num_classes(tmp_path):
    atlases = [_atlas((40, 40), 24, seed=s, jitter=0.02) for s in range(4)]
    data = png_mask_folder(tmp_path / "atlas", atlases)
    k = int(max(a.max() for a in atlases)) + 1
    cfg = TrainConfig().with_overrides([
        f"data.images={data}", "model.kwargs.features=[4,8]", "data.patch_size=[32,32]", "data.batch_size=2",
        "data.num_workers=0", "data.samples_per_epoch=2", "epochs=1", "progress=quiet", "tensorboard=false",
        "overlays=0", f"out_dir={tmp_path}", "name=run", "data.augmentation=none", "loss.name=ce",
    ])
    result = train(cfg)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == k
    from unetkit.io.checkpoint import load_model

    model = load_model(result.run_dir / "last.safetensors")
    assert model(torch.zeros(1, 1, 32, 32)).shape[1] == k
    assert 0 < result.history[-1]["val_scored_classes"] <= k - 1


# ---- real data ------------------------------------------------------------------------------------

@pytest.mark.skipif(SHARED is None, reason="shared real data not present")
def test_real_nuclei_are_instances_and_lesion_masks_binary(tmp_path):
    nuclei = SHARED / "dsb2018-nuclei"
    folder = tmp_path / "dsb"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    shutil.copy(nuclei / "image.tif", folder / "images" / "nuclei.tif")
    shutil.copy(nuclei / "instances.tif", folder / "masks" / "nuclei.tif")
    report = check_dataset(folder)
    assert report.stats["mask_kind"] == "instances" and report.stats["num_classes"] == 2
    lesions = check_dataset(SHARED / "pyradiomics-lesions", spatial_dims=3, allow_empty=True)
    assert lesions.stats["mask_kind"] == "binary" and lesions.stats["cases"] == 5
