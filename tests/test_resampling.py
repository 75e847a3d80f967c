"""The plan's target spacing applied (issue 11): the planner sets `data.target_spacing` for 3D data
of mixed spacings, training resamples every set to it and records it in the model file, and the
Predictor predicts at it and returns masks in the input's own geometry."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import unetkit
from unetkit.data.io import VolumeMeta, read_volume, write_image, write_mask
from unetkit.data.volume import resample
from unetkit.errors import ConfigError
from unetkit.inference.predictor import Predictor
from unetkit.inference.sliding_window import sliding_window_inference
from unetkit.io.checkpoint import CheckpointError, read_metadata, save_model
from unetkit.planning import plan
from unetkit.training import TrainConfig
from unetkit.training.run import build_datasets

TARGET = [2.0, 1.0, 1.0]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))


def _volume(root, name, shape, spacing, seed=0):
    """A bright box (the foreground) in noise, written as image and mask NIfTI at `spacing`."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    d, h, w = shape
    mask[d // 4:3 * d // 4, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
    image = rng.normal(0, 1, shape) + 3 * mask
    meta = VolumeMeta(spacing=spacing)
    write_image(root / "images" / f"{name}.nii.gz", image.astype(np.float32)[None], meta)
    write_mask(root / "masks" / f"{name}.nii.gz", mask, meta)


def _config(tmp_path, data, **overrides) -> TrainConfig:
    cfg = TrainConfig().with_overrides([
        f"data.images={data}", "model.spatial_dims=3", "model.num_classes=1", "model.kwargs.features=[4,8]",
        "data.patch_size=[8,8,8]", "data.batch_size=2", "data.samples_per_epoch=2", "data.num_workers=0",
        "data.augmentation=none", "data.normalize={mode: zscore}", "epochs=1", "progress=quiet",
        "tensorboard=false", "overlays=0", f"out_dir={tmp_path}", "name=run", f"data.target_spacing={TARGET}"])
    return cfg.with_overrides([f"{k}={v}" for k, v in overrides.items()])


# ---- planner --------------------------------------------------------------------------------
def test_planner_sets_target_spacing_for_mixed_spacings_and_plans_in_target_space(tmp_path) -> None:
    # the median spacing is 1 mm; in target space the shapes are 32, 40, 96 (median 40), natively 64, 40, 48
    for i, (side, sp) in enumerate([(64, 0.5), (40, 1.0), (48, 2.0)]):
        _volume(tmp_path / "mixed", f"c{i}", (side,) * 3, (sp,) * 3, seed=i)
    p = plan(tmp_path / "mixed", budget="5m", device="cpu", probe=False)
    assert p.config.data.target_spacing == pytest.approx([1.0, 1.0, 1.0])
    row = next(r for r in p.reasons if r[0] == "target spacing")
    assert "applied" in row[2] and "not applied" not in row[2]
    patch_row = next(r for r in p.reasons if r[0] == "patch")
    assert "would be 40x40x40" in patch_row[2]  # capped at the median shape in target space (not 48)
    p.config.validate()


def test_planner_leaves_equal_spacings_at_native_spacing(tmp_path) -> None:
    for i in range(2):
        _volume(tmp_path / "same", f"c{i}", (12, 24, 24), (3.0, 0.8, 0.8), seed=i)
    _volume(tmp_path / "same", "c2", (12, 24, 24), (3.05, 0.8, 0.81), seed=2)  # within 5%: not resampled
    p = plan(tmp_path / "same", budget="5m", device="cpu", probe=False)
    assert p.config.data.target_spacing is None
    assert "trained at native spacing" in next(r for r in p.reasons if r[0] == "target spacing")[2]


def test_target_spacing_is_validated_once(tmp_path) -> None:
    with pytest.raises(ConfigError, match="3D data only"):
        TrainConfig().with_overrides(["data.target_spacing=[1,1]"]).validate()
    for bad in ("[1, 1]", "[1, 0, 1]", "[1, -2, 1]", "[a, 1, 1]"):
        with pytest.raises(ConfigError, match="data.target_spacing"):
            TrainConfig().with_overrides(["model.spatial_dims=3", f"data.target_spacing={bad}"]).validate()
    TrainConfig().with_overrides(["model.spatial_dims=3", "data.target_spacing=[3, 0.8, 0.8]"]).validate()


# ---- training -------------------------------------------------------------------------------
def test_training_resamples_every_set_and_records_target_spacing(tmp_path) -> None:
    data = tmp_path / "d"
    _volume(data, "a", (8, 20, 20), (4.0, 1.0, 1.0), seed=0)  # -> (16, 20, 20) at TARGET
    _volume(data, "b", (16, 12, 12), (2.0, 2.0, 2.0), seed=1)  # -> (16, 24, 24)
    cfg = _config(tmp_path, data, **{"data.val_fraction": 0.5})
    want = {"a": (16, 20, 20), "b": (16, 24, 24)}
    (tmp_path / "probe").mkdir()
    train_set, val_set, _ = build_datasets(cfg, tmp_path / "probe")
    (train_name,), (val_name,) = train_set.names, val_set.names
    assert train_set.volume(0)["image"].shape[1:] == want[train_name]
    assert train_set.volume(0)["mask"].shape[1:] == want[train_name]
    item = val_set[0]  # the many-case validation set: whole cases, in target space too
    assert tuple(item["image"].shape[1:]) == want[val_name] == tuple(item["mask"].shape[1:])
    image, meta = read_volume(data / "images" / f"{val_name}.nii.gz")
    labels = read_volume(data / "masks" / f"{val_name}.nii.gz")[0][0]
    expected = resample(image, labels, meta.spacing, TARGET)  # the one resampler, independently called
    assert torch.equal(item["mask"][0], torch.from_numpy(expected[1].astype(np.int64)))

    result = unetkit.train(cfg)
    extra = read_metadata(tmp_path / "run" / "last.safetensors")["extra"]
    assert extra["target_spacing"] == TARGET and len(result.history) == 1


def test_single_volume_region_split_is_computed_in_target_space(tmp_path) -> None:
    data = tmp_path / "one"
    _volume(data, "only", (6, 16, 40), (4.0, 1.0, 1.0))  # natively the longest axis is W (40); resampled D is 12
    cfg = _config(tmp_path, data, **{"data.target_spacing": [1.0, 1.0, 1.0]})
    (tmp_path / "probe").mkdir()
    train_set, val_set, meta = build_datasets(cfg, tmp_path / "probe")
    shape = (24, 16, 40)
    train, held = meta["split"]["train_region"], meta["split"]["heldout_region"]
    for box in (train, held):
        assert all(0 <= a < b <= s for (a, b), s in zip(box, shape))
    for axis, s in enumerate(shape):  # together the two boxes span the whole resampled volume
        assert min(train[axis][0], held[axis][0]) == 0 and max(train[axis][1], held[axis][1]) == s
    whole = val_set[0]["mask"].shape[1:]
    held = meta["split"]["heldout_region"]
    assert tuple(whole) == tuple(b - a for a, b in held)
    assert val_set[0]["mask"].any()  # the held-out slab holds foreground of the resampled mask
    assert train_set.volume(0)["mask"].shape[1:] == tuple(b - a for a, b in meta["split"]["train_region"])


# ---- prediction ------------------------------------------------------------------------------
def _model_file(path, target=TARGET, seed=0):
    torch.manual_seed(seed)
    model = unetkit.create_model("unet", spatial_dims=3, in_channels=1, num_classes=1, features=(4, 8))
    extra = {"preprocess": {"mode": "zscore"}, "patch_size": [8, 8, 8]}
    if target is not None:
        extra["target_spacing"] = list(target)
    save_model(model, path, extra=extra)
    return path


def test_predictor_resamples_to_the_target_spacing_and_back(tmp_path) -> None:
    from scipy import ndimage as ndi

    from unetkit.data.normalize import normalize_image

    predictor = Predictor.from_checkpoint(_model_file(tmp_path / "m.safetensors"), device="cpu", overlap=0.25)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (1, 5, 14, 11)).astype(np.float32)
    spacing = (4.0, 1.5, 1.0)  # -> (10, 21, 11) at TARGET
    pred = predictor.predict_array(image, spacing=spacing)
    assert pred.probabilities.shape == (1, 5, 14, 11) and pred.labels.shape == (1, 5, 14, 11)

    # independently: resample in, the model's sliding window at the target spacing, zoom back
    moved = resample(image, None, spacing, TARGET)[0]
    assert moved.shape[1:] == (10, 21, 11)
    x = torch.from_numpy(normalize_image(moved, {"mode": "zscore"}))[None]
    with torch.no_grad():
        probs = sliding_window_inference(x, lambda t: torch.sigmoid(predictor.model(t)), (8, 8, 8), overlap=0.25,
                                         blend="gaussian", padding_mode="reflect")[0].numpy()
    back = np.stack([ndi.zoom(c, [5 / 10, 14 / 21, 1.0], order=1, mode="nearest", grid_mode=True) for c in probs])
    np.testing.assert_allclose(pred.probabilities, back, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, (back >= 0.5).astype(np.uint8))

    # the same volume at the target spacing is predicted as it is (no resampling either way)
    same = predictor.predict_array(moved, spacing=TARGET)
    np.testing.assert_allclose(same.probabilities, probs, atol=1e-5)


