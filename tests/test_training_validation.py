"""Validation that cannot lie: region splits of single-image/volume folders, empty validation,
the monitor checked before any epoch, unmeasured values never 0.0, the time budget."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from unetkit.data.io import VolumeMeta, write_image, write_mask
from unetkit.data.splits import region_split
from unetkit.errors import ConfigError, DataError
from unetkit.training import TrainConfig, Trainer, train
from unetkit.training.run import build_datasets


def _single_case_folder(root, dims: int):
    """One image (2D 40x56) or volume (3D 12x20x28) with blobs, in images/ + masks/."""
    rng = np.random.default_rng(0)
    shape = (40, 56) if dims == 2 else (12, 20, 28)
    mask = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for _ in range(6):
        centre = [rng.integers(3, s - 3) for s in shape]
        mask[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 9] = 1
    image = (mask * 120 + rng.normal(60, 10, shape)).clip(0, 255).astype(np.uint8)[None]
    if dims == 2:
        write_image(root / "images" / "one.png", image)
        write_mask(root / "masks" / "one.png", mask)
    else:
        meta = VolumeMeta(spacing=(3.0, 1.0, 1.0))
        write_image(root / "images" / "one.nii.gz", image, meta)
        write_mask(root / "masks" / "one.nii.gz", mask, meta)
    return shape


def _config(tmp_path, data, dims: int, **overrides) -> TrainConfig:
    patch = [16, 16] if dims == 2 else [8, 8, 8]
    cfg = TrainConfig().with_overrides([
        f"data.images={data}", f"model.spatial_dims={dims}", "model.num_classes=1", "model.kwargs.features=[4,8]",
        f"data.patch_size={patch}", "data.batch_size=2", "data.samples_per_epoch=4", "data.num_workers=0",
        "data.augmentation=none", "epochs=2", "progress=quiet", "tensorboard=false", "overlays=0",
        f"out_dir={tmp_path}", "name=run", "optim.lr=1e-2",
    ])
    return cfg.with_overrides([f"{k}={v}" for k, v in overrides.items()])


def test_region_split_holds_out_the_far_end_of_the_longest_axis() -> None:
    split = region_split((40, 56), 0.25)
    assert split == {"axis": 1, "side": "far", "train": [[0, 40], [0, 42]], "val": [[0, 40], [42, 56]]}
    assert region_split((48, 512, 512), 0.3)["val"] == [[0, 48], [0, 512], [358, 512]]  # ties: last axis
    with pytest.raises(ConfigError, match="val_fraction"):
        region_split((10, 10), 0.0)


def test_region_split_with_a_mask_holds_out_foreground_on_both_sides() -> None:
    mask = np.zeros((40, 100), bool)
    mask[5:10, 2:30] = True  # objects only on the left: the default far-right slab would hold none
    mask[30:35, 2:30] = True
    split = region_split(mask.shape, 0.2, mask)
    box = tuple(slice(a, b) for a, b in split["val"])
    train = tuple(slice(a, b) for a, b in split["train"])
    assert mask[box].any() and mask[train].any()
    assert (split["axis"], split["side"]) == (0, "far")  # rows 32..40 hold 3/10 of the foreground
    assert region_split(mask.shape, 0.2, np.zeros_like(mask))["val"] == [[0, 40], [80, 100]]  # no fg: default


def test_region_split_of_one_compact_object_cuts_through_it() -> None:
    """One tumour in the middle of a volume (lung2 of pyradiomics-lesions: no 20% end slab of any
    axis touches it). The old split fell back to an empty slab, so validation Dice was 0 at every
    epoch and `best` was epoch 1. Now the slab grows (up to half an axis) until it holds 20% of the
    object, the thinnest such slab winning; training keeps the rest."""
    mask = np.zeros((30, 100, 80), bool)
    mask[12:20, 45:65, 30:50] = True  # z 12..20 of 30, y 45..65 of 100, x 30..50 of 80
    split = region_split(mask.shape, 0.2, mask)
    val = tuple(slice(a, b) for a, b in split["val"])
    train = tuple(slice(a, b) for a, b in split["train"])
    share = mask[val].sum() / mask.sum()
    assert 0.2 <= share < 1 and mask[train].any()
    # independently: the thinnest end slab (as a fraction of its axis) holding >= 20% of the object
    best = None
    for axis, size in enumerate(mask.shape):
        profile = mask.sum(axis=tuple(i for i in range(3) if i != axis))
        for side, prof in (("far", profile[::-1]), ("near", profile)):
            n = next(k + 1 for k in range(size) if prof[:k + 1].sum() >= 0.2 * mask.sum())
            if best is None or n / size < best[0]:
                best = (n / size, axis, side, n)
    assert (split["axis"], split["side"]) == best[1:3]
    lo, hi = split["val"][best[1]]
    assert hi - lo == best[3] <= mask.shape[best[1]] // 2


def test_region_split_does_not_hold_out_a_sliver_of_the_only_object() -> None:
    """brain1 of pyradiomics-lesions: the 20% end slab x 205..256 touched only the last columns of
    the one tumour (x 162..208), so validation scored a few boundary columns (Dice 0 every epoch)
    while the model reached Dice 0.67 on the training part. A slab holding under half of
    val_fraction of the foreground now gives way to the grown slab holding val_fraction of it."""
    mask = np.zeros((25, 256, 256), bool)
    mask[11:17, 84:153, 162:209] = True  # the tumour's box; the far x slab holds 4 of its 47 columns
    split = region_split(mask.shape, 0.2, mask)
    val = tuple(slice(a, b) for a, b in split["val"])
    train = tuple(slice(a, b) for a, b in split["train"])
    share = mask[val].sum() / mask.sum()
    assert 0.2 <= share < 1 and mask[train].any()  # old code: 4/47 = 0.085
    # objects all over the image: the plain 20% slab is kept (its share is close to 20%)
    spread = np.zeros((40, 100), bool)
    spread[:, ::10] = True
    assert region_split(spread.shape, 0.2, spread)["val"] == [[0, 40], [80, 100]]


@pytest.mark.parametrize("dims", [2, 3])
def test_single_image_or_volume_folder_validates_on_a_held_out_region(tmp_path, dims: int) -> None:
    shape = _single_case_folder(tmp_path / "data", dims)
    cfg = _config(tmp_path, tmp_path / "data", dims)
    result = train(cfg)
    fold = json.loads((result.run_dir / "splits.json").read_text())["folds"][0]
    from unetkit.data.io import read_labels

    mask = read_labels(next((tmp_path / "data" / "masks").iterdir()), dims) > 0
    expected = region_split(shape, cfg.data.val_fraction, mask)
    assert fold["regions"] == {"train": {"one": expected["train"]}, "val": {"one": expected["val"]}}
    # validation measured something real, every epoch; the best model exists because it was measured
    assert all(np.isfinite(row["val_loss"]) and 0.0 <= row["val_dice"] <= 1.0 for row in result.history)
    assert (result.run_dir / "best.safetensors").is_file() and result.best_epoch >= 1
    # the validation sample is exactly the held-out block; training patches never reach into it
    train_set, val_set, _ = build_datasets(cfg, tmp_path / "again")
    val_shape = [b - a for a, b in expected["val"]]
    assert list(val_set[0]["image"].shape[1:]) == val_shape
    axis, (lo, hi) = expected["axis"], expected["val"][expected["axis"]]
    train_lo = expected["train"][axis][0]
    for i in range(40):  # corners are relative to the training region
        corner = [int(v) for v in train_set[i]["name"].split("@")[1].split(",")]
        start, stop = train_lo + corner[axis], train_lo + corner[axis] + cfg.data.patch_size[axis]
        assert stop <= lo or start >= hi


def test_monitor_that_does_not_exist_fails_before_any_epoch(tmp_path) -> None:
    _single_case_folder(tmp_path / "data", 2)
    cfg = _config(tmp_path, tmp_path / "data", 2, monitor="dcie")
    with pytest.raises(ConfigError, match=r"monitor 'dcie' is not a validation metric; available: .*dice"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # no half-made run folder
    with pytest.raises(ConfigError, match=r"'monitor_ema' must be in \[0, 1\)"):
        train(_config(tmp_path, tmp_path / "data", 2, monitor_ema=1.0))  # would never move off its first value
    assert not (tmp_path / "run").exists()


def test_empty_validation_is_an_error_unless_no_val(tmp_path) -> None:
    _single_case_folder(tmp_path / "data", 2)
    cfg = _config(tmp_path, tmp_path / "data", 2, **{"data.val_fraction": 0.0})
    with pytest.raises(ConfigError, match=r"validation set is empty(.|\n)*--no-val"):
        train(cfg)
    assert not (tmp_path / "run").exists()
    result = train(_config(tmp_path, tmp_path / "data", 2, no_val=True))
    assert (result.run_dir / "last.safetensors").is_file()
    assert not (result.run_dir / "best.safetensors").exists()  # nothing measured, so no "best"
    assert all("val_loss" not in row for row in result.history)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["validation"] is False and report["best_value"] is None


def test_trainer_refuses_an_empty_validation_dataset(tmp_path) -> None:
    _single_case_folder(tmp_path / "data", 2)
    cfg = _config(tmp_path, tmp_path / "data", 2)
    train_set, _, _ = build_datasets(cfg, tmp_path / "x")
    with pytest.raises(ConfigError, match="validation set is empty"):
        Trainer(cfg, train_set, torch.utils.data.Subset(train_set, []), run_dir=tmp_path / "t")


def test_a_spent_budget_stops_after_one_step_then_validates_and_keeps_the_best(tmp_path) -> None:
    _single_case_folder(tmp_path / "data", 2)
    cfg = _config(tmp_path, tmp_path / "data", 2, epochs=50)
    train_set, val_set, _ = build_datasets(cfg, tmp_path / "x")
    trainer = Trainer(cfg, train_set, val_set, run_dir=tmp_path / "t", deadline=time.monotonic())
    result = trainer.fit()
    assert trainer.step == 1 and len(result.history) == 1  # stopped inside the first epoch
    assert math.isfinite(result.history[0]["val_loss"])  # ... after validating what it had
    assert (tmp_path / "t" / "best.safetensors").is_file()
    assert json.loads((tmp_path / "t" / "report.json").read_text())["stopped_by_budget"] is True


def test_in_channels_that_do_not_match_the_images_fail_before_training(tmp_path) -> None:
    _single_case_folder(tmp_path / "data", 2)  # grey images
    cfg = _config(tmp_path, tmp_path / "data", 2, **{"model.in_channels": 3})
    with pytest.raises(DataError, match=r"has 1 channel\(s\) but the model takes in_channels=3"):
        train(cfg)  # check-data's one in_channels check, before any folder is made
    assert not (tmp_path / "run").exists()


def test_a_tie_in_the_monitor_goes_to_the_lower_validation_loss() -> None:
    """Defect (lung2, one tumour): the held-out slab scored Dice 0 at every epoch, so `best` stayed
    the first validated epoch (whole-volume Dice 0.009) although the last (0.085) had a lower
    validation loss. Equal monitor values are now decided by the validation loss; a higher monitor
    value still wins whatever the loss, and a monitored loss has no tie-break."""
    from types import SimpleNamespace

    def run(monitor, rows, ema=0.0):
        stub = SimpleNamespace(cfg=SimpleNamespace(monitor=monitor, early_stop_patience=None, monitor_ema=ema),
                               schedule=SimpleNamespace(validation_result=lambda *a: None), monitor_ema=None,
                               best_value=-math.inf, best_loss=math.inf, best_epoch=0, bad_validations=0)
        for epoch, row in enumerate(rows, 1):
            Trainer._track_best(stub, epoch, dict(row))
        return stub.best_epoch

    assert run("dice", [{"dice": 0.0, "loss": 0.55}, {"dice": 0.0, "loss": 0.52}, {"dice": 0.0, "loss": 0.53}]) == 2
    assert run("dice", [{"dice": 0.1, "loss": 0.55}, {"dice": 0.0, "loss": 0.40}]) == 1
    assert run("dice", [{"dice": 0.2, "loss": 0.55}, {"dice": 0.3, "loss": 0.60}]) == 2
    assert run("loss", [{"loss": 0.5}, {"loss": 0.5}]) == 1
    assert run("dice", [{"dice": 0.0, "loss": 0.55}, {"dice": 0.0, "loss": 0.52}], ema=0.9) == 2  # ties still

    # nnU-Net's moving average (the planner's monitor_ema=0.9): the validation Dice of a real run (one
    # synthetic volume, a noisy region slab) peaked at epoch 9 by luck; the average rises to the end
    dice = [0.742, 0.726, 0.808, 0.81, 0.829, 0.838, 0.751, 0.766, 0.891, 0.853, 0.793, 0.864, 0.869, 0.882,
            0.887, 0.866, 0.868]
    rows = [{"dice": d, "loss": 0.5} for d in dice]
    smoothed, ema = [], None
    for d in dice:
        ema = d if ema is None else 0.9 * ema + 0.1 * d
        smoothed.append(ema)
    assert run("dice", rows) == 9
    assert run("dice", rows, ema=0.9) == 1 + max(range(len(dice)), key=smoothed.__getitem__) == 17


@pytest.mark.parametrize("schedule,fitted", [("cosine", True), ("plateau", False)])
def test_a_decaying_schedule_the_budget_would_cut_ends_within_it(tmp_path, monkeypatch, schedule, fitted) -> None:
    """Epochs run at 10 s (a fake clock) where the budget holds 65 s: planned for 20 epochs, a cosine
    run is re-fitted after its second epoch to end at epoch 6, so its learning rate still decays to
    its end within the budget; the old loop ran on with a high rate until the budget cut epoch 7.
    A plateau schedule does not decay by length: it is left alone and the budget stops it."""
    import types

    import unetkit.training.trainer as trainer_mod
    from unetkit.training.trainer import Callback

    now = [1000.0]
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(monotonic=lambda: now[0],
                                                                   perf_counter=__import__("time").perf_counter))

    class Clock(Callback):
        def on_epoch_start(self, trainer, epoch):
            now[0] += 10.0

    _single_case_folder(tmp_path / "data", 2)
    cfg = _config(tmp_path, tmp_path / "data", 2, epochs=20,
                  **{"schedule.name": schedule, "early_stop_patience": "null"})
    result = train(cfg, callbacks=[Clock()], deadline=1065.0)
    report = json.loads((result.run_dir / "report.json").read_text())
    steps = cfg.data.samples_per_epoch // cfg.data.batch_size  # 2 per epoch
    if fitted:
        assert len(result.history) == 6 and report["schedule_epochs"] == 6 and not report["stopped_by_budget"]
        # the cosine over 6 x 2 steps: the last epoch starts at step 10 of 12
        expected = cfg.optim.lr * 0.5 * (1 + math.cos(math.pi * 10 / (6 * steps)))
        assert result.history[-1]["lr"] == pytest.approx(expected, rel=1e-6)
        resumed = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
        assert resumed["schedule"]["total_steps"] == 6 * steps  # a resume keeps the fitted end
    else:
        assert report["schedule_epochs"] == 20 and report["stopped_by_budget"]
