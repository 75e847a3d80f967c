"""Post-processing, measurements, object matching, evaluate_folder and the evaluate CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.measure import regionprops
from typer.testing import CliRunner

import unetkit
from unetkit.cli.main import app
from unetkit.evaluation.evaluate import evaluate_folder
from unetkit.evaluation.measure import match_instances, measure_objects, write_objects_csv
from unetkit.evaluation.postprocess import (connected_components, fill_holes, instances_from_labels,
                                            remove_small_objects, split_touching)


def _blobs(seed: int = 0, shape=(64, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), 2) > 0.52


def test_components_and_small_objects_match_scipy() -> None:
    mask = _blobs()
    labels, count = connected_components(mask)
    ref, ref_count = ndi.label(mask, structure=np.ones((3, 3)))
    assert count == ref_count and np.array_equal(labels, ref)
    cleaned = remove_small_objects(mask.astype(np.uint8), 20)
    sizes = np.bincount(ref.ravel())
    expected = np.isin(ref, np.nonzero(sizes >= 20)[0]) & mask
    assert np.array_equal(cleaned.astype(bool), expected)


def test_fill_holes_per_class() -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[2:9, 2:9] = 2
    labels[4:6, 4:6] = 0  # hole in class 2
    labels[10, 10] = 1
    filled = fill_holes(labels)
    assert (filled[4:6, 4:6] == 2).all() and filled[10, 10] == 1 and (filled[0] == 0).all()
    vol = np.zeros((7, 7, 7), bool)
    vol[1:6, 1:6, 1:6] = True
    vol[3, 3, 3] = False
    assert fill_holes(vol.astype(np.uint8))[3, 3, 3] == 1


def test_watershed_splits_two_touching_discs() -> None:
    mask = np.zeros((60, 90), bool)
    mask[disk((30, 30), 15)] = True
    mask[disk((30, 56), 15)] = True  # overlapping discs: one connected component
    assert connected_components(mask)[1] == 1
    instances = split_touching(mask, min_distance=7)
    assert instances.max() == 2 and np.array_equal(instances > 0, mask)
    assert instances[30, 25] != instances[30, 60]
    assert instances_from_labels(mask.astype(np.uint8), split=True).max() == 2


def test_measurements_match_regionprops(tmp_path: Path) -> None:
    classes = np.zeros((64, 80), np.uint8)
    classes[_blobs(1)] = 1
    classes[40:55, 5:25] = 2
    instances = instances_from_labels(classes)
    spacing = (0.5, 0.5)
    rows = measure_objects(instances, classes, spacing=spacing)
    props = regionprops(instances)
    assert len(rows) == len(props) > 3
    for row, prop in zip(rows, props):
        assert row["id"] == prop.label
        assert row["pixels"] == prop.area
        assert row["area"] == pytest.approx(prop.area * 0.25)
        assert row["perimeter"] == pytest.approx(prop.perimeter * 0.5)
        assert row["equivalent_diameter"] == pytest.approx(prop.equivalent_diameter_area * 0.5)
        assert (row["centroid_y"], row["centroid_x"]) == pytest.approx(tuple(c * 0.5 for c in prop.centroid))
        assert (row["bbox_y0"], row["bbox_x0"], row["bbox_y1"], row["bbox_x1"]) == prop.bbox
        assert row["class"] == int(np.bincount(classes[instances == prop.label]).argmax())
    path = write_objects_csv(rows, tmp_path / "objects.csv")
    with open(path) as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows) and float(read[0]["area"]) == pytest.approx(rows[0]["area"], rel=1e-5)


def test_3d_measurements_match_regionprops() -> None:
    vol = np.zeros((12, 14, 16), np.int32)
    vol[2:6, 3:9, 4:10] = 1
    vol[8:11, 1:4, 10:15] = 2
    rows = measure_objects(vol, spacing=(2.0, 1.0, 1.0), surface=True)
    for row, prop in zip(rows, regionprops(vol)):
        assert row["volume"] == pytest.approx(prop.area * 2.0)
        assert row["centroid_z"] == pytest.approx(prop.centroid[0] * 2.0)
        assert row["equivalent_diameter"] == pytest.approx((6 * row["volume"] / np.pi) ** (1 / 3))
        assert (row["bbox_z0"], row["bbox_y0"], row["bbox_x0"], row["bbox_z1"], row["bbox_y1"], row["bbox_x1"]) == prop.bbox
    assert 0 < rows[0]["surface_area"] < 2 * (8 * 6 + 8 * 6 + 6 * 6) * 1.1


def test_match_instances_hand_made() -> None:
    true = np.zeros((10, 20), np.int32)
    true[1:5, 1:5] = 1     # matched exactly
    true[1:5, 10:14] = 2   # matched with IoU 12/16 = 0.75
    true[6:9, 1:4] = 3     # missed
    pred = np.zeros_like(true)
    pred[1:5, 1:5] = 7
    pred[1:5, 11:14] = 3
    pred[7:9, 16:19] = 9   # false positive
    scores = match_instances(pred, true)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["mean_matched_iou"] == pytest.approx((1.0 + 0.75) / 2)
    half = np.zeros_like(true)
    half[1:5, 1:3] = 1  # IoU 0.5 exactly counts; below does not
    assert match_instances(half, true * (true == 1))["tp"] == 1
    assert match_instances(half[:, :] * 0, true * 0)["f1"] == 1.0
    assert match_instances(np.zeros_like(true), true)["recall"] == 0.0


def _labelled_folder(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros((32, 40), np.uint8)
        mask[disk((16, 12 + 4 * i), 7)] = 255
        image = (mask * 0.6 + rng.random(mask.shape) * 80).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


def test_evaluate_predictions_folder(tmp_path: Path) -> None:
    data = _labelled_folder(tmp_path / "data")
    preds = tmp_path / "pred" / "masks"
    preds.mkdir(parents=True)
    expected = []
    for i in range(3):
        true = np.array(Image.open(data / "masks" / f"case{i}.png")) > 0
        pred = np.roll(true, i, axis=1)  # shifted by i pixels
        Image.fromarray(pred.astype(np.uint8)).save(preds / f"case{i}.png")
        expected.append(2 * (pred & true).sum() / (pred.sum() + true.sum()))
    summary = evaluate_folder(tmp_path / "pred", data, tmp_path / "eval", objects=True)
    with open(tmp_path / "eval" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["dice"]) for r in rows] == pytest.approx(expected, rel=1e-5)
    assert summary["mean_dice"] == pytest.approx(np.mean(expected))
    assert float(rows[0]["hd95"]) == 0.0 and float(rows[2]["hd95"]) > 0
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["images"] == 3 and saved["objects"]["tp"] == 3
    assert (tmp_path / "eval" / "dice.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "per_class.csv").read_text().startswith("class,class_name,images,dice_mean")
    with pytest.raises(FileExistsError):
        evaluate_folder(tmp_path / "pred", data, tmp_path / "eval")


def test_cli_evaluate_with_model_and_missing_predictions(tmp_path: Path) -> None:
    data = _labelled_folder(tmp_path / "data", n=2)
    model = unetkit.create_model("unet", features=(4, 8), num_classes=1)
    ckpt = unetkit.save_model(model, tmp_path / "m.safetensors", extra={"preprocess": {"mode": "minmax"}})
    runner = CliRunner()
    ok = runner.invoke(app, ["evaluate", str(ckpt), str(data), "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert "mean Dice" in ok.output and (tmp_path / "ev" / "summary.json").is_file()
    empty = tmp_path / "nopred"
    empty.mkdir()
    missing = runner.invoke(app, ["evaluate", str(empty), str(data), "--out", str(tmp_path / "ev2")])
    assert missing.exit_code == 1 and "no predicted mask" in missing.output
    assert not (tmp_path / "ev2").exists() or not any((tmp_path / "ev2").iterdir())