def test_predict_file_writes_masks_in_the_input_geometry_and_warns_without_spacing(tmp_path) -> None:
    predictor = Predictor.from_checkpoint(_model_file(tmp_path / "m.safetensors"), device="cpu")
    image = np.random.default_rng(1).normal(0, 1, (1, 5, 14, 11)).astype(np.float32)
    meta = VolumeMeta(spacing=(4.0, 1.5, 1.0))
    write_image(tmp_path / "in" / "vol.nii.gz", image, meta)
    out = predictor.predict_file(tmp_path / "in" / "vol.nii.gz", tmp_path / "out", overlay=False)
    mask, written = read_volume(out["mask"])
    assert mask.shape[1:] == (5, 14, 11)
    np.testing.assert_allclose(written.affine, meta.affine)
    expected = predictor.predict_array(image, spacing=meta.spacing).labels
    np.testing.assert_array_equal(mask.astype(np.uint8), expected)

    # no spacing known: native spacing, said once (not silently, and not a wrong-sized output)
    with pytest.warns(UserWarning, match="no voxel spacing known"):
        first = predictor.predict_array(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict_array(image)
    assert first.labels.shape == (1, 5, 14, 11)


def test_ensemble_members_must_agree_on_target_spacing(tmp_path) -> None:
    a = _model_file(tmp_path / "a.safetensors")
    b = _model_file(tmp_path / "b.safetensors", target=[3.0, 1.0, 1.0], seed=1)
    with pytest.raises(CheckpointError, match="target_spacing"):
        Predictor.from_checkpoints([a, b], device="cpu")
    c = _model_file(tmp_path / "c.safetensors", seed=2)
    assert Predictor.from_checkpoints([a, c], device="cpu").target_spacing == tuple(TARGET)
