"""Cross-validation (train_folds), ensembles through the one Predictor path, post-processing selection."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import unetkit
from unetkit.cli.main import app
from unetkit.data.io import read_labels, read_mask
from unetkit.data.normalize import normalize_image
from unetkit.data.splits import load_splits
from unetkit.errors import ConfigError, Interrupted
from unetkit.evaluation.postprocess import apply_postprocessing, keep_largest_component, select_postprocessing
from unetkit.inference.predictor import Predictor
from unetkit.io.checkpoint import CheckpointError, read_metadata, update_extra
from unetkit.training import Callback, TrainConfig, train_folds
from unetkit.training.cv import fold_state

FOLDS = 3


def cv_config(tmp_path: Path, name: str = "cv", **overrides) -> TrainConfig:
    cfg = TrainConfig().with_overrides([
        "data.dataset=synthetic-cells", "data.dataset_options={size: 32, count: 6, num_classes: 3}",
        "data.patch_size=[32,32]", "data.batch_size=2", "data.num_workers=0", "data.augmentation=none",
        "model.num_classes=3", "model.kwargs.features=[4,8]", "optim.lr=3e-3", "epochs=1", "progress=quiet",
        "tensorboard=false", "overlays=0", f"out_dir={tmp_path}", f"name={name}", f"data.num_folds={FOLDS}",
    ])
    return cfg.with_overrides([f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    result = train_folds(cv_config(tmp_path_factory.mktemp("cv")))
    assert result.complete and sorted(result.trained) == list(range(FOLDS)) and not result.skipped
    return result.run_dir


def _dice(pred: np.ndarray, true: np.ndarray, cls: int) -> float:
    """NaN when the class is in neither mask (left out of means, as unetkit.metrics does)."""
    p, t = pred == cls, true == cls
    return np.nan if p.sum() + t.sum() == 0 else 2 * float((p & t).sum()) / float(p.sum() + t.sum())


# ---- folds --------------------------------------------------------------------------------------
def test_each_fold_is_a_run_in_its_own_subfolder_validated_on_its_fold(cv_run: Path) -> None:
    folds = load_splits(cv_run / "splits.json")["folds"]
    assert len(folds) == FOLDS
    all_val = [n for f in folds for n in f["val"]]
    assert sorted(all_val) == sorted(set(all_val)) and len(all_val) == 6  # every case validated exactly once
    for i, split in enumerate(folds):
        fold = cv_run / f"fold_{i}"
        assert (fold / "last.safetensors").is_file() and (fold / "report.json").is_file()
        assert load_splits(fold / "splits.json")["folds"][0] == split  # the fold trained on its own split
        predicted = sorted(p.name.split(".")[0] for p in (fold / "validation").iterdir())
        assert predicted == sorted(split["val"])
    manifest = json.loads((cv_run / "ensemble.json").read_text())
    assert manifest["models"] == [f"fold_{i}/last.safetensors" for i in range(FOLDS)]
    assert (cv_run / "cv_summary.csv").read_text().startswith("scope,class,cases,dice_mean")


def test_out_of_fold_predictions_and_summary_match_an_independent_computation(cv_run: Path) -> None:
    folds = load_splits(cv_run / "splits.json")["folds"]
    data = cv_run / "data"
    per_class: dict[int, list[float]] = {1: [], 2: []}
    fold0 = Predictor.from_checkpoint(cv_run / "fold_0" / "last.safetensors", device="cpu", postprocessing=[])
    for i, split in enumerate(folds):
        for name in split["val"]:
            pred = read_mask(next((cv_run / f"fold_{i}" / "validation").glob(f"{name}.*")))
            true = read_mask(data / "masks" / f"{name}.png")
            if i == 0:  # the stored mask is the fold's final model's prediction
                image = unetkit.data.io.read_image(data / "images" / f"{name}.tif")
                np.testing.assert_array_equal(pred, fold0.predict_array(image).labels[0])
            for c in per_class:
                per_class[c].append(_dice(pred, true, c))
    summary = json.loads((cv_run / "cv_summary.json").read_text())
    pooled = summary["pooled"]["dice"]
    for c, values in per_class.items():
        assert pooled["per_class"][str(c)]["mean"] == pytest.approx(np.nanmean(values), abs=1e-6)
    assert pooled["mean"] == pytest.approx(np.nanmean([np.nanmean(v) for v in per_class.values()]), abs=1e-6)
    assert [f["num_images"] for f in summary["folds"]] == [len(f["val"]) for f in folds]


class _CrashOnce(Callback):
    """Stops fold 1 at the start of its second epoch, once (a killed run)."""

    def __init__(self) -> None:
        self.armed = True
        self.started: list[tuple[str, int]] = []

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.started.append((trainer.run_dir.name, epoch))
        if self.armed and trainer.run_dir.name == "fold_1" and epoch == 2:
            self.armed = False
            raise KeyboardInterrupt


def test_resume_skips_finished_folds_and_continues_an_interrupted_one(tmp_path: Path) -> None:
    cfg = cv_config(tmp_path, epochs=2)
    first = train_folds(cfg, folds=[0])
    run = first.run_dir
    assert not first.complete and not (run / "ensemble.json").exists()
    assert fold_state(run / "fold_0") == "predicted" and not (run / "fold_1").exists()
    fold0_state = (run / "fold_0" / "checkpoints" / "last.pt").read_bytes()
    crash = _CrashOnce()
    with pytest.raises(Interrupted):  # the Trainer turns Ctrl-C into Interrupted, keeping its last checkpoint
        train_folds(None, resume=run, folds=[1], callbacks=[crash])
    assert fold_state(run / "fold_1") == "started"
    epoch1 = (run / "fold_1" / "metrics.csv").read_text().splitlines()
    assert len(epoch1) == 2  # header + epoch 1
    crash.started.clear()
    result = train_folds(None, resume=run, folds=[2], callbacks=[crash])  # folds 0, 1 asked before
    assert crash.started == [("fold_1", 2), ("fold_2", 1), ("fold_2", 2)]  # fold 1 went on from epoch 2
    assert result.skipped == [0] and sorted(result.trained) == [1, 2] and result.complete
    assert (run / "fold_0" / "checkpoints" / "last.pt").read_bytes() == fold0_state  # not retrained
    assert [r["epoch"] for r in result.trained[1].history] == [1, 2]  # resumed, not restarted
    assert (run / "fold_1" / "metrics.csv").read_text().splitlines()[:2] == epoch1
    assert json.loads((run / "cv.json").read_text())["folds"] == [0, 1, 2]
    again = train_folds(None, resume=run)
    assert again.skipped == [0, 1, 2] and not again.trained and again.complete


def test_cross_validation_options_are_checked_before_any_folder_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        train_folds(cv_config(tmp_path), folds=[3])
    with pytest.raises(ConfigError, match="needs at least 7 cases; there are 6"):
        train_folds(cv_config(tmp_path, **{"data.num_folds": 7}))
    assert not (tmp_path / "cv").exists()
    with pytest.raises(ConfigError, match="not a cross-validation run"):
        train_folds(None, resume=tmp_path)


# ---- ensembles ------------------------------------------------------------------------------------
def _model_files(tmp_path: Path, count: int = 3, **extra) -> list[Path]:
    meta = {"preprocess": {"mode": "zscore"}, "mode": "multiclass", "patch_size": [32, 32], "in_channels": 1, **extra}
    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = unetkit.create_model("unet", features=(4, 8), num_classes=3)
        paths.append(unetkit.save_model(model, tmp_path / f"m{seed}.safetensors", extra=meta))
    return paths


def test_ensemble_probabilities_are_the_mean_of_the_single_models(tmp_path: Path) -> None:
    paths = _model_files(tmp_path)
    image = np.random.default_rng(0).random((1, 45, 70)).astype(np.float32) * 500
    # windows smaller than the image, Gaussian blending and TTA: against the single models' maps
    ensemble = Predictor.from_checkpoints(paths, device="cpu", roi_size=32, tta=True)
    singles = [Predictor.from_checkpoint(p, device="cpu", roi_size=32, tta=True).predict_array(image) for p in paths]
    pred = ensemble.predict_array(image)
    mean = np.mean([s.probabilities for s in singles], axis=0)
    np.testing.assert_allclose(pred.probabilities, mean, atol=1e-5)
    np.testing.assert_array_equal(pred.labels[0], mean.argmax(0))
    # one window covering the image: against plain forward passes of the models
    image = image[:, :40, :64]
    whole = Predictor.from_checkpoints(paths, device="cpu", roi_size=(40, 64), blend="constant").predict_array(image)
    x = torch.from_numpy(normalize_image(image, {"mode": "zscore"}))[None]
    with torch.no_grad():
        direct = [torch.softmax(unetkit.load_model(p)(x), 1)[0].numpy() for p in paths]
    np.testing.assert_allclose(whole.probabilities, np.mean(direct, axis=0), atol=1e-5)


def test_ensemble_members_must_agree_and_the_error_names_the_files(tmp_path: Path) -> None:
    paths = _model_files(tmp_path, count=1)
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(0)
    two = unetkit.save_model(unetkit.create_model("unet", features=(4, 8), num_classes=2), other / "two.safetensors",
                             extra={"preprocess": {"mode": "zscore"}, "in_channels": 1})
    with pytest.raises(CheckpointError, match=rf"{two}: num_classes is 2 but {paths[0]} has 3"):
        Predictor.from_checkpoints([paths[0], two], device="cpu")
    norm = _model_files(other, count=1, preprocess={"mode": "percentile", "lower": 1.0, "upper": 99.0})[0]
    with pytest.raises(CheckpointError, match=rf"{norm}: preprocessing is .* but {paths[0]} has"):
        Predictor.from_checkpoints([paths[0], norm], device="cpu")


def test_predict_on_a_run_folder_uses_every_fold(cv_run: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_run(cv_run, device="cpu")
    assert len(predictor.models) == FOLDS
    image = unetkit.data.io.read_image(cv_run / "data" / "images" / "cells_000.tif")
    singles = [Predictor.from_checkpoint(cv_run / f"fold_{i}" / "last.safetensors", device="cpu").predict_array(image)
               for i in range(FOLDS)]
    np.testing.assert_allclose(predictor.predict_array(image).probabilities,
                               np.mean([s.probabilities for s in singles], axis=0), atol=1e-5)
    out = CliRunner().invoke(app, ["predict", str(cv_run), str(cv_run / "data" / "images" / "cells_000.tif"),
                                   "--out", str(tmp_path / "pred"), "--no-overlay", "--probabilities"])
    assert out.exit_code == 0, out.output
    assert f"ensemble of {FOLDS} models" in out.output
    written = read_labels(tmp_path / "pred" / "masks" / "cells_000.tif")
    np.testing.assert_array_equal(written, predictor.predict_array(image).labels[0])
    # several model files on the command line are an ensemble too; evaluate takes them as well
    files = [str(cv_run / f"fold_{i}" / "last.safetensors") for i in range(2)]
    out = CliRunner().invoke(app, ["evaluate", *files, str(cv_run / "data"), "--out", str(tmp_path / "ev"),
                                   "--no-hd95"])
    assert out.exit_code == 0, out.output
    assert "ensemble of 2 models" in out.output
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["models"] == 2


# ---- post-processing --------------------------------------------------------------------------------
def _specks(shape=(64, 64)) -> np.ndarray:
    specks = np.zeros(shape, bool)
    for r in range(20, 62, 3):
        for c in range(0, 62, 3):
            specks[r:r + 2, c:c + 2] = True
    return specks


def test_selection_rejects_a_step_that_hurts_a_class_and_accepts_one_that_helps() -> None:
    blob = np.zeros((64, 64), np.uint8)
    blob[5:15, 5:15] = 1
    blob[5:9, 15:19] = 2  # a small class-2 object touching the class-1 one: one foreground component
    noisy = blob.copy()
    noisy[_specks()] = 1  # class 1: one true object and many false specks
    with_class2 = blob.copy()
    with_class2[5:9, 40:44] = 2  # a second, correct class-2 object apart from the rest
    pairs = [(noisy, blob), (noisy, blob), (with_class2, with_class2)]
    choice = select_postprocessing(pairs, num_classes=3)
    by_op = {t["step"]["op"] + str(t["step"].get("classes", "")): t for t in choice["trials"]}
    merged = by_op["keep_largest_foreground"]
    # keeping the largest foreground component raises the mean Dice but deletes class 2 in one case
    assert merged["mean_dice"] > choice["baseline"]["mean_dice"] and not merged["accepted"]
    lost_one = 2 * 16 / (16 + 32)  # case 3 keeps one of its two 16-pixel class-2 objects
    assert merged["per_class"]["2"] == pytest.approx((2 + lost_one) / 3) and "class 2 gets worse" in merged["reason"]
    assert choice["steps"] == [{"op": "keep_largest", "classes": [1]}]
    speck_dice = _dice(noisy, blob, 1)
    assert choice["baseline"]["per_class"]["1"] == pytest.approx((2 * speck_dice + 1) / 3)
    assert choice["final"]["mean_dice"] == pytest.approx(1.0)


def test_small_object_removal_uses_sizes_from_the_references_and_is_rejected_when_it_hurts() -> None:
    true = np.zeros((64, 64), np.uint8)
    true[10:20, 10:20] = 1
    true[40:50, 40:50] = 1
    pred = true.copy()
    pred[30, 5] = pred[5, 60] = 1  # two one-pixel false positives
    choice = select_postprocessing([(pred, true)], num_classes=1)
    # two real objects: keeping the largest would lose one; removing specks under 50 px helps
    assert choice["steps"] == [{"op": "remove_small", "classes": [1], "min_size": 50}]
    tiny = true.copy()
    tiny[30:32, 5:7] = 1  # now a real 4-pixel object: the data's sizes make the threshold 2
    sizes = select_postprocessing([(tiny, tiny)], num_classes=1)["trials"]
    thresholds = [t["step"]["min_size"] for t in sizes if t["step"]["op"] == "remove_small"]
    assert thresholds == [int(0.5 * np.percentile([4, 100, 100], 5))]


def _fragmented_model(path: Path, image: np.ndarray) -> Path:
    """A random model whose head biases split `image` between the 3 classes (many components)."""
    torch.manual_seed(0)
    model = unetkit.create_model("unet", features=(4, 8), num_classes=3).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 3][-1]
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize_image(image, {"mode": "zscore"}))[None])[0]
        head.bias[1] += float(torch.quantile(logits[0] - logits[1], 0.5))
        head.bias[2] += float(torch.quantile(logits[0] - logits[2], 0.3))
    return unetkit.save_model(model, path, extra={"preprocess": {"mode": "zscore"}, "mode": "multiclass",
                                                  "patch_size": [40, 40], "in_channels": 1})


def test_the_plan_is_stored_in_the_model_and_applied_by_predict(tmp_path: Path) -> None:
    image = np.random.default_rng(3).random((1, 40, 40)).astype(np.float32)
    path = _fragmented_model(tmp_path / "m.safetensors", image)
    before = read_metadata(path)
    from safetensors.torch import load_file

    weights = load_file(str(path))
    plan = [{"op": "keep_largest", "classes": [1]}, {"op": "fill_holes", "classes": [2]}]
    update_extra(path, {"postprocessing": plan})
    assert read_metadata(path)["extra"] == {**before["extra"], "postprocessing": plan}
    assert all(torch.equal(weights[k], v) for k, v in load_file(str(path)).items())  # weights untouched
    raw = Predictor.from_checkpoint(path, device="cpu", postprocessing=[]).predict_array(image).labels[0]
    applied = Predictor.from_checkpoint(path, device="cpu").predict_array(image).labels[0]
    np.testing.assert_array_equal(applied, apply_postprocessing(raw, plan))
    assert not np.array_equal(applied, raw)  # the plan changes this prediction, so the check can fail
    np.testing.assert_array_equal(keep_largest_component(applied, [1]) == 1, applied == 1)
    from unetkit.data.io import write_image

    write_image(tmp_path / "img.tif", image)
    out = CliRunner().invoke(app, ["predict", str(path), str(tmp_path / "img.tif"), "--out", str(tmp_path / "p"),
                                   "--no-overlay"])
    assert out.exit_code == 0 and "post-processing from" in out.output and "largest component of class 1" in out.output
    np.testing.assert_array_equal(read_labels(tmp_path / "p" / "masks" / "img.tif"), applied)


def test_train_command_line_routes_folds_and_resume(cv_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", "--dataset", "synthetic-cells", "--set", "data.dataset_options={size: 32, count: 6}",
            "--num-classes", "1", "--out-dir", str(tmp_path), "--name", "cli", "--progress", "quiet"]
    out = runner.invoke(app, [*args, "--folds", "7"])
    assert out.exit_code == 1 and "needs at least 7 cases; there are 6" in out.output
    out = runner.invoke(app, [*args, "--folds", "3", "--fold", "3"])
    assert out.exit_code == 1 and "out of range: the run has 3 folds" in out.output
    assert not (tmp_path / "cli").exists()
    before = (cv_run / "ensemble.json").read_bytes()
    out = runner.invoke(app, ["train", "--resume", str(cv_run)])  # every fold finished: nothing to do
    assert out.exit_code == 0 and f"cross-validation run folder: {cv_run}" in out.output, out.output
    assert (cv_run / "ensemble.json").read_bytes() == before
    out = runner.invoke(app, ["train", "--resume", str(cv_run / "fold_0"), "--fold", "1"])
    assert out.exit_code == 1 and "--fold N only to add a fold to a cross-validation run" in out.output
